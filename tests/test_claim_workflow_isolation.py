"""The stored claim keys (migration 0022) stay "never later than the truth" whatever isolation
level a writer or a claimer runs in (a server's or PGOPTIONS' ``default_transaction_isolation``),
and writers of keys never wait for each other. Real PostgreSQL, explicit interleavings."""
from __future__ import annotations

import threading

from test_claim_workflow_keys import _app, _early, _jobs, _session, _stored

from balsam.core import claim_sql, leases, schema
from balsam.db.connect import connect

JOB = schema.JOB_TABLE


def _emptied_p0(cursor) -> int:
    """Workflow p0 of one job, claimed by an unfiltered claim (its name stays listed); the
    claiming session's id."""
    _app(cursor)
    _jobs(cursor, 1, 1)
    sid = _session(cursor)
    assert len(leases.claim(cursor, sid, 1, serial=True, max_nodes=1)) == 1
    assert "p0" in _stored(cursor)
    return sid


def test_a_repeatable_read_claim_never_drops_a_workflow_released_after_its_snapshot(db, cursor):
    sid = _emptied_p0(cursor)
    claimer = connect(db)
    try:
        ccur = claimer.cursor()
        ccur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        other = _session(ccur)  # the transaction's snapshot: p0 has no claimable job
        assert leases.claim(ccur, other, 1, serial=True, max_nodes=1, wf_filter="p0") == []
        leases.release(cursor, sid)  # committed before the claim's refresh (at its commit)
        claimer.commit()
    finally:
        claimer.close()
    assert _early(cursor)
    got = leases.claim(cursor, sid, 1, serial=True, max_nodes=1, wf_filter="p0")
    assert [r["name"] for r in got] == ["p0-0"]


def test_a_repeatable_read_writer_relists_a_workflow_dropped_after_its_snapshot(db, cursor):
    sid = _emptied_p0(cursor)
    writer = connect(db)
    try:
        wcur = writer.cursor()
        wcur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        wcur.execute(f"SELECT count(*) FROM {claim_sql.WORKFLOWS_TABLE}")  # its snapshot
        assert claim_sql.refresh_workflows(cursor, ["p0"]) == 1  # dropped: nothing claimable
        assert "p0" not in _stored(cursor)
        leases.release(wcur, sid)  # its snapshot still lists p0 with an early key
        writer.commit()
    finally:
        writer.close()
    assert _early(cursor)
    got = leases.claim(cursor, sid, 1, serial=True, max_nodes=1, wf_filter="p0")
    assert [r["name"] for r in got] == ["p0-0"]


def _waiting(cursor, pid: int) -> bool:
    cursor.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", [pid])
    row = cursor.fetchone()
    return bool(row and row[0])


def test_writers_raising_jobs_of_two_workflows_in_opposite_orders_do_not_deadlock(db, cursor):
    _app(cursor)
    _jobs(cursor, 2, 2)
    for b in range(claim_sql.LOCK_BUCKETS):
        claim_sql.prune_workflows(cursor, bucket=b)  # exact keys: a raise lowers them
    first, second = connect(db), connect(db)
    errors: list[BaseException] = []
    try:
        c1, c2 = first.cursor(), second.cursor()
        c1.execute("SELECT pg_backend_pid()")
        pid1 = c1.fetchone()[0]
        c1.execute(f"UPDATE {JOB} SET priority = 90 WHERE name = 'p0-1'")
        c2.execute(f"UPDATE {JOB} SET priority = 90 WHERE name = 'p1-1'")

        def first_then_p1() -> None:
            try:
                c1.execute(f"UPDATE {JOB} SET priority = 91 WHERE name = 'p1-0'")
            except BaseException as exc:  # reported by the test's thread
                errors.append(exc)

        t = threading.Thread(target=first_then_p1)
        t.start()
        for _ in range(6000):  # until the first waits (on p1's key row), bounded
            if _waiting(cursor, pid1) or not t.is_alive():
                break
            threading.Event().wait(0.01)
        try:
            c2.execute(f"UPDATE {JOB} SET priority = 91 WHERE name = 'p0-0'")
        except BaseException as exc:
            errors.append(exc)
            second.rollback()  # let the first go on
        t.join(timeout=120)
        assert not t.is_alive()
        assert not errors, errors
        first.commit()
        second.commit()
    finally:
        first.rollback()
        second.rollback()
        first.close()
        second.close()
    assert _early(cursor)
    assert {w: k[0] for w, k in _stored(cursor).items()} == {"p0": -91, "p1": -91}


def test_a_long_transaction_lowering_a_key_makes_no_writer_wait(db, cursor):
    # the key is written at commit: a transaction that lowered it and goes on holds no key row
    _app(cursor)
    _jobs(cursor, 1, 2)
    for b in range(claim_sql.LOCK_BUCKETS):
        claim_sql.prune_workflows(cursor, bucket=b)
    cursor.execute("SET lock_timeout = '60s'")  # a regression fails, not hangs
    long = connect(db)
    try:
        lcur = long.cursor()
        lcur.execute(f"UPDATE {JOB} SET priority = 90 WHERE name = 'p0-1'")
        cursor.execute(f"UPDATE {JOB} SET priority = 80 WHERE name = 'p0-0'")  # autocommit
        assert _stored(cursor)["p0"][0] == -80
        long.commit()
    finally:
        long.close()
    assert _stored(cursor)["p0"][0] == -90
    assert _early(cursor)
    cursor.execute(f"SELECT (SELECT count(*) FROM {claim_sql.WORKFLOWS_TABLE}_lower) + "
                   f"(SELECT count(*) FROM {claim_sql.WORKFLOWS_TABLE}_lower_at)")
    assert cursor.fetchone()[0] == 0  # nothing queued outlives its transaction
