"""A workflow filter's claim lists the matching workflows from ``core_claimworkflow`` (kept by
triggers, migration 0021; read by claim key, 0022) and locks only what it claims (issue 16,
sessions 17 and 18).
Real PostgreSQL; the claims run as the launcher runs them (``leases.claim``)."""
from __future__ import annotations

import pytest
from test_claim_workflow_filter import concurrent_claims, generic_claim_plan

from balsam.core import bulk, claim_sql, leases, schema
from balsam.db.connect import connect

JOB = schema.JOB_TABLE
CLAIMABLE = "state IN ('PREPROCESSED', 'RESTART_READY') AND session_id IS NULL"


def _setup(cursor, workflows: int = 30, per: int = 10) -> list[tuple[str, str, int, int]]:
    """``workflows`` workflows "p<k>" of ``per`` serial jobs whose claim order interleaves the
    workflows (distinct priority and wall time per job), and a workflow "other"; returns the
    "p" jobs as (id, workflow, priority, wall minutes)."""
    cursor.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, preprocess, "
                   "envscript, postprocess) VALUES ('app', '', 'true', '', '', '')")
    rows = [schema.new_job_row({"name": f"j{w}-{i}", "workflow": f"p{w}", "application": "app",
                                "state": "PREPROCESSED", "priority": (w * 7 + i * 13) % 17,
                                "wall_time_minutes": 1 + w + workflows * i})
            for w in range(workflows) for i in range(per)]
    rows += [schema.new_job_row({"name": f"o{i}", "workflow": "other", "application": "app",
                                 "state": "PREPROCESSED", "priority": 99}) for i in range(5)]
    bulk.copy_jobs(cursor, rows)
    cursor.execute(f"SELECT job_id::text, workflow, priority, wall_time_minutes FROM {JOB} "
                   "WHERE workflow LIKE 'p%%'")
    return cursor.fetchall()


def _names(cursor) -> set[str]:
    cursor.execute(f"SELECT workflow FROM {claim_sql.WORKFLOWS_TABLE}")
    return {w for (w,) in cursor.fetchall()}


def _session(cur) -> int:
    return leases.open_session(cur, hostname="h", pid=1, job_mode="serial", num_nodes=1,
                               lease_seconds=60)


def test_a_claim_over_many_workflows_takes_the_top_in_order_and_locks_only_those(db, cursor):
    jobs = _setup(cursor)
    top = sorted(jobs, key=lambda j: (-j[2], -j[3]))[:25]  # claim order: priority, longest
    conn, other = connect(db), connect(db)
    try:
        cur = conn.cursor()
        sid = _session(cur)
        got = leases.claim(cur, sid, 25, serial=True, max_nodes=1, wf_filter="p")
        assert [r["job_id"] for r in got] == [j[0] for j in top]
        assert len({r["workflow"] for r in got}) > 5  # several workflows merged
        # the claim's transaction is open: every other claimable row is free to lock
        ocur = other.cursor()
        ocur.execute(f"SELECT count(*) FROM (SELECT 1 FROM {JOB} WHERE {CLAIMABLE} "
                     "FOR NO KEY UPDATE SKIP LOCKED) x")
        assert ocur.fetchone()[0] == 300 + 5 - 25
        other.rollback()
        conn.commit()
    finally:
        conn.close()
        other.close()


def test_concurrent_claims_over_many_workflows_get_disjoint_full_claims(db, cursor):
    _setup(cursor)
    a, b = concurrent_claims(db, 40, "p")
    assert len(a) == len(b) == 40
    assert not {r["job_id"] for r in a} & {r["job_id"] for r in b}
    cursor.execute(f"SELECT count(*) FROM {JOB} WHERE session_id IS NOT NULL")
    assert cursor.fetchone()[0] == 80


