"""A run whose RUNNING was refused because a user killed the job first is still in the job's
history (:mod:`balsam.core.killed_starts`), written in the transaction of the refusal, against
the real PostgreSQL: started before the kill (the kill then leaves RUNNING), started and ended
before it, started after it (the launcher had not learned of the kill yet); one buffer and K
writer threads alike; a second write changes nothing; what ``balsam ls --history``, the
analytics and the retry count read stays consistent."""
from __future__ import annotations

import datetime
import os
import time

import pytest
from fault_support import SERIAL
from launcher_procs import launchers
from launcher_support import (
    QUICK,
    add_app,
    add_jobs,
    job_row,
    kill_group_of,
    process_gone,
    settings,
    wait_for,
    workdir,
    write_script,
)
from once_support import read_pid
from test_launcher_common import open_session

from balsam.core import analytics, killed_starts, leases, lifecycle, retries, schema
from balsam.core.reads.jobs import histories, jobs_by_ids
from balsam.db.connect import connect
from balsam.db.database import Database
from balsam.launcher.status import StatusBuffer
from balsam.launcher.status_writers import StatusWriters
from balsam.platform.process import start_time

BACKDATE = "60 seconds"
"""The jobs are made this much older, so that a start dated ``EARLIER`` seconds before it was
noted still falls after the job became runnable (no test depends on how fast a statement runs)."""
EARLIER = 5.0


@pytest.fixture
def claimed(db, cursor):
    """(database, session id, ids of 3 PREPROCESSED jobs that session claimed, made older)."""
    add_app(cursor, "app", "true")
    ids = add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                            for i in range(3)])
    cursor.execute(f"UPDATE {schema.JOB_TABLE} SET created_at = created_at - interval %s",
                   [BACKDATE])
    cursor.execute(f"UPDATE {schema.EVENT_TABLE} SET timestamp = timestamp - interval %s, "
                   "entered_at = entered_at - interval %s", [BACKDATE, BACKDATE])
    database = Database(db)
    sid = database.run(open_session)
    database.run(leases.claim, sid, 10, serial=False, max_nodes=2)
    yield database, sid, sorted(ids)
    database.close()


def rows(cursor, job_id):
    cursor.execute(f"SELECT id, timestamp, from_state, to_state, message, entered_at, nodes "
                   f"FROM {schema.EVENT_TABLE} WHERE job_id = %s ORDER BY id", [job_id])
    names = ("id", "at", "src", "dst", "message", "entered", "nodes")
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def assert_whole_history(cursor, job_id):
    """Every event is one visit of its from_state, in id order = time order, and the job
    entered its state when its last event says."""
    events = rows(cursor, job_id)
    for before, after in zip(events, events[1:]):
        assert after["src"] == before["dst"] and after["entered"] == before["at"]
        assert before["at"] <= after["at"] and before["id"] < after["id"]
    row = job_row(cursor, job_id)
    assert (row["state_since"] or row["created_at"]) == events[-1]["at"]
    assert row["state"] == events[-1]["dst"]


def earlier(noted, job_id, seconds=EARLIER):
    noted[job_id] -= seconds


def test_a_start_refused_by_a_kill_is_recorded_and_the_kill_leaves_running(claimed, cursor):
    database, sid, (a, b, _) = claimed
    status = StatusBuffer(database, sid, start_message="serial-mode session 7")
    status.started([a, b])
    batch = status.take()
    earlier(batch.start_noted, a)
    lifecycle.kill(cursor, [a])  # after the start, before RUNNING was written
    written = database.run(status.write, batch)
    assert written.started == [b] and written.not_started == [a]  # still stopped at once
    events = rows(cursor, a)
    assert [(e["src"], e["dst"]) for e in events[-2:]] == [("PREPROCESSED", "RUNNING"),
                                                          ("RUNNING", "USER_KILLED")]
    start, kill = events[-2:]
    assert start["message"] == "serial-mode session 7 (recorded after the kill)"
    assert kill["message"] == "Killed by user" and kill["nodes"] == 1.0
    # dated EARLIER s before the kill's statement, give or take the record statement's latency
    assert kill["at"] - start["at"] > datetime.timedelta(seconds=EARLIER - 1)
    assert_whole_history(cursor, a)
    row = job_row(cursor, a)
    assert row["state"] == "USER_KILLED" and row["session_id"] == sid  # the launcher releases it
    # what users and tools read
    history = histories(cursor, jobs_by_ids(cursor, [a]))[a]
    assert history.index(" RUNNING] serial-mode session 7") < history.index(" USER_KILLED]")
    (run,) = [r for r in analytics.job_runtimes(cursor) if r.job_id == a]
    assert run.end_state == "USER_KILLED" and run.seconds > EARLIER - 1
    assert retries.usage(cursor, [a], 3)[a][0] == 0
    # the same batch written again (a commit whose outcome was lost) changes nothing
    again = database.run(status.write, batch)
    assert again.not_started == [a] and rows(cursor, a) == events


