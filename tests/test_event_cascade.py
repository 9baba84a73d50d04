"""A job's history goes with it, without a foreign key on the event table (migration 0018).

The key's per-row check cost ~11-14% of the server's CPU per task; what it did is kept: a
statement trigger deletes the events of deleted jobs (and TRUNCATE of the job table empties the
event table), and since every event is written by the statement that locks and changes its
job's row, a move and a delete of the same job, in either order, never leave an event without
its job. The races are ordered by waiting for the blocked session's lock wait (pg_stat_activity),
never by sleeping.
"""
from __future__ import annotations

import threading
from typing import Any

from launcher_support import add_app, add_jobs, wait_for

from balsam.core import launcher_moves, leases, schema
from balsam.core.states import State
from balsam.db.connect import connect
from balsam.processing import transitions

JOB, EVENT = schema.JOB_TABLE, schema.EVENT_TABLE


def _run_jobs(db: str, cursor: Any, count: int) -> list[str]:
    """``count`` jobs claimed, run and finished by a session: four events each (created in
    PREPROCESSED, RUNNING, RUN_DONE, JOB_FINISHED)."""
    add_app(cursor, "app", "true")
    ids = add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                            for i in range(count)])
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = leases.open_session(cur, hostname="h", pid=1, job_mode="serial", num_nodes=1,
                                  lease_seconds=60)
        assert len(leases.claim(cur, sid, count, serial=True, max_nodes=1)) == count
        launcher_moves.move(cur, [(j, State.RUNNING, "") for j in ids], sid)
        launcher_moves.move(cur, [(j, State.RUN_DONE, "") for j in ids], sid,
                            transitions.FINISH_ON_RECORD)
        conn.commit()
    finally:
        conn.close()
    return ids


def _events_by_job(cursor: Any) -> dict[str, int]:
    cursor.execute(f"SELECT job_id::text, count(*) FROM {EVENT} GROUP BY 1")
    return dict(cursor.fetchall())


def test_the_event_table_has_no_foreign_key_and_the_job_table_the_cascade_triggers(cursor):
    cursor.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                   "AND conrelid = %s::regclass", [EVENT])
    assert cursor.fetchone()[0] == 0
    cursor.execute("SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass "
                   "AND tgname LIKE 'job_events_%%' ORDER BY 1", [JOB])
    assert [r[0] for r in cursor.fetchall()] == ["job_events_deleted", "job_events_truncated"]


def test_deleting_jobs_deletes_their_events_and_only_theirs(db, cursor):
    ids = _run_jobs(db, cursor, 4)
    assert _events_by_job(cursor) == {j: 4 for j in ids}
    cursor.execute(f"DELETE FROM {JOB} WHERE job_id = ANY(%s::uuid[])", [ids[:2]])
    assert _events_by_job(cursor) == {j: 4 for j in ids[2:]}


def test_a_rolled_back_delete_keeps_the_events(db, cursor):
    ids = _run_jobs(db, cursor, 2)
    conn = connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DELETE FROM {JOB} WHERE job_id = %s", [ids[0]])
            cur.execute(f"SELECT count(*) FROM {EVENT} WHERE job_id = %s", [ids[0]])
            assert cur.fetchone()[0] == 0  # gone in the deleting transaction
        conn.rollback()
    finally:
        conn.close()
    assert _events_by_job(cursor) == {j: 4 for j in ids}


def test_truncating_the_job_table_empties_the_event_table(db, cursor):
    _run_jobs(db, cursor, 3)
    cursor.execute(f"TRUNCATE {JOB} CASCADE")
    assert _events_by_job(cursor) == {}


def test_truncating_both_tables_at_once_works_as_before(db, cursor):
    _run_jobs(db, cursor, 3)
    cursor.execute(f"TRUNCATE {EVENT}, {JOB} CASCADE")  # as the tests' fixture does
    cursor.execute(f"SELECT (SELECT count(*) FROM {JOB}) + (SELECT count(*) FROM {EVENT})")
    assert cursor.fetchone()[0] == 0


def _lock_waiter(cursor: Any, pid: int) -> bool:
    cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
    row = cursor.fetchone()
    return row is not None and row[0] == "Lock"