def test_the_workflow_list_follows_inserts_and_releases_and_the_sweep_prunes_it(db, cursor):
    _setup(cursor, workflows=3, per=2)
    assert _names(cursor) >= {"p0", "p1", "p2", "other"}
    sid = _session(cursor)
    assert len(leases.claim(cursor, sid, 10, serial=True, max_nodes=1, wf_filter="p1")) == 2
    assert "p1" not in _names(cursor)  # a filtered claim drops the names it empties
    assert len(leases.claim(cursor, sid, 2, serial=True, max_nodes=1)) == 2  # "other"'s first
    assert "other" in _names(cursor)  # an unfiltered claim writes nothing there
    leases.claim(cursor, sid, 3, serial=True, max_nodes=1)  # "other" emptied, still listed
    assert "other" in _names(cursor)
    conn = connect(db)  # the sweep prunes a bucket, in a transaction as launchers and the
    try:  # service run it; here the bucket of "other"
        assert leases.sweep(conn.cursor()) == []
        conn.commit()
        cur = conn.cursor()
        cur.execute(f"SELECT hashtext('other') & {claim_sql.LOCK_BUCKETS - 1}")
        assert claim_sql.prune_workflows(cur, bucket=cur.fetchone()[0]) >= 1
        conn.commit()
    finally:
        conn.close()
    assert "other" not in _names(cursor) and {"p0", "p2"} <= _names(cursor)
    assert leases.claim(cursor, sid, 10, serial=True, max_nodes=1, wf_filter="p1") == []
    leases.release(cursor, sid)  # claimable again: listed again, claimed again
    assert {"p1", "other"} <= _names(cursor)
    assert len(leases.claim(cursor, sid, 10, serial=True, max_nodes=1, wf_filter="p1")) == 2


def test_pruning_waits_for_no_writer_and_never_drops_a_workflow_it_makes_claimable(db, cursor):
    _setup(cursor, workflows=1, per=2)
    sid = _session(cursor)
    leases.claim(cursor, sid, 10, serial=True, max_nodes=1)  # unfiltered: p0 a stale name
    cursor.execute(f"SELECT hashtext('p0') & {claim_sql.LOCK_BUCKETS - 1}")
    bucket = cursor.fetchone()[0]
    writer, pruner = connect(db), connect(db)
    try:
        wcur, pcur = writer.cursor(), pruner.cursor()
        bulk.copy_jobs(wcur, [schema.new_job_row({"name": "late", "workflow": "p0",
                                                  "application": "app",
                                                  "state": "PREPROCESSED"})])  # not committed
        assert claim_sql.prune_workflows(pcur, bucket=bucket) >= 1  # queued, run at commit:
        pruner.commit()  # the writer holds p0's bucket, so p0 is skipped, not waited for
        assert "p0" in _names(cursor)
        writer.commit()
        claim_sql.prune_workflows(pcur, bucket=bucket)  # now sees the writer's job
        pruner.commit()
        assert "p0" in _names(cursor)
        got = leases.claim(cursor, sid, 10, serial=True, max_nodes=1, wf_filter="p0")
        assert [r["name"] for r in got] == ["late"]
    finally:
        writer.close()
        pruner.close()


def _plan_rows(plan: dict) -> tuple[float, float]:
    """(rows the plan's scans of the job table read, filtered ones too; rows they locked) --
    the update's excepted; a per-loop average times the loops."""
    if plan["Node Type"] == "ModifyTable":
        return 0.0, 0.0
    read = locked = 0.0
    if plan.get("Relation Name") == JOB:
        read = (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)) * plan["Actual Loops"]
    if plan["Node Type"] == "LockRows":
        locked = plan["Actual Rows"] * plan["Actual Loops"]
    for child in plan.get("Plans", ()):
        r, lk = _plan_rows(child)
        read, locked = read + r, locked + lk
    return read, locked


