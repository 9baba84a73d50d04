"""A launcher's workflow filter, time limit or tag filter claims the right jobs without reading
the other jobs (issue 16, session 17): the claimable workflows are listed by a loose index scan
and each matching one is read in the claim order (migration 0020); a time limit reads the claim
index group by group from the longest job that fits; a tag filter is planned per call, a rare
tag read from ``job_claim_tags`` (``balsam.core.claim_sql``). Real PostgreSQL; the claims run
as the launcher runs them (prepared with the generic plan; tag filters planned per call)."""
from __future__ import annotations

import json

import pytest

from balsam.core import bulk, launcher_moves, leases, schema
from balsam.core.states import State
from balsam.db.connect import connect

pytestmark = pytest.mark.slow  # each test copies ~5,000 jobs and analyzes (~1-3 s)

BIG = 5_000


def _row(name, workflow, **fields):
    return schema.new_job_row({"name": name, "workflow": workflow, "application": "app",
                               "state": "PREPROCESSED", **fields})


@pytest.fixture
def skewed(db, cursor):
    """A big workflow of BIG claimable jobs ahead in the claim order (60 min), 20 small ones
    of 5 jobs, "rare": 10 claimable jobs last in the claim order (5 min, priorities 0-1, tag
    campaign=rare; the big ones' tag: site=main;
    ``rare-done`` and ``idle``: finished jobs only), four-node jobs of "rare" for MPI mode."""
    cursor.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, preprocess, "
                   "envscript, postprocess) VALUES ('app', '', 'true', '', '', '')")
    rows = [_row(f"b{i}", "big", wall_time_minutes=60, tags={"site": "main"})
            for i in range(BIG)]
    rows += [_row(f"s{i}", f"small{i % 20}", wall_time_minutes=30) for i in range(100)]
    rows += [_row(f"r{i}", "rare", wall_time_minutes=5, priority=i % 2,
                  tags={"campaign": "rare"}) for i in range(10)]
    rows += [_row(f"m{i}", "rare", wall_time_minutes=5, num_nodes=4) for i in range(3)]
    rows += [_row(f"f{i}", wf, state="JOB_FINISHED") for i in range(50)
             for wf in ("idle", "rare-done")]
    bulk.copy_jobs(cursor, rows)
    cursor.execute(f"ANALYZE {schema.JOB_TABLE}")
    cursor.execute(f"SELECT job_id::text, workflow, num_nodes, priority FROM {schema.JOB_TABLE}"
                   " WHERE workflow = 'rare' AND state = 'PREPROCESSED'")
    return cursor.fetchall()


def _session(cur, mode="serial"):
    return leases.open_session(cur, hostname="h", pid=1, job_mode=mode, num_nodes=8,
                               lease_seconds=60)


def test_a_rare_workflows_claim_gets_its_jobs_in_claim_order(skewed, db):
    rare_serial = {j for j, _, nodes, _ in skewed if nodes == 1}
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = _session(cur)
        got = leases.claim(cur, sid, 125, serial=True, max_nodes=1, wf_filter="rare")
        conn.commit()
        assert {r["job_id"] for r in got} == rare_serial  # "rare-done" has none runnable
        assert [r["priority"] for r in got] == [1] * 5 + [0] * 5
        for wf in ("idle", "nosuch"):  # no runnable job: nothing, nothing held
            assert leases.claim(cur, sid, 125, serial=True, max_nodes=1, wf_filter=wf) == []
        mpi = _session(cur, "mpi")
        got = leases.claim(cur, mpi, 2, serial=False, max_nodes=8, wf_filter="are")
        assert [r["num_nodes"] for r in got] == [4, 4]  # "contains", largest first
        conn.commit()
        cur.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE session_id IS NOT NULL")
        assert cur.fetchone()[0] == 12
    finally:
        conn.close()


