"""What a launcher's claims and batched moves read: the rows they change, not the whole hold
or the whole job table.

A serial master at scale holds hundreds of thousands of claimed jobs under one session and
writes its starts and ends a few hundred at a time. The statistics the planner has for
``session_id`` are those of the jobs before they were claimed (all unheld), so "jobs held by
session S" looks like one row; a plan that reads the ``job_held`` index for S and joins the
requested ids to it costs the whole hold per statement. Counted in rows the plan's scans of
the job table return (EXPLAIN ANALYZE), which do not depend on the machine's load.
"""
from __future__ import annotations

import json

from launcher_support import add_app, add_jobs

from balsam.core import launcher_moves, leases, schema
from balsam.core.states import State
from balsam.db.connect import connect
from balsam.processing import transitions

HOLD = 3000
MOVED = 8


def _job_rows_read(plan: dict) -> int:
    """The most rows one scan of the job table read in all its loops, in ``plan``: those it
    returned and those its filter removed."""
    own = 0
    if plan.get("Relation Name") == schema.JOB_TABLE and "Scan" in plan["Node Type"]:
        read = (plan["Actual Rows"] + plan.get("Rows Removed by Filter", 0)
                + plan.get("Rows Removed by Index Recheck", 0))
        own = round(read * plan["Actual Loops"])
    return max([own] + [_job_rows_read(p) for p in plan.get("Plans", [])])


def test_a_move_of_a_few_held_jobs_reads_those_jobs_not_the_whole_hold(db, cursor):
    add_app(cursor, "app", "true")
    add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                      for i in range(HOLD)])
    cursor.execute(f"ANALYZE {schema.JOB_TABLE}")  # statistics of unheld jobs, as at scale
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = leases.open_session(cur, hostname="h", pid=1, job_mode="serial", num_nodes=1,
                                  lease_seconds=60)
        held = [r["job_id"] for r in leases.claim(cur, sid, HOLD, serial=True, max_nodes=1)]
        conn.commit()
        assert len(held) == HOLD
        for target in (State.RUNNING, State.RUN_DONE):
            ctes, params = launcher_moves.moves_sql(
                [(j, target, "") for j in held[:MOVED]], sid, transitions.FINISH_ON_RECORD)
            cur.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) WITH {ctes} "
                        "SELECT job_id FROM t_upd", params)
            (doc,) = cur.fetchone()
            doc = json.loads(doc) if isinstance(doc, str) else doc
            top = doc[0]["Plan"]
            assert top["Actual Rows"] == MOVED
            assert _job_rows_read(top) == MOVED, target  # not the HOLD held jobs
            conn.commit()
    finally:
        conn.close()


def test_a_claim_reads_the_jobs_it_claims_not_the_whole_job_table(db, cursor):
    add_app(cursor, "app", "true")
    add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                      for i in range(HOLD)])
    cursor.execute(f"ANALYZE {schema.JOB_TABLE}")
    claim = 2 * HOLD // 3  # a claim this big was planned as a hash join over the whole table
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = leases.open_session(cur, hostname="h", pid=1, job_mode="serial", num_nodes=1,
                                  lease_seconds=60)
        sql, params, _ = leases._claim_sql(sid, claim, serial=True, max_nodes=1,
                                           wf_filter=None, max_wall_minutes=None, exclude_ids=())
        cur.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) WITH {sql} SELECT * FROM c_upd", params)
        (doc,) = cur.fetchone()
        doc = json.loads(doc) if isinstance(doc, str) else doc
        top = doc[0]["Plan"]
        assert top["Actual Rows"] == claim
        assert _job_rows_read(top) == claim  # not HOLD
        conn.rollback()
    finally:
        conn.close()
