"""A FIFO at a function task's output path (issue 16 review): the warm process opens the output
file as a shell task's start does (``libc_spawn.open_output``: ``O_NONBLOCK``, then cleared), so
a FIFO without a reader fails that task with a message naming it (exit status 2) instead of
blocking the warm process in ``open()`` with its place held; the same warm process serves the
next task, and the worker reports the failure without opening the FIFO itself. A FIFO with a
reader gets the task's output. In process (an in-process worker, the tasks' rows given: no
database) and through a real serial launcher. No timing: every wait is for a condition."""
from __future__ import annotations

import os
import shutil
from typing import Any

import pytest
from launcher_procs import launchers
from launcher_support import QUICK, Inbox, events, job_row, serve, settings
from test_api import make_site as make_db_site
from test_spawn_chain_faults import bounded
from test_warm_queue import fn_work, make_site, row

from balsam.api import Job, sites
from balsam.launcher import procs
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Work, Worker
from balsam.site import pyfunc


def fifo_work(tmp: Any, site: str, name: str, fifos: list[str]) -> Work:
    work = fn_work(tmp, site, name, row("fn.Pid"))
    os.makedirs(work.workdir)
    os.mkfifo(work.output_path)
    fifos.append(work.output_path)
    return work


def pid_of(inbox: Inbox, job_id: str) -> Any:
    return next(pyfunc.deserialize(o[2]) for o in inbox.collected("outcomes") if o[0] == job_id)


@pytest.mark.parametrize("queued", [True, False], ids=["queued-behind", "to-an-idle-process"])
def test_a_fifo_as_a_function_tasks_output_fails_that_task_and_its_process_serves_on(
        tmp_path, fifos, queued):
    site, gate = make_site(tmp_path), tmp_path / "go"
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]})
    # Queued: p1 and m2 wait in g0's warm process and begin there one after the other (a
    # minute counts as short: no clock raced). Not: each is sent once the one before ended.
    worker.warm.short_seconds, worker.warm.mean_seconds = (60.0 if queued else 0.0), 0.0
    inbox.orders.append({"work": [
        fn_work(tmp_path, site, "g0", row("fn.Gate", gate=str(gate))),
        fifo_work(tmp_path, site, "p1", fifos), fn_work(tmp_path, site, "m2", row("fn.Pid"))]})

    def scenario() -> None:
        serve(worker, inbox, lambda: "g0" in worker.running)
        assert worker.warm.queued_behind == (2 if queued else 0)
        gate.touch()
        serve(worker, inbox, lambda: len(inbox.collected("done")) == 2
              and inbox.collected("failed"))

    try:
        bounded("the worker", scenario)
    finally:
        gate.touch()
        bounded("the worker's close", worker.close, 60)
    [(job, rc, message)] = inbox.collected("failed")
    assert (job, rc) == ("p1", 2)
    assert message.startswith("cannot start:") and "FIFO with no reader" in message, message
    assert fifos[0] in message
    assert inbox.collected("done") == ["g0", "m2"]
    assert inbox.collected("started") == ["g0", "p1", "m2"]
    assert pid_of(inbox, "g0") == pid_of(inbox, "m2")  # one warm process, still serving
    assert worker.warm.started == 1 and worker.node.occupancy == 0
    assert (tmp_path / "m2" / "m2.out").read_text() == "ran\n"


def test_a_fifo_with_a_reader_gets_the_function_tasks_output(tmp_path, fifos):
    site = make_site(tmp_path)
    work = fifo_work(tmp_path, site, "p0", fifos)
    reader = os.open(work.output_path, os.O_RDONLY | os.O_NONBLOCK)
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]})
    inbox.orders.append({"work": [work]})
    try:
        bounded("the worker", lambda: serve(worker, inbox, lambda: inbox.collected("done")))
        os.set_blocking(reader, True)  # what the task wrote ("ran\n" fits in the pipe)
        assert os.read(reader, 100) == b"ran\n"
    finally:
        os.close(reader)
        bounded("the worker's close", worker.close, 60)
    assert inbox.collected("done") == ["p0"] and not inbox.collected("failed")


def test_the_tail_of_a_fifo_with_no_writer_is_empty_and_does_not_block(tmp_path, fifos):
    path = str(tmp_path / "out")
    os.mkfifo(path)
    fifos.append(path)
    got: list[str] = []
    bounded("tail", lambda: got.append(procs.tail(path, 10)), 60)
    assert got == [""]
    (tmp_path / "regular").write_text("a\nb\nc\n")
    assert procs.tail(str(tmp_path / "regular"), 2) == "b\nc"


APPS = '''import os
from balsam.site import ApplicationDefinition


class Add(ApplicationDefinition):
    def run(self, a):
        print("adding", a)
        return a + 1
'''


@pytest.fixture
def site(db):
    yield make_db_site(db, fn=APPS)
    shutil.rmtree(os.path.join(db, "apps"), ignore_errors=True)
    sites.forget_apps()


@pytest.mark.slow
def test_a_launchers_function_job_with_a_fifo_as_output_fails_with_the_reason_and_the_rest_run(
        site, cursor, fifos):
    data = os.path.join(site, "data", "fifo-out")  # the session's database: its own workdirs
    shutil.rmtree(data, ignore_errors=True)
    jobs = [Job(site_path=site, app_name="fn.Add", workdir=f"fifo-out/{n}", parameters={"a": n},
                node_packing_count=2) for n in range(8)]
    Job.objects.bulk_create(jobs)
    fifo = os.path.join(data, "5", "job.out")
    os.makedirs(os.path.dirname(fifo), exist_ok=True)
    os.mkfifo(fifo)
    fifos.append(fifo)
    with settings(site, launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "serial")
        assert launcher.wait(120) == 0, launcher.output()  # the worker and ensemble exit
    final = {n: job_row(cursor, str(job.id))["state"] for n, job in enumerate(jobs)}
    assert final.pop(5) == "FAILED" and set(final.values()) == {"JOB_FINISHED"}, final
    messages = [e[3] for e in events(cursor, str(jobs[5].id)) if e[2] == "RUN_ERROR"]
    assert messages and all("the output file is a FIFO with no reader" in m for m in messages)
    assert all(fifo in m for m in messages), messages
    for n in final:
        assert jobs[n].result() == n + 1
        with open(os.path.join(data, str(n), "job.out")) as fh:
            assert fh.read() == f"adding {n}\n"
