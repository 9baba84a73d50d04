"""Work that no job-row change announces reaches an idle launcher when it becomes due (issue 16,
session 21).

Session 20 let an idle launcher's own looks back off to ``idle_poll_max_seconds`` (10 s): what
no statement on a job row announced was found up to that much later. Each test here pushes the
looks out of reach (``idle_poll_max_seconds`` 600, and ``idle_wait_seconds`` 20 where the
first look would come soon enough by chance) and waits, bounded, well under the gap it would
otherwise take: a retry whose back-off ran out (serial and MPI mode), an app's script removed
while its job waited for a busy worker, stage-in items done for a job that still links its
parents' files, a transfer item's retry back-off over, and a job announced to the transfer
worker while its connection was down.
"""
from __future__ import annotations

import select
import time
from typing import Any, Optional

import psycopg2
import pytest
from launcher_procs import launchers
from launcher_support import add_app, add_jobs, settings, wait_for

from balsam import defaults
from balsam.core import lifecycle, schema
from balsam.core.retries import RetryPolicy
from balsam.core.states import State
from balsam.db.connect import connection_params
from balsam.processing import transitions

JOB, APP, ITEM = schema.JOB_TABLE, schema.APP_TABLE, schema.TRANSFER_ITEM_TABLE
SERIAL = ("--consume-all", "--persistent", "--job-mode", "serial")
MPI = ("--consume-all", "--persistent", "--job-mode", "mpi")
PARTS = {"serial": {"balsam-serial-master", "balsam-transitions", "balsam-transfers"},
         "mpi": {"balsam-launcher", "balsam-transitions", "balsam-transfers"}}
LOOKS_AWAY = {"idle_wait_seconds": 20, "idle_poll_max_seconds": 600, "heartbeat_seconds": 1}
"""The processing and transfer workers' own looks out of reach (their first comes 20 s after
one that found nothing); the launcher's claims stay notification-driven."""


def _connected(cursor: Any, mode: str) -> None:
    def apps() -> set[str]:
        cursor.execute("SELECT DISTINCT application_name FROM pg_stat_activity")
        return {r[0] for r in cursor.fetchall()}

    wait_for(lambda: PARTS[mode] <= apps(), 60, "the launcher's parts to connect")


def _started_at(cursor: Any, job_id: str, runs: int = 1) -> Optional[float]:
    """The epoch of the job's ``runs``-th RUNNING event (None: not yet)."""
    cursor.execute(f"SELECT EXTRACT(EPOCH FROM timestamp) FROM {schema.EVENT_TABLE} "
                   "WHERE job_id = %s AND to_state = 'RUNNING' ORDER BY id", [job_id])
    rows = cursor.fetchall()
    return float(rows[runs - 1][0]) if len(rows) >= runs else None


def _db_now(cursor: Any) -> float:
    cursor.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())")
    return float(cursor.fetchone()[0])


# ---- a retry's back-off ------------------------------------------------------------------------
def _timed_out(cursor: Any, name: str) -> str:
    """A job that ran once and timed out (a RUN_TIMEOUT counted against its retries)."""
    (job,) = add_jobs(cursor, [{"name": name, "application": "quick", "state": "RUNNING"}])
    assert lifecycle.transition(cursor, [job], State.RUN_TIMEOUT, "timed out (test)")
    return job


def test_a_pass_says_when_a_job_backing_off_may_be_retried(cursor):
    add_app(cursor, "quick", "/bin/true")
    policy = RetryPolicy(backoff_seconds=30.0)
    assert transitions.advance_pass(cursor, policy=policy).retry_in is None
    _timed_out(cursor, "t")
    done = transitions.advance_pass(cursor, policy=policy)
    assert not any(done.moved.values())
    assert done.retry_in is not None and 29.0 < done.retry_in <= 30.0 + 0.1


@pytest.mark.slow
@pytest.mark.parametrize("args", [SERIAL, MPI], ids=["serial", "mpi"])
def test_a_retry_starts_when_its_back_off_runs_out(db, cursor, args):
    """Nothing is written when a back-off ends: the idle loop's backed-off look found the job
    (measured on main: 6.0 s late in serial mode, 14.0 s in MPI mode) before it took the pass's
    due time (now: within 0.1 s)."""
    add_app(cursor, "quick", "/bin/true")
    backoff = 10.0
    with settings(db, launcher={"idle_poll_max_seconds": 600, "retry_backoff_seconds": backoff}), \
            launchers() as start:
        start(*args)
        _connected(cursor, args[-1])
        time.sleep(8.0)  # idle, its looks backing off (a window, not a wait)
        job = _timed_out(cursor, "again")
        due = _db_now(cursor) + backoff
        rerun = wait_for(lambda: _started_at(cursor, job, runs=2), backoff + 3.0,
                         "the retry's RUNNING once its back-off ran out")
    assert due - 0.5 <= rerun <= due + 2.0, f"started {rerun - due:+.2f} s from its due time"


