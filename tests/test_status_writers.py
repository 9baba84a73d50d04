"""Recording at scale, against the real PostgreSQL: a run's end goes on to JOB_FINISHED in the
same row update when nothing follows it (both events recorded, children woken, other jobs left
to processing), and :class:`StatusWriters` (K threads, a connection each, sharded by job id)
records what one buffer records: order per job, refused starts, nothing lost while the
database is unreachable."""
from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from conftest import make_public_tmpdir, run_balsam
from launcher_procs import launchers
from launcher_support import (
    QUICK,
    add_app,
    add_jobs,
    events,
    job_row,
    kill_group_of,
    process_gone,
    settings,
    states,
    wait_for,
    write_script,
)
from test_launcher_common import mirror, open_session, set_port  # noqa: F401 - a fixture
from test_launcher_serial import APPEND, SERIAL, pids_of, sleepers, to_states

from balsam.core import bulk, launcher_moves, leases, lifecycle, schema
from balsam.db import serverinfo
from balsam.db.database import FIRST_BACKOFF_SECONDS, Database
from balsam.launcher.status import StatusBuffer
from balsam.launcher.status_writers import (
    StatusWriters,
    close_status,
    open_status,
    shard_of,
    writer_count,
)
from balsam.platform.process import start_time
from balsam.processing import transitions


def claim_jobs(db, cursor, specs):
    """(database, session id, ids) of jobs of app ``app`` claimed by a new session."""
    ids = add_jobs(cursor, [{"application": "app", "state": "PREPROCESSED", **s} for s in specs])
    database = Database(db)
    sid = database.run(open_session)
    database.run(leases.claim, sid, len(ids), serial=False, max_nodes=2)
    return database, sid, ids


def test_a_run_with_nothing_after_it_is_finished_as_its_end_is_recorded(db, cursor):
    add_app(cursor, "app", "true")
    add_app(cursor, "post", "true")
    cursor.execute(f"UPDATE {schema.APP_TABLE} SET postprocess = 'echo' WHERE name = 'post'")
    database, sid, (plain, staged, erred) = claim_jobs(db, cursor, [
        {"name": "plain"}, {"name": "staged", "stage_out_url": "local:/tmp/x",
                            "stage_out_files": "*.out"}, {"name": "erred"}])
    (posted,) = add_jobs(cursor, [{"name": "posted", "application": "post",
                                   "state": "PREPROCESSED"}])
    (child,) = add_jobs(cursor, [{"name": "child", "application": "app",
                                  "state": "AWAITING_PARENTS"}])
    cursor.execute(f"INSERT INTO {schema.DEP_TABLE} (parent_id, child_id) VALUES (%s, %s)",
                   [plain, child])
    database.run(leases.claim, sid, 1, serial=False, max_nodes=2)
    status = StatusBuffer(database, sid, start_message="go",
                          follow=transitions.FINISH_ON_RECORD)
    status.started([plain, staged, erred, posted])
    assert status.flush().started == [plain, staged, erred, posted]
    for job_id in (plain, staged, posted):
        status.done(job_id)
    status.error(erred, "boom")
    assert status.flush().ended == 4
    assert [e[2] for e in events(cursor, plain)] == ["PREPROCESSED", "RUNNING", "RUN_DONE",
                                                     "JOB_FINISHED"]
    finished = events(cursor, plain)[-1]
    assert finished[1:] == ("RUN_DONE", "JOB_FINISHED", "nothing to postprocess or stage out")
    assert job_row(cursor, plain)["session_id"] is None
    # stage-out, a postprocess script, a failed run: left to processing, as the routes say
    assert [job_row(cursor, j)["state"] for j in (staged, posted, erred)] == [
        "RUN_DONE", "RUN_DONE", "RUN_ERROR"]
    cursor.execute(f"SELECT job_id FROM {schema.WAKE_TABLE}")
    assert [str(r[0]) for r in cursor.fetchall()] == [child]
    transitions.advance(cursor)
    assert job_row(cursor, child)["state"] == "PREPROCESSED"
    assert job_row(cursor, posted)["state"] == "RUN_DONE"  # a transition worker's step
    database.close()


def test_a_run_started_and_ended_in_one_batch_gets_three_events_and_one_row_update(db, cursor):
    add_app(cursor, "app", "true")
    database, sid, (a,) = claim_jobs(db, cursor, [{"name": "a"}])
    status = StatusBuffer(database, sid, follow=transitions.FINISH_ON_RECORD)
    status.started([a])
    status.done(a)
    assert status.flush().ended == 1
    assert [e[1:3] for e in events(cursor, a)][1:] == [
        ("PREPROCESSED", "RUNNING"), ("RUNNING", "RUN_DONE"), ("RUN_DONE", "JOB_FINISHED")]
    database.close()