def test_a_run_that_started_and_ended_before_the_kill_shows_its_end_then_the_kill(claimed,
                                                                                  cursor):
    database, sid, (a, _, _) = claimed
    status = StatusBuffer(database, sid, start_message="go")
    status.started([a])
    status.error(a, "exit code 3:\nboom")
    batch = status.take()
    earlier(batch.start_noted, a)
    earlier(batch.end_noted, a, EARLIER / 2)
    lifecycle.kill(cursor, [a])
    assert database.run(status.write, batch).not_started == [a]
    events = rows(cursor, a)
    assert [(e["src"], e["dst"], e["message"]) for e in events[-3:]] == [
        ("PREPROCESSED", "RUNNING", "go (recorded after the kill)"),
        ("RUNNING", "RUN_ERROR", "exit code 3:\nboom"),
        ("RUN_ERROR", "USER_KILLED", "Killed by user")]
    assert events[-2]["nodes"] == 1.0 and events[-1]["nodes"] is None
    assert_whole_history(cursor, a)
    assert job_row(cursor, a)["state"] == "USER_KILLED"


def test_a_run_started_after_the_kill_is_recorded_after_it(claimed, cursor):
    database, sid, (a, _, _) = claimed
    lifecycle.kill(cursor, [a])  # the task was queued; the worker started it before it learned
    status = StatusBuffer(database, sid, start_message="go")
    status.started([a])
    assert status.flush().not_started == [a]
    events = rows(cursor, a)
    assert [(e["src"], e["dst"], e["message"]) for e in events[-3:]] == [
        ("PREPROCESSED", "USER_KILLED", "Killed by user"),
        ("USER_KILLED", "RUNNING", "go (started before the launcher learned of the kill)"),
        ("RUNNING", "USER_KILLED", killed_starts.STOPPED_MESSAGE)]
    assert events[-1]["nodes"] == 1.0
    assert_whole_history(cursor, a)
    assert retries.usage(cursor, [a], 3)[a][0] == 0
    assert status.flush().not_started == []  # nothing pending: nothing more


def test_a_start_refused_for_another_reason_records_nothing(claimed, cursor):
    database, sid, (a, _, _) = claimed
    # a user moved the claimed job back (the hold is dropped): not this launcher's any more
    # (a user may move a job held by a live session only by killing it: here its lease expired)
    cursor.execute(f"UPDATE {schema.SESSION_TABLE} SET heartbeat = heartbeat - interval '1 hour', "
                   "lease_seconds = 0 WHERE id = %s", [sid])
    assert lifecycle.transition(cursor, [a], "READY", "user", user=True) == [(a, "PREPROCESSED")]
    before = rows(cursor, a)
    status = StatusBuffer(database, sid, start_message="go")
    status.started([a])
    assert status.flush().not_started == [a]
    assert rows(cursor, a) == before


def test_status_writers_record_a_start_refused_by_a_kill(claimed, cursor, db):
    database, sid, (a, b, c) = claimed
    writers = StatusWriters(lambda k: Database(db), sid, 2, flush_seconds=3600.0,
                            start_message="go")
    try:
        lifecycle.kill(cursor, [a, c])
        writers.started([a, b, c])
        written = writers.flush(before=time.monotonic() + 60.0)  # every batch committed
        assert written is not None and sorted(written.not_started) == [a, c]
    finally:
        writers.close()
    for job_id in (a, c):
        assert [e["dst"] for e in rows(cursor, job_id)][-3:] == ["USER_KILLED", "RUNNING",
                                                                 "USER_KILLED"]
        assert_whole_history(cursor, job_id)
    assert job_row(cursor, b)["state"] == "RUNNING"


