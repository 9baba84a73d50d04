"""The listed workflows' stored claim keys (migration 0022; issue 16, session 18): writers lower
them, claims and the sweep raise or drop them, a filtered claim reads the first workflows by key
and stays exact when keys are stale. Real PostgreSQL; claims run as the launcher runs them."""
from __future__ import annotations

import threading

import pytest

from balsam.core import bulk, claim_sql, leases, schema
from balsam.db.connect import connect

JOB = schema.JOB_TABLE
SERIAL_ORDER = "priority DESC, node_packing_count, wall_time_minutes DESC"


def _app(cursor) -> None:
    cursor.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, preprocess, "
                   "envscript, postprocess) VALUES ('app', '', 'true', '', '', '')")


def _jobs(cursor, workflows: int, per: int, prefix: str = "p") -> None:
    """``workflows`` workflows of ``per`` serial jobs each, their claim order interleaved
    (distinct priority and wall time per job)."""
    bulk.copy_jobs(cursor, [
        schema.new_job_row({"name": f"{prefix}{w}-{i}", "workflow": f"{prefix}{w}",
                            "application": "app", "state": "PREPROCESSED",
                            "priority": (w * 7 + i * 13) % 17,
                            "wall_time_minutes": 1 + w + workflows * i})
        for w in range(workflows) for i in range(per)])


def _session(cur) -> int:
    return leases.open_session(cur, hostname="h", pid=1, job_mode="serial", num_nodes=1,
                               lease_seconds=60)


def _stored(cursor) -> dict[str, list[int]]:
    cursor.execute(f"SELECT workflow, skey FROM {claim_sql.WORKFLOWS_TABLE}")
    return dict(cursor.fetchall())


def _true_keys(cursor) -> dict[str, list[int]]:
    cursor.execute(f"SELECT DISTINCT ON (workflow) workflow, {claim_sql.SERIAL_KEY} FROM {JOB} "
                   "WHERE state IN ('PREPROCESSED', 'RESTART_READY') AND session_id IS NULL "
                   f"ORDER BY workflow, {SERIAL_ORDER}")
    return dict(cursor.fetchall())


def _remaining_top(cursor, wf: str, limit: int) -> list[str]:
    cursor.execute(f"SELECT job_id::text FROM {JOB} WHERE workflow LIKE %s AND session_id IS NULL"
                   f" AND state = 'PREPROCESSED' ORDER BY {SERIAL_ORDER} LIMIT %s",
                   [f"%{wf}%", limit])
    return [j for (j,) in cursor.fetchall()]


def _early(cursor) -> bool:
    """Every workflow with a claimable job is listed, its key no later than its best job's."""
    stored, true = _stored(cursor), _true_keys(cursor)
    return set(true) <= set(stored) and all(stored[w] <= k for w, k in true.items())


def _prune_all(cursor) -> None:
    for b in range(claim_sql.LOCK_BUCKETS):  # a sweep prunes one bucket; here every one
        claim_sql.prune_workflows(cursor, bucket=b)


def test_keys_are_lowered_by_writers_and_raised_by_claims_and_the_sweep(db, cursor):
    _app(cursor)
    _jobs(cursor, 4, 3)
    # the insert's trigger: each component's best apart (cheap), no later than the best job's
    assert _early(cursor) and _stored(cursor) != _true_keys(cursor)
    _prune_all(cursor)
    assert _stored(cursor) == _true_keys(cursor)
    sid = _session(cursor)
    got = leases.claim(cursor, sid, 2, serial=True, max_nodes=1, wf_filter="p1")
    assert len(got) == 2
    assert _stored(cursor) == _true_keys(cursor)  # the filtered claim refreshed p1 at commit
    leases.release(cursor, sid)  # p1's best is claimable again: its key lowered back
    assert _early(cursor)
    _prune_all(cursor)
    assert _stored(cursor) == _true_keys(cursor)
    leases.claim(cursor, sid, 5, serial=True, max_nodes=1)  # unfiltered: keys left early
    assert _early(cursor) and _stored(cursor) != _true_keys(cursor)
    _prune_all(cursor)
    assert _stored(cursor) == _true_keys(cursor)


@pytest.mark.parametrize("scan_names", [claim_sql.SCAN_NAMES, 20])
def test_claims_stay_in_order_when_the_first_keys_are_stale(db, cursor, scan_names,
                                                            monkeypatch):
    # 200 workflows of 2 jobs; an unfiltered claim empties the 100 best ones' first job and
    # most of the head entirely, so a filtered claim's first candidates by key are stale:
    # it must still return the top of what is left, in claim order (candidates from a scan of
    # the names, or from the key index)
    monkeypatch.setattr(claim_sql, "SCAN_NAMES", scan_names)
    _app(cursor)
    _jobs(cursor, 200, 2)
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = _session(cur)
        leases.claim(cur, sid, 150, serial=True, max_nodes=1)
        conn.commit()
        for _ in range(4):
            expected = _remaining_top(cur, "p", 30)
            got = leases.claim(cur, sid, 30, serial=True, max_nodes=1, wf_filter="p")
            assert [r["job_id"] for r in got] == expected
            conn.commit()
    finally:
        conn.close()


