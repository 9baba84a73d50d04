"""Transition workers wake only for work they can do (migration 0017_processing_notify): their
channel, ``balsam_processing``, is notified by statements that leave a job in a state a worker
has a step for (routing.WORKER_STATES), not by a launcher's RUNNING batches or its run ends
recorded as RUN_DONE -> JOB_FINISHED; ``balsam_jobs`` still is, for its other listeners.

Nothing here waits a fixed time: a statement's (absent) notification is checked against a marker
notification sent after it by the same session (PostgreSQL delivers them in commit order)."""
from __future__ import annotations

import logging
import os
import re
import select
import threading
from typing import Any

import psycopg2
import pytest
from launcher_support import add_app, add_jobs, wait_for

from balsam import defaults
from balsam.core import leases, routing, schema
from balsam.core.routing import Actor
from balsam.db.connect import connection_params
from balsam.db.database import Database
from balsam.launcher.status import StatusBuffer
from balsam.processing import transitions, worker
from balsam.processing.steps import Limits

JOB = schema.JOB_TABLE
PROC, JOBS = defaults.PROCESSING_NOTIFY_CHANNEL, defaults.NOTIFY_CHANNEL
MARKER = "marker"


class Listener:
    """A connection of its own listening on both channels; collects (channel, payload, pid):
    tests keep the notifications of their own sessions (a stray process of another test
    cannot break them)."""

    def __init__(self, db: str) -> None:
        self.conn = psycopg2.connect(**connection_params(db))
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute(f"LISTEN {PROC}; LISTEN {JOBS}")
        self.got: list[tuple[str, str, int]] = []

    def until_marker(self, pids: set[int], timeout: float = 60.0) -> list[tuple[str, str]]:
        """The notifications of sessions ``pids`` received before the marker (sent on PROC by
        one of them), marker excluded."""
        def seen() -> bool:
            select.select([self.conn], [], [], 0.05)
            self.conn.poll()
            self.got.extend((n.channel, n.payload, n.pid) for n in self.conn.notifies
                            if n.pid in pids)
            self.conn.notifies.clear()
            return any(n[:2] == (PROC, MARKER) for n in self.got)
        wait_for(seen, timeout, "the marker notification")
        at = next(i for i, n in enumerate(self.got) if n[:2] == (PROC, MARKER))
        before, self.got = self.got[:at], self.got[at + 1:]
        return [n[:2] for n in before]

    def close(self) -> None:
        self.conn.close()


def backend_pid(cursor: Any) -> int:
    cursor.execute("SELECT pg_backend_pid()")
    return int(cursor.fetchone()[0])


def mark(cursor: Any) -> None:
    cursor.execute("SELECT pg_notify(%s, %s)", [PROC, MARKER])


def trigger_states(cursor: Any) -> list[str]:
    cursor.execute("SELECT pg_get_functiondef('balsam_notify_processing()'::regprocedure)")
    body = cursor.fetchone()[0]
    found = re.search(r"state IN \(([^)]*)\)", body)
    assert found, body
    return re.findall(r"'([A-Z_]+)'", found.group(1))


def test_the_triggers_states_are_the_routing_tables_worker_states(cursor):
    listed = trigger_states(cursor)
    assert listed == [s.value for s in routing.WORKER_STATES]
    # every state a worker has a step for wakes the workers (and the claim reads the same list)
    assert {r.source.value for r in routing.ROUTES if r.actor is Actor.WORKER} == set(listed)
    assert worker._WORKER_STATES == routing.sql_in(routing.WORKER_STATES)
    # a launcher's own moves (RUNNING, and the follow-on of a plain run's end) wake no worker
    assert routing.S.RUNNING.value not in listed
    assert all(t.value not in listed for t in routing.LAUNCHER_FOLLOW_ON.values())


@pytest.fixture
def listener(db):
    lis = Listener(db)
    yield lis
    lis.close()