def test_a_lost_start_of_a_job_killed_meanwhile_is_recorded_once_after_the_kill(claimed,
                                                                                cursor):
    """The ensemble died before the start was written (its watchdog's report lists it) and a
    user killed the job meanwhile: the run is recorded after the kill, outcome unknown."""
    database, sid, (a, b, _) = claimed
    lifecycle.kill(cursor, [a])
    started = {a: 1, b: 1}
    message = "serial-mode session 9 (recorded after the run)"
    assert sorted(database.run(leases.record_lost_starts, sid, started, "serial-mode session 9",
                               "outcome unknown")) == [a, b]
    assert [(e["src"], e["dst"], e["message"]) for e in rows(cursor, a)[-3:]] == [
        ("PREPROCESSED", "USER_KILLED", "Killed by user"),
        ("USER_KILLED", "RUNNING", message), ("RUNNING", "USER_KILLED", "outcome unknown")]
    assert_whole_history(cursor, a)
    assert [e["dst"] for e in rows(cursor, b)][-2:] == ["RUNNING", "RUN_TIMEOUT"]
    # never twice (a's hold is kept until its launcher releases it)
    assert database.run(leases.record_lost_starts, sid, started, "serial-mode session 9",
                        "outcome unknown") == []
    assert len(rows(cursor, a)) == 4

# ---- real launchers --------------------------------------------------------------------------

MARKED = """#!/bin/sh
echo $$ > pid
exec sleep 600
"""


def blocked_by(cursor, backend_pid: int) -> int:
    """How many server processes wait for a lock that ``backend_pid``'s transaction holds."""
    cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                   [backend_pid])
    return int(cursor.fetchone()[0])


@pytest.mark.slow
@pytest.mark.parametrize("path", ["warm start", "master", "master with 2 status writers"])
def test_a_run_killed_before_its_running_was_written_is_in_the_history(db, cursor, scripts,
                                                                        path):
    """The defect of session 13: a user's kill between a serial task's start and the batched
    RUNNING write left the history PREPROCESSED -> USER_KILLED although the task ran. The kill
    is made to land in that window without timing: a KEY SHARE lock on the job's row lets the
    launcher claim it (FOR NO KEY UPDATE) but holds its RUNNING write (FOR UPDATE) until the
    kill, made in the lock's transaction once the write is seen waiting, has committed."""
    add_app(cursor, "marked", write_script(scripts, "marked.sh", MARKED))
    add_app(cursor, "quick", "true")
    if path != "warm start":  # the launcher's own first task (one a node): the master runs it
        add_jobs(cursor, [{"name": f"q{i}", "application": "quick", "state": "PREPROCESSED",
                           "priority": 10} for i in range(2)])
    (job_id,) = add_jobs(cursor, [{"name": "marked", "application": "marked",
                                   "state": "PREPROCESSED"}])
    lock = connect(db)
    try:
        with lock.cursor() as held:
            held.execute(f"SELECT pg_backend_pid(), state FROM {schema.JOB_TABLE} "
                         "WHERE job_id = %s FOR KEY SHARE", [job_id])
            backend_pid = held.fetchone()[0]
            tunables = dict(QUICK, status_writers=2 if "writers" in path else 1)
            with settings(db, local_nodes=1, cores_per_node=2, launcher=tunables), \
                    launchers() as start:
                launcher = start(*SERIAL)
                pid_file = os.path.join(workdir(db, cursor, job_id), "pid")
                pid = wait_for(lambda: read_pid(pid_file), 60, "the task to start")
                started = start_time(pid)
                try:
                    wait_for(lambda: blocked_by(cursor, backend_pid), 60,
                             "the launcher's RUNNING write to wait for the row")
                    held.execute(f"SELECT state FROM {schema.JOB_TABLE} WHERE job_id = %s",
                                 [job_id])
                    assert held.fetchone()[0] == "PREPROCESSED"  # its start is not recorded
                    assert lifecycle.kill(held, [job_id]) == [job_id]
                    lock.commit()
                    wait_for(lambda: process_gone(pid), 60, "the task to be stopped")
                finally:
                    kill_group_of(pid, started)
                assert launcher.wait(120) == 0, launcher.output()  # nothing left: it exits
                log = launcher.log()
    finally:
        lock.close()
    stopped_by = "(warm start)" if path == "warm start" else "on worker 1"
    assert "warm start: 1 task(s)" in log and f"stopping its task {stopped_by}" in log
    events = rows(cursor, job_id)
    assert [e["dst"] for e in events].count("RUNNING") == 1
    assert [e["dst"] for e in events][-2:] == ["RUNNING", "USER_KILLED"]
    assert_whole_history(cursor, job_id)
    row = job_row(cursor, job_id)
    assert row["state"] == "USER_KILLED" and row["session_id"] is None
    (run,) = [r for r in analytics.job_runtimes(cursor) if r.job_id == job_id]
    assert run.end_state == "USER_KILLED"
