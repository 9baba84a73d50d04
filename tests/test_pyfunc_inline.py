"""Serial mode's function tasks without a database connection in the warm worker: the master's
claim reads each small task's job fields and arguments in one statement (the work order carries
them), the warm worker returns the outcome through its worker rank, and the master writes it in
the transaction that records the task's end. Big arguments and results keep the runner's own
database path. Real PostgreSQL, real warm processes; no MPI (the worker is driven in-process)."""
from __future__ import annotations

import os
import shutil
import sys
import time

import pytest
from test_api import make_site
from test_launcher_serial import Inbox, serve

from balsam import defaults
from balsam.api import Job, sites
from balsam.core import leases, payloads
from balsam.db.database import Database
from balsam.launcher.job_source import JobSource
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.pyfunc_task import Runner
from balsam.launcher.serial_master import work_item
from balsam.launcher.serial_worker import Worker
from balsam.launcher.status import StatusBuffer
from balsam.launcher.status_writers import StatusWriters, close_status, shard_of
from balsam.platform.allocation import Allocation
from balsam.site import pyfunc

APPS = '''from balsam.site import ApplicationDefinition


class Add(ApplicationDefinition):
    def run(self, a, b=10):
        print("adding", a, b)
        return a + b


class Boom(ApplicationDefinition):
    def run(self, message):
        raise ValueError(message)


class Big(ApplicationDefinition):
    def run(self, size):
        return "x" * size


class Echo(ApplicationDefinition):
    command_template = "echo {{ word }}"
'''

BIG = defaults.PYFUNC_INLINE_BYTES + 1


@pytest.fixture
def site(db):
    yield make_site(db, fn=APPS)
    shutil.rmtree(os.path.join(db, "apps"), ignore_errors=True)
    sites.forget_apps()


def claim_serial(site: str, cursor):
    """A serial-mode session's claim of every job (made runnable first): (database, session,
    specs by workdir)."""
    cursor.execute("UPDATE core_balsamjob SET state = 'PREPROCESSED'")
    database = Database(site)
    sid = database.run(leases.open_session, hostname="host", pid=1, job_mode="serial",
                       num_nodes=1, lease_seconds=60)
    alloc = Allocation(("n1",), 4, 0, "local", "", None)
    source = JobSource(database, sid, alloc, site, "serial", None, {"PATH": "/usr/bin"})
    specs = source.claim(100, serial=True, max_nodes=1)
    return database, sid, {os.path.basename(s.workdir): s for s in specs}


def test_the_serial_claim_reads_small_function_tasks_in_one_statement(site, cursor):
    Job.objects.bulk_create([
        Job(site_path=site, app_name="fn.Add", workdir="add", parameters={"a": 1},
            tags={"k": "v"}),
        Job(site_path=site, app_name="fn.Add", workdir="bigarg", parameters={"a": "y" * BIG}),
        Job(site_path=site, app_name="fn.Echo", workdir="echo", parameters={"word": "hi"})])
    database, _, specs = claim_serial(site, cursor)
    app, tags, data, params, args = specs["add"].pyfunc_row
    assert (app, tags, data) == ("fn.Add", '{"k": "v"}', "{}")
    assert pyfunc.deserialize(args) == {"a": 1, "b": 10} and '"a": 1' in params
    assert specs["bigarg"].pyfunc_row is None  # its warm worker reads it itself
    assert specs["echo"].pyfunc_row is None    # a command
    assert work_item(specs["add"]).row == specs["add"].pyfunc_row
    database.close()


def test_an_outcome_is_written_with_its_run_done_in_one_transaction(site, cursor, tmp_path):
    add = Job(site_path=site, app_name="fn.Add", workdir="add", parameters={"a": 1})
    boom = Job(site_path=site, app_name="fn.Boom", workdir="boom", parameters={"message": "no"})
    Job.objects.bulk_create([add, boom])
    database, sid, specs = claim_serial(site, cursor)
    runner = Runner(site)
    ran = {name: runner.run_task(specs[name].job_id, str(tmp_path), specs[name].pyfunc_row)
           for name in ("add", "boom")}
    assert runner._conn is None  # no connection was opened: nothing was read or written
    assert ran["add"][0] == 0 and ran["boom"][0] == 1
    assert pyfunc.load_outcomes(cursor, [str(add.id)]) == {}  # not written by the runner
    status = StatusBuffer(database, sid)
    status.started([str(add.id), str(boom.id)])
    status.done(str(add.id))
    status.error(str(boom.id), "exit code 1")
    status.pyfunc_outcomes([ran["add"][1], ran["boom"][1]])
    batch = status.take()
    status.restore(batch)  # as after a failed write: the outcomes stay pending with the ends
    before = (database.statements, database.transactions)
    assert status.flush().ended == 2
    assert (database.statements - before[0], database.transactions - before[1]) == (2, 1)
    outcomes = pyfunc.load_outcomes(cursor, [str(add.id), str(boom.id)])
    assert pyfunc.deserialize(outcomes[str(add.id)].value) == 11
    assert outcomes[str(add.id)].worker == f"{os.uname().nodename}:{os.getpid()}"
    with pytest.raises(ValueError, match="no") as raised:
        pyfunc.reraise(outcomes[str(boom.id)], "boom")
    assert "raise ValueError(message)" in raised.value.__cause__.text
    cursor.execute("SELECT state FROM core_balsamjob WHERE job_id = %s", [str(add.id)])
    assert cursor.fetchone() == ("RUN_DONE",)
    database.close()