def test_a_filter_matching_several_workflows_merges_them_in_claim_order(skewed, db):
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = _session(cur)
        got = leases.claim(cur, sid, 7, serial=True, max_nodes=1, wf_filter="small1")
        # small1, small10..small19: 11 workflows of 5; all 30 min, priority 0
        assert len(got) == 7 and {r["workflow"] for r in got} <= {
            "small1", *(f"small1{k}" for k in range(10))}
        conn.commit()
        cur.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE session_id = %s", [sid])
        assert cur.fetchone()[0] == 7  # rows locked beyond the limit are not held
        got = leases.claim(cur, sid, 500, serial=True, max_nodes=1, wf_filter="small1")
        assert len(got) == 55 - 7
        big = leases.claim(cur, sid, 3, serial=True, max_nodes=1, wf_filter="i")
        assert [r["workflow"] for r in big] == ["big"] * 3  # ("idle" has none runnable)
    finally:
        conn.close()


def concurrent_claims(db, limit: int, wf_filter: str) -> tuple[list, list]:
    """Two launchers' sessions (connections of their own) claim ``limit`` jobs of
    ``wf_filter`` one after the other, the first's transaction still open during the second's
    claim; both committed. Their claims."""
    first, second = connect(db), connect(db)
    try:
        c1, c2 = first.cursor(), second.cursor()
        s1, s2 = _session(c1), _session(c2)
        first.commit()
        second.commit()
        a = leases.claim(c1, s1, limit, serial=True, max_nodes=1, wf_filter=wf_filter)
        b = leases.claim(c2, s2, limit, serial=True, max_nodes=1, wf_filter=wf_filter)
        first.commit()
        second.commit()
        return a, b
    finally:
        first.close()
        second.close()


def test_concurrent_claims_of_one_workflow_pass_each_other(skewed, db):
    a, b = concurrent_claims(db, 4, "rare")
    assert len(a) == len(b) == 4 and not {r["job_id"] for r in a} & {r["job_id"] for r in b}


def test_a_cycle_with_a_workflow_filter_claims_the_rare_jobs(skewed, db):
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = _session(cur, "mpi")
        moved, rows = leases.cycle(cur, sid, [], 20, serial=False, max_nodes=8,
                                   wf_filter="rare")
        assert moved == [] and {r["job_id"] for r in rows} == {j for j, *_ in skewed}
        first = rows[0]["job_id"]
        moved, rows = leases.cycle(cur, sid, [(first, State.RUNNING, "")], 5, serial=False,
                                   max_nodes=8, wf_filter="rare")
        assert moved == [(first, "PREPROCESSED", "RUNNING")] and rows == []
        moved, rows = leases.cycle(cur, sid, [(first, State.RUN_DONE, "")], 5, serial=False,
                                   max_nodes=8, tags={"site": "main"},  # planned per call
                                   max_wall_minutes=90.0)
        assert moved == [(first, "RUNNING", "RUN_DONE")] and len(rows) == 5
        assert {r["workflow"] for r in rows} == {"big"}
        conn.commit()
    finally:
        conn.close()


def _job_rows_read(plan: dict) -> float:
    """Rows the plan's scans of the job table read (filtered ones too), the update's excepted
    (a per-loop average times the loops)."""
    if plan["Node Type"] == "ModifyTable":
        return 0.0
    total = 0.0
    if plan.get("Relation Name") == schema.JOB_TABLE:
        total += (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)) * plan[
            "Actual Loops"]
    return total + sum(_job_rows_read(p) for p in plan.get("Plans", ()))


def generic_claim_plan(cur, sid: int, limit: int, **filters) -> dict:
    """EXPLAIN ANALYZE of a claim as ``leases.claim`` runs it (prepared, generic plan)."""
    sql, params, _ = leases._claim_sql(sid, limit, **{"wf_filter": None, "exclude_ids": (),
                                                      "max_wall_minutes": None, **filters})
    text = f"WITH {sql} SELECT * FROM c_upd"
    name = leases._prepared_name("t_claim", text)
    run, prepare = launcher_moves._prepared_texts(name, text)
    cur.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = %s", [name])
    if not cur.fetchone()[0]:
        cur.execute(prepare.split("; EXECUTE")[0])
    cur.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + run, params)
    (doc,) = cur.fetchone()
    return (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]


