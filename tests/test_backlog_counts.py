"""The planner's backlog counts (migration 0012's triggers) always equal a GROUP BY of the jobs,
whatever wrote them: COPY, the ORM, claims, state moves, deletes, rollbacks, TRUNCATE."""
from __future__ import annotations

import random

from balsam.core import bulk, leases, lifecycle, schema
from balsam.db.connect import connect
from balsam.service import planner

SHAPES = [dict(num_nodes=1, node_packing_count=4, wall_time_minutes=20),
          dict(num_nodes=1, node_packing_count=1, wall_time_minutes=1),
          dict(num_nodes=1, ranks_per_node=2, wall_time_minutes=30),
          dict(num_nodes=8, wall_time_minutes=60, priority=3),
          dict(num_nodes=8, wall_time_minutes=60)]
STATES = ["CREATED", "READY", "STAGED_IN", "PREPROCESSED", "RESTART_READY", "RUNNING",
          "RUN_DONE", "JOB_FINISHED", "FAILED"]


def counted_by_scan(cur) -> dict[str, list[tuple]]:
    """The backlog as the planner computed it before the counts existed: from the jobs."""
    cur.execute(f"""
        SELECT num_nodes = 1 AND ranks_per_node = 1, num_nodes, node_packing_count,
               wall_time_minutes, count(*), priority
        FROM {schema.JOB_TABLE} WHERE state = ANY(%s) AND session_id IS NULL
        GROUP BY 1, 2, 3, 4, 6""", [list(planner.BACKLOG_STATES)])
    shapes: dict[str, list[tuple]] = {"mpi": [], "serial": []}
    for serial, nodes, npc, minutes, count, priority in sorted(cur.fetchall()):
        shapes["serial" if serial else "mpi"].append(
            (nodes, max(1, npc), max(1, minutes), count, priority))
    return shapes


def add_random_jobs(cur, rng: random.Random, n: int) -> list[str]:
    rows = [schema.new_job_row(dict(rng.choice(SHAPES), name=f"j{i}", application="a",
                                    state=rng.choice(STATES))) for i in range(n)]
    bulk.copy_jobs(cur, rows)
    return [str(r["job_id"]) for r in rows]


def test_counts_follow_every_kind_of_write_and_fold_to_one_row_per_shape(db):
    rng = random.Random(16)
    conn = connect(db)
    with conn, conn.cursor() as cur:
        ids = add_random_jobs(cur, rng, 300)
        assert planner.backlog(cur) == counted_by_scan(cur)
        assert counted_by_scan(cur)["serial"] and counted_by_scan(cur)["mpi"]
        session = leases.open_session(cur, hostname="h", pid=1, job_mode="serial", num_nodes=1,
                                      lease_seconds=60)
        leases.claim(cur, session, 20, serial=True, max_nodes=1)
        leases.claim(cur, session, 5, serial=False, max_nodes=8)
        cur.execute(f"SELECT job_id FROM {schema.JOB_TABLE} WHERE session_id = %s", [session])
        held = [str(r[0]) for r in cur.fetchall()]
        lifecycle.transition(cur, held[:10], "RUNNING", holder=session)
        lifecycle.transition(cur, held[10:], "RESTART_READY", force=True)  # released: backlog
        lifecycle.transition(cur, rng.sample(ids, 40), "FAILED", user=True)
        cur.execute(f"UPDATE {schema.JOB_TABLE} SET wall_time_minutes = wall_time_minutes + 5 "
                    "WHERE job_id = ANY(%s::uuid[])", [rng.sample(ids, 50)])
        cur.execute(f"DELETE FROM {schema.JOB_TABLE} WHERE job_id = ANY(%s::uuid[])",
                    [rng.sample(ids, 30)])
        assert planner.backlog(cur) == counted_by_scan(cur)
        cur.execute(f"SELECT count(*), count(DISTINCT (serial, num_nodes, node_packing_count, "
                    f"wall_time_minutes, priority)) FROM {planner.BACKLOG_TABLE}")
        rows, shapes = cur.fetchone()
        assert rows == shapes  # folded
    conn.close()


def test_orm_writes_and_rollbacks_are_counted_or_not_with_their_rows(db):
    from balsam.core.models import ApplicationDefinition, BalsamJob

    ApplicationDefinition.objects.create(name="a", executable="/bin/true")
    BalsamJob.objects.create(name="one", application="a", state="PREPROCESSED", num_nodes=2)
    job = BalsamJob.objects.create(name="two", application="a", state="CREATED", num_nodes=2)
    job.update_state("PREPROCESSED")
    conn = connect(db)
    with conn.cursor() as cur:
        add_random_jobs(cur, random.Random(1), 50)
        conn.rollback()
        assert planner.backlog(cur) == counted_by_scan(cur)
        assert sum(s[3] for s in planner.backlog(cur)["mpi"]) == 2
        conn.rollback()
    conn.close()


def test_a_fold_keeps_what_another_transaction_has_not_committed_yet(db):
    first, second = connect(db), connect(db)
    with first.cursor() as a, second.cursor() as b:
        add_random_jobs(a, random.Random(2), 100)
        first.commit()
        add_random_jobs(b, random.Random(3), 100)  # not committed during the fold below
        planner.backlog(a)
        first.commit()
        second.commit()
        assert planner.backlog(a) == counted_by_scan(a)
    first.close()
    second.close()


def test_truncating_the_jobs_empties_the_counts(db, cursor):
    conn = connect(db)
    with conn, conn.cursor() as cur:
        add_random_jobs(cur, random.Random(4), 50)
    conn.close()
    cursor.execute(f"TRUNCATE {schema.JOB_TABLE} CASCADE")
    cursor.execute(f"SELECT count(*) FROM {planner.BACKLOG_TABLE}")
    assert cursor.fetchone()[0] == 0