def _in_thread(work: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_delete_waiting_for_a_move_deletes_the_events_the_move_wrote(db, cursor):
    add_app(cursor, "app", "true")
    (job,) = add_jobs(cursor, [{"name": "j", "application": "app", "state": "PREPROCESSED"}])
    mover, deleter = connect(db), connect(db)
    try:
        cur = mover.cursor()
        sid = leases.open_session(cur, hostname="h", pid=1, job_mode="serial", num_nodes=1,
                                  lease_seconds=60)
        leases.claim(cur, sid, 1, serial=True, max_nodes=1)
        mover.commit()
        moved = launcher_moves.move(cur, [(job, State.RUN_DONE, "", State.RUNNING, "")], sid,
                                    transitions.FINISH_ON_RECORD)  # not committed: row locked
        assert [m[2] for m in moved] == [State.JOB_FINISHED.value]
        dcur = deleter.cursor()
        dcur.execute("SELECT pg_backend_pid()")
        dpid = dcur.fetchone()[0]

        def delete() -> int:
            dcur.execute(f"DELETE FROM {JOB} WHERE job_id = %s", [job])
            deleter.commit()
            return dcur.rowcount

        thread, out = _in_thread(delete)
        wait_for(lambda: _lock_waiter(cursor, dpid), 60, "the delete to wait for the move")
        mover.commit()  # the move's three events are committed, then the delete goes on
        thread.join(60)
        assert out == [1]
    finally:
        mover.close()
        deleter.close()
    assert _events_by_job(cursor) == {}


def test_a_move_waiting_for_a_delete_writes_no_event(db, cursor):
    add_app(cursor, "app", "true")
    (job,) = add_jobs(cursor, [{"name": "j", "application": "app", "state": "PREPROCESSED"}])
    mover, deleter = connect(db), connect(db)
    try:
        cur = mover.cursor()
        sid = leases.open_session(cur, hostname="h", pid=1, job_mode="serial", num_nodes=1,
                                  lease_seconds=60)
        leases.claim(cur, sid, 1, serial=True, max_nodes=1)
        mover.commit()
        cur.execute("SELECT pg_backend_pid()")
        mpid = cur.fetchone()[0]
        dcur = deleter.cursor()
        dcur.execute(f"DELETE FROM {JOB} WHERE job_id = %s", [job])  # not committed: row locked

        def run_move() -> list[tuple[str, str, str]]:
            done = launcher_moves.move(cur, [(job, State.RUNNING, "")], sid)
            mover.commit()
            return done

        thread, out = _in_thread(run_move)
        wait_for(lambda: _lock_waiter(cursor, mpid), 60, "the move to wait for the delete")
        deleter.commit()
        thread.join(60)
        assert out == [[]]  # the job was gone: nothing moved
    finally:
        mover.close()
        deleter.close()
    assert _events_by_job(cursor) == {}
    cursor.execute(f"SELECT count(*) FROM {JOB}")
    assert cursor.fetchone()[0] == 0


def test_events_are_written_only_where_their_jobs_rows_are_locked_or_new():
    """The guard that replaced the foreign key is the writers' own: an event is inserted only by
    the statements reviewed for it (the row locked FOR UPDATE and changed in the same statement,
    or a job inserted in the same transaction). A new event writer must hold its job's row the
    same way; then add it here."""
    import pathlib
    import re

    import balsam

    root = pathlib.Path(balsam.__file__).parent
    writes = re.compile(r"INSERT\s+INTO\s+(\{EVENT\}|\{schema\.EVENT_TABLE\}|core_jobevent)"
                        r"|JobEvent\.objects\.(create|bulk_create|get_or_create)|COPY\s+core_jobevent")
    found = {}
    for path in sorted(root.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        count = len(writes.findall(path.read_text()))
        if count:
            found[str(path.relative_to(root))] = count
    # killed_starts: its statement holds the killed job's row FOR UPDATE (CTE k0)
    assert found == {"core/lifecycle.py": 2, "core/launcher_moves.py": 1,
                     "core/killed_starts.py": 1}
