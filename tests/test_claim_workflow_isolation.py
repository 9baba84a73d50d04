"""The stored claim keys (migration 0022) stay "never later than the truth" whatever isolation
level a writer or a claimer runs in (a server's or PGOPTIONS' ``default_transaction_isolation``),
and writers of keys never wait for each other. Real PostgreSQL, explicit interleavings."""
from __future__ import annotations

import random
import threading

import pytest
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


@pytest.mark.slow
def test_claimers_and_multi_statement_writers_in_threads_never_deadlock_or_lose_a_job(db, cursor):
    # claimers (filtered claims, releases in two statements, prunes) and writers (three
    # priority raises of random workflows per transaction) in threads: before keys were
    # lowered at commit this deadlocked within a few hundred transactions
    _app(cursor)
    _jobs(cursor, 40, 8)
    errors: list[BaseException] = []
    claimed: dict[str, int] = {}
    guard = threading.Lock()

    def claimer(k: int) -> None:
        rnd = random.Random(k)
        conn = connect(db)
        try:
            cur = conn.cursor()
            cur.execute("SET lock_timeout = '300s'")  # an error, never a hang
            sid = _session(cur)
            conn.commit()
            for _ in range(150):
                rows = leases.claim(cur, sid, rnd.randint(1, 8), serial=True, max_nodes=1,
                                    wf_filter=rnd.choice(["p", "p1", "2"]))
                conn.commit()
                with guard:
                    assert not {r["job_id"] for r in rows} & set(claimed), "claimed twice"
                    claimed.update((r["job_id"], sid) for r in rows)
                back = [r["job_id"] for r in rows if rnd.random() < 0.6]
                with guard:
                    for j in back:
                        claimed.pop(j)
                for part in (back[:len(back) // 2], back[len(back) // 2:]):
                    if part:
                        leases.release(cur, sid, part)
                claim_sql.prune_workflows(cur, bucket=rnd.randrange(claim_sql.LOCK_BUCKETS))
                conn.commit()
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)
        finally:
            conn.close()

    def writer(k: int) -> None:
        rnd = random.Random(100 + k)
        conn = connect(db)
        try:
            cur = conn.cursor()
            cur.execute("SET lock_timeout = '300s'")
            for _ in range(150):
                for w in rnd.sample(range(40), 3):
                    cur.execute(f"UPDATE {JOB} SET priority = %s WHERE name = %s",
                                [rnd.randint(0, 30), f"p{w}-{rnd.randrange(8)}"])
                conn.commit()
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = ([threading.Thread(target=claimer, args=(k,)) for k in range(2)]
               + [threading.Thread(target=writer, args=(k,)) for k in range(2)])
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    assert not errors and not any(t.is_alive() for t in threads), errors
    assert _early(cursor)
    cursor.execute(f"SELECT count(*) FROM {JOB} WHERE session_id IS NULL")
    left = cursor.fetchone()[0]
    got = leases.claim(cursor, _session(cursor), 1000, serial=True, max_nodes=1, wf_filter="p")
    assert len(got) == left == 320 - len(claimed)  # every claimable job is reachable