def test_two_claimers_with_one_filter_drain_many_workflows_exactly_once(db, cursor):
    # the first claimer's claim runs with nothing else open: it gets exactly the top of what is
    # left; the second claims while the first's transaction (its row locks, its refresh's lock
    # buckets) is open: it passes them, and its own refresh skips the held buckets
    _app(cursor)
    _jobs(cursor, 300, 3)
    _jobs(cursor, 20, 2, prefix="other")
    seen: list[str] = []
    second_got = 0
    first, second = connect(db), connect(db)
    try:
        c1, c2 = first.cursor(), second.cursor()
        s1, s2 = _session(c1), _session(c2)
        first.commit()
        second.commit()
        for _ in range(20):
            expected = _remaining_top(c1, "p", 40)
            a = leases.claim(c1, s1, 40, serial=True, max_nodes=1, wf_filter="p")
            assert [r["job_id"] for r in a] == expected
            b = leases.claim(c2, s2, 40, serial=True, max_nodes=1, wf_filter="p")
            first.commit()
            second.commit()
            seen += [r["job_id"] for r in a + b]
            second_got += len(b)
            if not a and not b:
                break
    finally:
        first.close()
        second.close()
    assert len(seen) == len(set(seen)) == 900  # none twice, none left
    # the second passes the first's rows for its workflows' next ones (fewer than its limit
    # when they run out, as documented), yet gets a share
    assert second_got >= 200  # (300 with this data)
    cursor.execute(f"SELECT count(*) FROM {JOB} WHERE workflow LIKE 'p%%' AND session_id IS NULL")
    assert cursor.fetchone()[0] == 0


def test_claimers_in_threads_never_claim_a_job_twice_and_claim_them_all(db, cursor):
    _app(cursor)
    _jobs(cursor, 400, 2)
    claimed: dict[int, list[str]] = {0: [], 1: []}
    errors: list[BaseException] = []

    def run(k: int) -> None:
        conn = connect(db)
        try:
            cur = conn.cursor()
            sid = _session(cur)
            conn.commit()
            for _ in range(200):  # bounded: 800 jobs, claims of 16
                rows = leases.claim(cur, sid, 16, serial=True, max_nodes=1, wf_filter="p")
                conn.commit()
                claimed[k] += [r["job_id"] for r in rows]
                if not rows and not _remaining_top(cur, "p", 1):
                    return
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors and not any(t.is_alive() for t in threads)
    both = claimed[0] + claimed[1]
    assert len(both) == len(set(both)) == 800


def test_a_refresh_skips_a_workflow_a_writer_is_making_claimable(db, cursor):
    _app(cursor)
    _jobs(cursor, 1, 2)
    sid = _session(cursor)
    assert len(leases.claim(cursor, sid, 2, serial=True, max_nodes=1)) == 2  # p0 emptied
    writer, refresher = connect(db), connect(db)
    try:
        wcur, rcur = writer.cursor(), refresher.cursor()
        wcur.execute(f"UPDATE {JOB} SET priority = 50 WHERE workflow = 'p0' AND name = 'p0-1'")
        leases.release(wcur, sid)  # not committed: its bucket is held shared
        assert claim_sql.refresh_workflows(rcur, ["p0"]) == 0  # skipped, not waited for
        refresher.commit()
        writer.commit()
        assert _stored(cursor)["p0"] == [-50, 1, -2]  # lowered by the release
        assert claim_sql.refresh_workflows(rcur, ["p0"]) == 0  # and now true
        refresher.commit()
        got = leases.claim(cursor, sid, 1, serial=True, max_nodes=1, wf_filter="p0")
        assert [r["name"] for r in got] == ["p0-1"]
    finally:
        writer.close()
        refresher.close()


def test_claimers_releasing_each_others_workflows_neither_wait_nor_leave_a_late_key(db, cursor):
    # each claim's refresh runs at its commit, so neither holds a lock bucket while the other
    # releases jobs of the same workflows (in the claim's transaction, that was a deadlock)
    _app(cursor)
    _jobs(cursor, 60, 3)
    first, second = connect(db), connect(db)
    try:
        c1, c2 = first.cursor(), second.cursor()
        s1, s2 = _session(c1), _session(c2)
        first.commit()
        second.commit()
        a = leases.claim(c1, s1, 40, serial=True, max_nodes=1, wf_filter="p")
        b = leases.claim(c2, s2, 40, serial=True, max_nodes=1, wf_filter="p")
        assert a and b
        leases.release(c1, s1, [r["job_id"] for r in a[::2]])
        leases.release(c2, s2, [r["job_id"] for r in b[::2]])
        first.commit()
        second.commit()
    finally:
        first.close()
        second.close()
    assert _early(cursor)


def test_a_filtered_claim_drops_the_emptied_workflows_it_read(db, cursor):
    # an unfiltered claim empties the 10 best workflows (their names stay, keys early); the
    # next filtered claim reads them among its candidates, finds no row, and drops them at its
    # commit, so they stop taking candidates' places
    _app(cursor)
    _jobs(cursor, 100, 1)
    sid = _session(cursor)
    emptied = {r["workflow"] for r in leases.claim(cursor, sid, 10, serial=True, max_nodes=1)}
    assert len(emptied) == 10 and emptied <= set(_stored(cursor))
    expected = _remaining_top(cursor, "p", 5)
    got = leases.claim(cursor, sid, 5, serial=True, max_nodes=1, wf_filter="p")
    assert [r["job_id"] for r in got] == expected
    assert not emptied & set(_stored(cursor))
    assert _early(cursor)