def _generic_plan(cur, sid: int, limit: int, wf: str) -> dict:
    """EXPLAIN ANALYZE of a serial claim with ``wf`` as ``leases.claim`` runs it (prepared,
    generic plan)."""
    return generic_claim_plan(cur, sid, limit, serial=True, max_nodes=1, wf_filter=wf)


def test_a_filtered_claims_plan_reads_the_matching_workflows_not_every_claimable_one(db, cursor):
    # 2,000 claimable workflows of one job each besides "p0".."p29": the claim of "p1" (p1,
    # p10..p19: 11 workflows of 10) reads each matching workflow's rows, locks what it claims
    _setup(cursor)
    bulk.copy_jobs(cursor, [schema.new_job_row({"name": f"x{i}", "workflow": f"x{i}",
                                                "application": "app", "state": "PREPROCESSED"})
                            for i in range(2000)])
    cursor.execute(f"ANALYZE {JOB}")
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = _session(cur)
        plan = _generic_plan(cur, sid, 25, "p1")
        read, locked = _plan_rows(plan)
        assert plan["Actual Rows"] == 25
        assert read <= 110 + 25, plan  # 11 workflows' 10 rows unlocked, then the 25 claimed
        assert round(locked) == 25, plan  # (per-loop averages, rounded by EXPLAIN)
        conn.rollback()
    finally:
        conn.close()


@pytest.mark.parametrize("scan_names", [claim_sql.SCAN_NAMES, 50])
@pytest.mark.parametrize("ahead", [True, False])
def test_a_filter_matching_many_workflows_reads_the_first_ones_by_key(db, cursor, ahead,
                                                                       scan_names, monkeypatch):
    # 100 workflows "c<k>" of 3 jobs ahead in the claim order (priority 5), 2,000 "x<k>" of one
    # job behind them: either filter reads the first workflows by stored key (limit + 32 at
    # most, the r-th at most limit - r + 1 rows), not one descent per matching workflow; their
    # names from a scan of the names (fewer than SCAN_NAMES match) or from the key index
    monkeypatch.setattr(claim_sql, "SCAN_NAMES", scan_names)
    cursor.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, preprocess, "
                   "envscript, postprocess) VALUES ('app', '', 'true', '', '', '')")
    rows = [schema.new_job_row({"name": f"c{k}-{i}", "workflow": f"c{k}", "application": "app",
                                "state": "PREPROCESSED", "priority": 5,
                                "wall_time_minutes": 1 + k + 100 * i})
            for k in range(100) for i in range(3)]
    rows += [schema.new_job_row({"name": f"x{k}", "workflow": f"x{k}", "application": "app",
                                 "state": "PREPROCESSED", "wall_time_minutes": 1 + k})
             for k in range(2000)]
    bulk.copy_jobs(cursor, rows)
    cursor.execute(f"ANALYZE {JOB}")
    wf, key = ("c", lambda r: (-r["priority"], -r["wall_time_minutes"])) if ahead else (
        "x", lambda r: -r["wall_time_minutes"])
    cursor.execute(f"SELECT job_id::text, priority, wall_time_minutes FROM {JOB} "
                   "WHERE workflow LIKE %s", [wf + "%"])
    expected = [j for j, *_ in sorted(cursor.fetchall(), key=lambda r: (-r[1], -r[2]))][:25]
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = _session(cur)
        conn.commit()
        plan = _generic_plan(cur, sid, 25, wf)
        read, locked = _plan_rows(plan)
        assert plan["Actual Rows"] == 25 and round(locked) == 25, plan
        # "c": 23 workflows' 3 rows, 2 of the 24th, 1 of the next 33; "x": 57 workflows' one
        assert read <= (23 * 3 + 2 + 33 + 25 if ahead else 57 + 25), plan
        conn.rollback()
        got = leases.claim(cur, sid, 25, serial=True, max_nodes=1, wf_filter=wf)
        assert [r["job_id"] for r in got] == expected
        assert got == sorted(got, key=key)
        conn.commit()
    finally:
        conn.close()