def test_with_several_status_writers_each_outcome_goes_with_its_jobs_end(site, cursor, tmp_path):
    jobs = [Job(site_path=site, app_name="fn.Add", workdir=f"add{i}", parameters={"a": i})
            for i in range(8)]
    Job.objects.bulk_create(jobs)
    database, sid, specs = claim_serial(site, cursor)
    ids = [str(j.id) for j in jobs]
    assert {shard_of(i, 2) for i in ids} == {0, 1}  # 8 random ids: both writers used
    runner = Runner(site)
    outcomes = [runner.run_task(i, str(tmp_path), specs[f"add{n}"].pyfunc_row)[1]
                for n, i in enumerate(ids)]
    writers = StatusWriters(lambda k: Database(database.db_path), sid, 2, flush_seconds=0.01)
    try:
        writers.started(ids)
        writers.pyfunc_outcomes(outcomes)
        for job_id in ids:
            writers.done(job_id)
        assert writers.flush(before=time.monotonic() + 10) is not None
        assert writers.pending == 0
    finally:
        close_status(writers)
    stored = pyfunc.load_outcomes(cursor, ids)
    assert {i: pyfunc.deserialize(stored[i].value) for i in ids} == {
        i: n + 10 for n, i in enumerate(ids)}
    database.close()


def test_a_warm_worker_given_the_row_needs_no_database_but_a_big_result_uses_it(tmp_path):
    # A site folder with no database server behind it: any connection attempt fails.
    site = str(tmp_path / "site")
    os.makedirs(os.path.join(site, "apps"))
    with open(os.path.join(site, "apps", "fn.py"), "w") as fh:
        fh.write(APPS)

    def row(app: str, **kwargs) -> payloads.TaskRow:
        return (app, "{}", "{}", "{}", pyfunc.serialize(kwargs))

    runner = [sys.executable, "-m", pyfunc.RUNNER_MODULE]
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]})
    orders = []
    for name, app, kwargs in (("add", "fn.Add", {"a": 2}), ("boom", "fn.Boom", {"message": "m"}),
                              ("big", "fn.Big", {"size": BIG})):
        wd = str(tmp_path / name)
        orders.append(work_item_for(name, runner, site, wd, row(app, **kwargs)))
    inbox.orders.append({"work": orders})
    try:
        serve(worker, inbox, lambda: len(inbox.collected("done") + inbox.collected("failed")) == 3,
              timeout=60)
    finally:
        worker.warm.close()
    assert inbox.collected("done") == ["add"]
    failed = {job: (rc, tail) for job, rc, tail in inbox.collected("failed")}
    assert failed["boom"][0] == 1 and "ValueError: m" in failed["boom"][1]
    # The big result went to the database, which is not there: exit status 3, no outcome.
    assert failed["big"][0] == 3 and "cannot record the outcome" in failed["big"][1]
    outcomes = {o[0]: o for o in inbox.collected("outcomes")}
    assert set(outcomes) == {"add", "boom"}
    assert pyfunc.deserialize(outcomes["add"][2]) == 12 and not outcomes["add"][1]
    assert outcomes["boom"][1] and "raise ValueError(message)" in outcomes["boom"][3]
    with open(tmp_path / "add" / "add.out") as fh:
        assert fh.read() == "adding 2 10\n"
    assert len({o[4] for o in outcomes.values()}) == 1  # one warm process served them
    # Each outcome arrived in the report that carried its task's end.
    for report in inbox.reports:
        ends = set(report.get("done", ())) | {f[0] for f in report.get("failed", ())}
        assert {o[0] for o in report.get("outcomes", ())} <= ends


def work_item_for(name, argv, site, wd, row):
    from balsam.launcher.serial_worker import Work

    return Work(name, argv, None, {"BALSAM_DB_PATH": site, "BALSAM_JOB_ID": name}, wd,
                os.path.join(wd, f"{name}.out"), 1, 1, row)


def test_outcomes_of_one_job_keep_the_last(site, cursor):
    (job,) = Job.objects.bulk_create([Job(site_path=site, app_name="fn.Add", workdir="a",
                                          parameters={"a": 1})])
    first = (str(job.id), False, pyfunc.serialize(1), "", "h:1")
    second = (str(job.id), True, pyfunc.serialize(ValueError("v")), "tb", "h:2")
    assert payloads.store_outcomes(cursor, [first, second]) == 1
    got = pyfunc.load_outcomes(cursor, [str(job.id)])[str(job.id)]
    assert (got.failed, got.traceback, got.worker) == (True, "tb", "h:2")
    assert payloads.store_outcomes(cursor, []) == 0