@pytest.mark.parametrize("serial", [True, False])
def test_the_generic_plan_of_a_rare_workflows_claim_does_not_read_the_big_one(skewed, db,
                                                                             serial):
    conn = connect(db)
    try:
        cur = conn.cursor()
        plan = generic_claim_plan(cur, _session(cur), 125, serial=serial, max_nodes=8,
                             wf_filter="rare", max_wall_minutes=10.0)
        assert plan["Actual Rows"] == (10 if serial else 13)
        # the loose scan's one row per claimable workflow (22) and the rare jobs, not BIG
        assert _job_rows_read(plan) <= 22 + 2 + 13, plan
        conn.rollback()
    finally:
        conn.close()


@pytest.mark.parametrize("serial", [True, False])
def test_a_time_limit_claim_reads_only_the_jobs_that_fit(skewed, db, serial):
    # 10 minutes left: only "rare"'s 5-minute jobs fit, last in the claim order behind BIG
    # 60-minute ones; 45 minutes: the 30-minute small workflows' jobs, 100 of them.
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = _session(cur)
        conn.commit()
        plan = generic_claim_plan(cur, sid, 125, serial=serial, max_nodes=8, max_wall_minutes=10.5)
        assert plan["Actual Rows"] == (10 if serial else 13)
        assert _job_rows_read(plan) <= 6 + 13, plan  # a few group probes and the rows taken
        conn.rollback()
        plan = generic_claim_plan(cur, sid, 20, serial=serial, max_nodes=8, max_wall_minutes=45)
        assert plan["Actual Rows"] == 20 and _job_rows_read(plan) <= 6 + 20, plan
        conn.rollback()
        got = leases.claim(cur, sid, 125, serial=serial, max_nodes=8, max_wall_minutes=10.5)
        assert sorted(r["wall_time_minutes"] for r in got) == [5] * (10 if serial else 13)
        assert [r["priority"] for r in got][:5] == [1] * 5  # claim order: priority first
        conn.commit()
    finally:
        conn.close()


def _planned_per_call(cur, sid: int, limit: int, **filters) -> dict:
    """EXPLAIN ANALYZE of a tag-filtered claim as ``leases.claim`` runs it (not prepared)."""
    sql, params, _ = leases._claim_sql(sid, limit, **{"wf_filter": None, "exclude_ids": (),
                                                      "max_wall_minutes": None, **filters})
    cur.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) WITH {sql} SELECT * FROM c_upd", params)
    (doc,) = cur.fetchone()
    return (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]


@pytest.mark.parametrize("serial", [True, False])
def test_a_rare_tags_claim_reads_its_jobs_and_a_common_tags_reads_the_claim_order(skewed, db,
                                                                                 serial):
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = _session(cur)
        conn.commit()
        rare = {"campaign": "rare"}
        plan = _planned_per_call(cur, sid, 125, serial=serial, max_nodes=8, tags=rare,
                                 max_wall_minutes=120.0)
        assert plan["Actual Rows"] == 10 and _job_rows_read(plan) <= 10, plan  # job_claim_tags
        conn.rollback()
        plan = _planned_per_call(cur, sid, 20, serial=serial, max_nodes=8,
                                 tags={"site": "main"}, max_wall_minutes=120.0)
        # the claim order: "rare"'s 5 jobs of priority 1 (and in MPI mode its 3 four-node
        # ones) come first, filtered out, then BIG's
        ahead = 5 if serial else 8
        assert plan["Actual Rows"] == 20 and _job_rows_read(plan) <= ahead + 20, plan
        conn.rollback()
        got = leases.claim(cur, sid, 125, serial=serial, max_nodes=8, tags=rare,
                           max_wall_minutes=120.0)
        assert sorted(r["name"] for r in got) == sorted(f"r{i}" for i in range(10))
        assert [r["priority"] for r in got] == [1] * 5 + [0] * 5
        conn.commit()
    finally:
        conn.close()