def test_writers_shard_by_job_id_and_record_what_one_buffer_records(db, cursor):
    add_app(cursor, "app", "true")
    # random ids whose low 64 bits are 0..11, so every shard gets four (12 plain random ids
    # left a shard out ~2% of the time: this test failed once in 50)
    rows = [schema.new_job_row({"workflow": "wf", "application": "app", "state": "PREPROCESSED",
                                "name": f"j{i}"}, job_id=uuid.UUID(int=uuid.uuid4().int >> 64 << 64 | i))
            for i in range(12)]
    bulk.copy_jobs(cursor, rows)
    ids = [str(r["job_id"]) for r in rows]
    database = Database(db)
    sid = database.run(open_session)
    database.run(leases.claim, sid, len(ids), serial=False, max_nodes=2)
    lifecycle.kill(cursor, [ids[0]])
    writers = StatusWriters(lambda k: Database(db), sid, 3, flush_seconds=0.01,
                            start_message="go", follow=transitions.FINISH_ON_RECORD)
    try:
        assert sorted(shard_of(j, 3) for j in ids) == sorted([0, 1, 2] * 4)
        writers.started(ids)
        for job_id in ids[1:6]:
            writers.done(job_id)  # start and end noted before any write: one row update each
        writers.error(ids[6], "boom")
        assert writers.pending == 18 and writers.pending_ids() == set(ids)
        written = writers.flush(before=time.monotonic() + 10)
        assert written is not None and written.not_started == [ids[0]]
        assert writers.pending == 0 and not writers.due()
        for job_id in ids[7:]:
            writers.done(job_id)
        assert writers.flush(before=time.monotonic() + 10).not_started == []
    finally:
        close_status(writers)
    cursor.execute(f"SELECT state, count(*) FROM {schema.JOB_TABLE} GROUP BY state")
    assert dict(cursor.fetchall()) == {"USER_KILLED": 1, "JOB_FINISHED": 10, "RUN_ERROR": 1}
    for job_id in ids[1:6] + ids[7:]:
        assert [e[2] for e in events(cursor, job_id)] == ["PREPROCESSED", "RUNNING",
                                                          "RUN_DONE", "JOB_FINISHED"]
    assert sum(d.transactions for d in writers.databases) >= 3  # every shard wrote
    database.close()


def test_writers_keep_everything_pending_while_the_database_is_unreachable(db, cursor,
                                                                           mirror):  # noqa: F811
    add_app(cursor, "app", "true")
    (job_id,) = add_jobs(cursor, [{"name": "j", "application": "app", "state": "PREPROCESSED"}])
    database = Database(mirror)
    sid = database.run(open_session)
    database.run(leases.claim, sid, 1, serial=False, max_nodes=1)
    port = serverinfo.read(mirror)["port"]
    set_port(mirror, 1)
    writers = StatusWriters(lambda k: Database(mirror), sid, 2, flush_seconds=0.01)
    try:
        writers.started([job_id])
        writers.done(job_id)
        assert writers.flush(before=time.monotonic() + 0.3) is None
        assert writers.pending == 2 and writers.pending_ids() == {job_id}
        set_port(mirror, port)
        time.sleep(FIRST_BACKOFF_SECONDS * 2)
        assert writers.flush(before=time.monotonic() + 10) is not None
    finally:
        writers.close()
    assert [e[2] for e in events(cursor, job_id)] == ["PREPROCESSED", "RUNNING", "RUN_DONE"]
    database.close()


def test_writer_count_and_open_status_choose_the_plain_buffer_for_small_allocations(db):
    assert [writer_count(0, n) for n in (1, 511, 512, 1024, 4096, 100_000)] == [1, 1, 1, 2, 4, 4]
    assert writer_count(3, 1) == 3
    database = Database(db)
    plain = open_status(database, 1, writers=1, flush_seconds=0.05, start_message="",
                        processing=False)
    assert isinstance(plain, StatusBuffer) and plain.follow is None
    sharded = open_status(database, 1, writers=2, flush_seconds=0.05, start_message="",
                          processing=True)
    assert isinstance(sharded, StatusWriters) and len(sharded.databases) == 2
    assert sharded.shards[0].buffer.follow is transitions.FINISH_ON_RECORD
    close_status(sharded)
    close_status(plain)
    database.close()


# ---- a real serial launcher with two writers ---------------------------------------------------