# ---- an app's scripts --------------------------------------------------------------------------
def _notes(db: str, statement: str) -> list[tuple[str, str]]:
    """(channel, payload) of the job and processing notifications ``statement`` sent (run on a
    second connection; a marker notification sent after it says when to stop looking)."""
    listen = psycopg2.connect(**connection_params(db))
    talk = psycopg2.connect(**connection_params(db))
    listen.autocommit = talk.autocommit = True
    try:
        with listen.cursor() as cur:
            cur.execute(f"LISTEN {defaults.NOTIFY_CHANNEL}; "
                        f"LISTEN {defaults.PROCESSING_NOTIFY_CHANNEL}")
        with talk.cursor() as cur:
            cur.execute(statement)
            cur.execute(f"NOTIFY {defaults.NOTIFY_CHANNEL}, 'marker'")
        seen: list[tuple[str, str]] = []
        end = time.monotonic() + 10
        while (defaults.NOTIFY_CHANNEL, "marker") not in seen:
            assert time.monotonic() < end, "the marker notification never came"
            select.select([listen], [], [], 1.0)
            listen.poll()
            seen += [(n.channel, n.payload) for n in listen.notifies]
            listen.notifies.clear()
        return seen[:seen.index((defaults.NOTIFY_CHANNEL, "marker"))]
    finally:
        listen.close()
        talk.close()


def test_a_change_of_an_apps_scripts_wakes_launchers_and_workers(db, cursor):
    both = [(defaults.NOTIFY_CHANNEL, "APP"), (defaults.PROCESSING_NOTIFY_CHANNEL, "")]
    assert sorted(_notes(db, f"INSERT INTO {APP} (name, description, executable, preprocess, "
                             "envscript, postprocess) VALUES ('a', '', '/bin/true', '', '', '')")
                  ) == both
    assert sorted(_notes(db, f"UPDATE {APP} SET preprocess = 'x' WHERE name = 'a'")) == both
    assert sorted(_notes(db, f"UPDATE {APP} SET postprocess = 'y' WHERE name = 'a'")) == both
    assert sorted(_notes(db, f"UPDATE {APP} SET name = 'b' WHERE name = 'a'")) == both
    # what no pass or worker reads, an unchanged rewrite, or no row: no one is woken
    assert _notes(db, f"UPDATE {APP} SET description = 'd', executable = '/bin/echo'") == []
    assert _notes(db, f"UPDATE {APP} SET preprocess = preprocess, name = name") == []
    assert _notes(db, f"DELETE FROM {APP} WHERE name = 'none'") == []
    assert sorted(_notes(db, f"DELETE FROM {APP} WHERE name = 'b'")) == both


@pytest.mark.slow
def test_a_job_an_app_change_lets_move_starts_promptly(db, cursor):
    """Job B waits in STAGED_IN for the launcher's one transition worker, busy with job A's
    long preprocess; its app's script is removed, so the launcher's processing pass can move it
    on: at its backed-off look before (8.0 s later, measured on main), now within
    ``idle_wait_seconds`` of the pass before (0.8 s)."""
    add_app(cursor, "busy", "/bin/true")
    add_app(cursor, "fixme", "/bin/true")
    cursor.execute(f"UPDATE {APP} SET preprocess = '/bin/sleep 60'")
    with settings(db, launcher={"idle_poll_max_seconds": 600}), launchers() as start:
        start(*SERIAL, "--num-transition-threads", "1")
        _connected(cursor, "serial")
        (a,) = add_jobs(cursor, [{"name": "a", "application": "busy", "state": "STAGED_IN"}])
        wait_for(lambda: _held(cursor, a), 10, "the worker's hold of job A (its preprocess)")
        (b,) = add_jobs(cursor, [{"name": "b", "application": "fixme", "state": "STAGED_IN"}])
        time.sleep(8.0)  # idle, the pass backing off (a window, not a wait)
        cursor.execute(f"UPDATE {APP} SET preprocess = '' WHERE name = 'fixme'")
        changed = _db_now(cursor)
        started = wait_for(lambda: _started_at(cursor, b), 5,
                           "the RUNNING of a job its app's change let move")
    assert started - changed < 3.0


def _held(cursor: Any, job_id: str) -> bool:
    cursor.execute(f"SELECT session_id IS NOT NULL FROM {JOB} WHERE job_id = %s", [job_id])
    return bool(cursor.fetchone()[0])
