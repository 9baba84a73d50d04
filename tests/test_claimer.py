"""The serial master's claimer thread (:class:`balsam.launcher.job_source.Claimer`) against
the real PostgreSQL: claims on its own connection under its session (two claimers never get
the same job), answers None while nothing was asked, an empty list when nothing is runnable,
DatabaseUnavailable when the server cannot be reached; its function-task rows come with it."""
from __future__ import annotations

import time

from launcher_support import add_app, add_jobs
from test_launcher_common import mirror, open_session, set_port  # noqa: F401 - a fixture

from balsam.core import schema
from balsam.db import serverinfo
from balsam.db.database import Database
from balsam.errors import DatabaseUnavailable
from balsam.launcher.job_source import Claimer, JobSource
from balsam.platform.allocation import Allocation

ALLOC = Allocation(("n0",), 4, 0, "local", "", None)


def answer(claimer: Claimer, seconds: float = 10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got = claimer.take()
        if got is not None:
            return got
        time.sleep(0.005)
    raise AssertionError("the claimer did not answer")


def claimer_of(db_path: str) -> tuple[Claimer, int]:
    database = Database(db_path)
    sid = database.run(open_session)
    source = JobSource(database, sid, ALLOC, db_path, "serial", None, base_env={})
    return Claimer(source, Database(db_path, "claimer")), sid


def test_two_claimers_share_the_jobs_without_overlap_and_hold_them_for_their_session(db,
                                                                                      cursor):
    add_app(cursor, "app", "true")
    ids = add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                            for i in range(10)])
    (a, sid_a), (b, sid_b) = claimer_of(db), claimer_of(db)
    try:
        assert a.take() is None and a.asked == 0
        master_statements = a.source.db.statements
        a.ask(6, None)
        b.ask(6, None)
        assert a.asked == 6
        got_a, got_b = answer(a), answer(b)
        assert a.asked == 0
        ids_a, ids_b = {s.job_id for s in got_a}, {s.job_id for s in got_b}
        assert not ids_a & ids_b and ids_a | ids_b == set(ids)
        cursor.execute(f"SELECT job_id::text, session_id FROM {schema.JOB_TABLE}")
        holders = dict(cursor.fetchall())
        assert all(holders[j] == sid_a for j in ids_a)
        assert all(holders[j] == sid_b for j in ids_b)
        a.ask(5, None)
        assert answer(a) == []  # nothing left: the master then waits as for an empty claim
        assert a.db.statements > 0 and a.source.db.statements == master_statements
    finally:
        a.close()
        b.close()
    assert not a.thread.is_alive() and not b.thread.is_alive()


def test_a_claimer_without_its_database_answers_unavailable_then_claims_again(
        db, cursor, mirror):  # noqa: F811
    add_app(cursor, "app", "true")
    (job_id,) = add_jobs(cursor, [{"name": "j", "application": "app", "state": "PREPROCESSED"}])
    claimer, sid = claimer_of(mirror)
    port = serverinfo.read(mirror)["port"]
    try:
        set_port(mirror, 1)
        claimer.ask(4, None)
        assert isinstance(answer(claimer), DatabaseUnavailable)
        set_port(mirror, port)
        end = time.monotonic() + 10
        got: object = None
        while time.monotonic() < end:
            claimer.ask(4, None)
            got = answer(claimer)
            if isinstance(got, list):
                break
            time.sleep(0.1)
        assert isinstance(got, list) and [s.job_id for s in got] == [job_id]
    finally:
        claimer.close()


class Silent:
    """Workers that take work and never report (what the master sends is kept)."""

    def __init__(self, workers: int) -> None:
        self.workers = range(1, workers + 1)
        self.sent: list[tuple[int, dict]] = []

    def send(self, worker: int, message: dict) -> None:
        self.sent.append((worker, message))

    def receive(self):
        return None

    def flush(self, timeout: float) -> None:
        pass


def master_with_claimers(db_path: str):
    import logging
    import threading

    from balsam.core import leases
    from balsam.core.tunables import Tunables
    from balsam.db import dbsettings
    from balsam.launcher.context import Context
    from balsam.launcher.serial_master import CLAIMERS, Master
    from balsam.launcher.status_writers import open_status

    settings = dbsettings.load(db_path)
    tunables = Tunables.from_settings(settings["launcher"])
    database = Database(db_path)
    sid = database.run(leases.open_session, hostname="h", pid=1, job_mode="serial",
                       num_nodes=2, lease_seconds=60)
    ctx = Context(db_path=db_path, settings=settings, tunables=tunables, alloc=ALLOC,
                  db=database, session_id=sid, job_mode="serial", wf_filter=None,
                  persistent=False, processing=False, gpus_per_node=0,
                  stop=threading.Event(), log=logging.getLogger("test.claimer"), base_env={},
                  flavour="", mpi_executable=None)
    source = JobSource(database, sid, ALLOC, db_path, "serial", None, base_env={})
    status = open_status(database, sid, writers=2, flush_seconds=0.01, start_message="",
                         processing=False)
    master = Master(ctx, source, status, Silent(2))
    assert len(master.claimers) == CLAIMERS
    return master, sid


def posted(master):
    """Wait until a claimer posted its answer, and return the claimer (answer not taken)."""
    end = time.monotonic() + 10
    while time.monotonic() < end:
        for claimer in master.claimers:
            if claimer._result is not None:
                return claimer
        time.sleep(0.005)
    raise AssertionError("no claimer answered")


def test_a_job_killed_while_its_claim_is_in_flight_is_released_and_never_sent(db, cursor):
    from balsam.core import lifecycle
    from balsam.launcher.status_writers import close_status

    add_app(cursor, "app", "true")
    (kept, killed) = add_jobs(cursor, [{"name": n, "application": "app",
                                        "state": "PREPROCESSED"} for n in ("kept", "killed")])
    master, sid = master_with_claimers(db)
    try:
        master.claimers[0].ask(10, None)  # one claim in flight (as master._claim asks)
        claimer = posted(master)
        # the window: the claim committed, its answer not yet posted to the master
        answer, claimer._result = claimer._result, None
        lifecycle.kill(cursor, [killed])
        master._check_kills()
        assert master._dropped == {killed}
        claimer._result = answer
        assert master._take_claims(time.monotonic())
        assert [s.job_id for s in master.queue] == [kept] and not master._dropped
        master._dispatch()
        sent = [w.job_id for _, m in master.channel.sent for w in m.get("work", ())]
        assert sent == [kept]
        master.status.flush(before=time.monotonic() + 10)
        cursor.execute(f"SELECT job_id::text, session_id, state FROM {schema.JOB_TABLE}")
        rows = {j: (s, st) for j, s, st in cursor.fetchall()}
        assert rows[killed] == (None, "USER_KILLED") and rows[kept] == (sid, "PREPROCESSED")
        master._release_all()  # closes the claimers first, then releases every claim
        assert master.claimers == []
        cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE session_id = %s", [sid])
        assert cursor.fetchone()[0] == 0
    finally:
        master._close_claimers()
        close_status(master.status)