@pytest.mark.slow
def test_two_launchers_with_two_writers_each_run_every_job_once_and_record_every_state(
        db, cursor):
    scripts = make_public_tmpdir("balsam-sw-scripts-")
    markers = make_public_tmpdir("balsam-sw-markers-")
    add_app(cursor, "append", write_script(scripts, "append.sh", APPEND))
    ids = add_jobs(cursor, [{"name": f"m{i}", "application": "append", "node_packing_count": 4,
                             "environ_vars": f"MARKERS={markers}"} for i in range(200)])
    with settings(db, local_nodes=2, launcher=dict(QUICK, status_writers=2)), \
            launchers() as start:
        running = [start(*SERIAL) for _ in range(2)]
        assert [launcher.wait(120) for launcher in running] == [0, 0]
    assert set(states(cursor).values()) == {"JOB_FINISHED"}
    for job_id in ids:
        with open(os.path.join(markers, job_id)) as fh:
            assert fh.read().splitlines() == [job_id]
    cursor.execute(f"""SELECT to_state, count(*) FROM {schema.EVENT_TABLE}
                       WHERE to_state IN ('RUNNING', 'RUN_DONE', 'JOB_FINISHED')
                       GROUP BY to_state""")
    assert dict(cursor.fetchall()) == {"RUNNING": 200, "RUN_DONE": 200, "JOB_FINISHED": 200}


@pytest.mark.slow
def test_with_two_writers_a_killed_job_stops_and_sigterm_records_the_others_run_timeout(
        db, cursor):
    scripts = make_public_tmpdir("balsam-sw-scripts-")
    (job_id, other), (pid_file, other_pids) = sleepers(db, cursor, scripts, 2)
    with settings(db, local_nodes=2, launcher=dict(QUICK, status_writers=2)), \
            launchers() as start:
        launcher = start(*SERIAL)
        leader, _ = wait_for(lambda: pids_of(pid_file), 30, "the task to start")
        leader_started = start_time(leader)
        wait_for(lambda: pids_of(other_pids), 30, "the other task to start")
        wait_for(lambda: job_row(cursor, job_id)["state"] == "RUNNING", 10, "RUNNING")
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                       ["balsam-serial-master-writer%"])
        assert cursor.fetchone()[0] >= 1  # RUNNING was written by a writer's connection
        try:
            proc = run_balsam("killjob", "--id", job_id, "--yes")
            assert proc.returncode == 0, proc.stderr
            wait_for(lambda: process_gone(leader), 30, "the killed task to die")
        finally:
            kill_group_of(leader, leader_started)
        wait_for(lambda: job_row(cursor, job_id)["session_id"] is None, 10, "the release")
        launcher.signal(signal.SIGTERM)
        assert launcher.wait(120) == 0
    assert to_states(events(cursor, job_id))[-2:] == ["RUNNING", "USER_KILLED"]
    assert events(cursor, other)[-1][2:] == (
        "RUN_TIMEOUT", "stopped by the launcher: the launcher received SIGTERM")
    assert job_row(cursor, other)["session_id"] is None


def test_the_moves_statement_is_prepared_once_per_connection_and_survives_a_failure(db, cursor):
    from balsam.db.connect import connect

    add_app(cursor, "app", "true")
    database, sid, (a, b) = claim_jobs(db, cursor, [{"name": "a"}, {"name": "b"}])
    conn = connect(db)
    raw = conn.cursor()
    assert launcher_moves.move(raw, [(a, lifecycle.State.RUNNING, "go")], sid) == [
        (a, "PREPROCESSED", "RUNNING")]
    raw.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = 'balsam_move'")
    assert raw.fetchone()[0] == 1
    conn.rollback()  # the statement outlives the transaction; the move is undone
    with pytest.raises(Exception):  # noqa: B017 - any error of the transaction
        raw.execute("SELECT 1/0")
    conn.rollback()
    assert sorted(launcher_moves.move(raw, [(a, lifecycle.State.RUNNING, "go"),
                                            (b, lifecycle.State.RUNNING, "go")], sid)) == sorted([
        (a, "PREPROCESSED", "RUNNING"), (b, "PREPROCESSED", "RUNNING")])
    conn.commit()
    conn.close()
    assert [e[2] for e in events(cursor, b)] == ["PREPROCESSED", "RUNNING"]
    database.close()


def test_a_jobs_shard_is_its_uuids_low_64_bits_whatever_the_form_of_its_text():
    import uuid

    for _ in range(2000):
        job = uuid.uuid4()
        low = job.int & 0xFFFF_FFFF_FFFF_FFFF
        for text in (str(job), str(job).upper(), job.hex, "{" + str(job) + "}"):
            for shards in (1, 2, 3, 4, 7):
                assert shard_of(text, shards) == low % shards, text