def test_a_launchers_status_statements_wake_no_worker_but_still_notify_balsam_jobs(
        db, cursor, listener):
    add_app(cursor, "plain", "true")
    conn = Database(db, "test-processing-notify")
    try:
        pids = {backend_pid(cursor), conn.run(backend_pid)}
        sid = conn.run(leases.open_session, hostname="h", pid=os.getpid(), job_mode="serial",
                       num_nodes=1, lease_seconds=60)
        ids = add_jobs(cursor, [{"name": f"j{i}", "application": "plain",
                                 "state": "PREPROCESSED"} for i in range(4)])
        cursor.execute(f"UPDATE {JOB} SET session_id = %s WHERE job_id = ANY(%s::uuid[])",
                       [sid, ids])
        mark(cursor)
        listener.until_marker(pids)  # the jobs' insert (PREPROCESSED) and claim: nothing pending
        buf = StatusBuffer(conn, sid, follow=transitions.FINISH_ON_RECORD)
        buf.started(ids)
        assert buf.flush() is not None  # RUNNING, the launcher's real statement
        for i in ids:
            buf.done(i)
        assert buf.flush() is not None  # RUN_DONE -> JOB_FINISHED in the end's update
        cursor.execute(f"SELECT DISTINCT state FROM {JOB} WHERE job_id = ANY(%s::uuid[])", [ids])
        assert cursor.fetchall() == [("JOB_FINISHED",)]
        mark(cursor)  # after the launcher's commits: they are delivered before it
        before = listener.until_marker(pids)
        assert conn.reconnects == 0  # (the same backend all along)
        assert [n for n in before if n[0] == PROC] == []  # no worker woken
        assert len([n for n in before if n[0] == JOBS]) >= 2  # the others still are
    finally:
        conn.close()


@pytest.mark.parametrize("state", [s.value for s in routing.WORKER_STATES])
def test_a_statement_leaving_a_job_in_a_worker_state_wakes_the_workers(
        db, cursor, listener, state):
    pids = {backend_pid(cursor)}
    [job] = add_jobs(cursor, [{"name": "j", "state": "RUNNING"}])
    cursor.execute(f"UPDATE {JOB} SET state = 'JOB_FINISHED'")  # another job's statement
    cursor.execute(f"UPDATE {JOB} SET state = %s WHERE job_id = %s", [state, job])
    mark(cursor)
    before = listener.until_marker(pids)
    assert [n for n in before if n[0] == PROC] == [(PROC, "")]  # the last statement's only
    assert [n for n in before if n[0] == JOBS] == [(JOBS, "INSERT"), (JOBS, "UPDATE"),
                                                   (JOBS, "UPDATE")]
    # an insert of a job in a worker state notifies too (COPY, the ORM, the site API)
    add_jobs(cursor, [{"name": "k", "state": state}])
    mark(cursor)
    assert (PROC, "") in listener.until_marker(pids)


def test_an_idle_worker_sleeps_on_its_channel_and_a_run_done_wakes_it(db, cursor):
    """idle_wait_seconds = 600: only a notification on balsam_processing can finish the job
    before the test's (generous) timeout."""
    cursor.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, preprocess, "
                   "envscript, postprocess) VALUES ('post', '', 'true', '', '', 'true')")
    [job] = add_jobs(cursor, [{"name": "p", "application": "post", "state": "RUNNING"}])
    stop = threading.Event()
    w = worker.TransitionWorker(db, 0, wf_filter=None, base_env=dict(os.environ),
                                limits=Limits(60.0), stop=stop, log=logging.getLogger("test"),
                                heartbeat_seconds=10.0, lease_seconds=60,
                                idle_wait_seconds=600.0, reconnect_max_seconds=5.0,
                                warm_hooks=False)
    w.start()
    try:
        wait_for(lambda: w.db.transactions >= 2, 60, "the worker's first (empty) claim")
        cursor.execute(f"UPDATE {JOB} SET state = 'RUN_DONE' WHERE job_id = %s", [job])

        def finished() -> bool:
            cursor.execute(f"SELECT state FROM {JOB} WHERE job_id = %s", [job])
            return cursor.fetchone()[0] == "JOB_FINISHED"
        wait_for(finished, 120, "the woken worker to postprocess the job")
        assert w.processed == 1
    finally:
        stop.set()
        cursor.execute(f"NOTIFY {PROC}")  # its wait would last 600 s
        w.join(30)
    assert not w.is_alive()
