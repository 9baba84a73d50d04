"""The planner: runnable backlog -> exactly the batch jobs the queue policies allow, and no more."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from balsam.core import bulk, schema
from balsam.errors import BalsamError
from balsam.service import planner
from balsam.service.policy import load_policies

QL = schema.QLAUNCH_TABLE


def policy(**kw: int) -> dict[str, int]:
    base = dict(min_nodes=1, max_nodes=8, min_minutes=10, max_minutes=120, max_queued=2,
                max_running=2, max_total_nodes=16)
    base.update(kw)
    return base


def settings(**queues: dict) -> dict:
    return {"project": "proj", "queues": queues or {"q": policy()}}


def add_jobs(db: str, n: int, **values) -> None:
    from balsam.db.connect import connect

    values.setdefault("state", "PREPROCESSED")
    values.setdefault("application", "app")
    conn = connect(db)
    with conn, conn.cursor() as cur:
        bulk.copy_jobs(cur, [schema.new_job_row(dict(values, name=f"j{i}")) for i in range(n)])
    conn.close()


def run_plan(db: str, sett: dict, **kw) -> list[int]:
    from balsam.db.connect import connect

    conn = connect(db)
    try:
        with conn, conn.cursor() as cur:
            return planner.plan(cur, sett, **kw)
    finally:
        conn.close()


def rows(cursor) -> list[tuple]:
    cursor.execute(f"SELECT queue, job_mode, nodes, wall_minutes, state, project FROM {QL} ORDER BY id")
    return cursor.fetchall()


def test_mixed_serial_and_mpi_backlog_becomes_one_shrunk_batch_job_per_mode(db, cursor):
    add_jobs(db, 3, num_nodes=4, wall_time_minutes=30)
    add_jobs(db, 16, node_packing_count=4, wall_time_minutes=20)
    ids = run_plan(db, settings())
    assert len(ids) == 2
    # MPI: two 4-node jobs side by side, the third above them: 8 nodes x 60 min (+2 launcher
    # margin). Serial: 16 quarter-node jobs side by side: 4 nodes x 20 min (+2).
    assert rows(cursor) == [("q", "mpi", 8, 62, "pending-submission", "proj"),
                            ("q", "serial", 4, 22, "pending-submission", "proj")]


def test_covered_backlog_submits_nothing(db, cursor):
    add_jobs(db, 10, node_packing_count=2, wall_time_minutes=15)
    assert len(run_plan(db, settings())) == 1
    assert run_plan(db, settings()) == []
    assert len(rows(cursor)) == 1


def test_new_work_beyond_the_planned_capacity_gets_a_second_batch_job(db, cursor):
    add_jobs(db, 4, node_packing_count=1, wall_time_minutes=30)
    assert rows(cursor) == [] and len(run_plan(db, settings())) == 1
    add_jobs(db, 8, num_nodes=8, wall_time_minutes=100)
    assert len(run_plan(db, settings())) == 1
    assert [r[:4] for r in rows(cursor)] == [("q", "serial", 4, 32), ("q", "mpi", 8, 102)]


def test_fifty_cycles_without_scheduler_progress_stay_at_max_queued(db, cursor):
    add_jobs(db, 200, num_nodes=8, wall_time_minutes=110)  # far more than 2 batch jobs hold
    for _ in range(50):
        run_plan(db, settings(q=policy(max_total_nodes=64)))
    assert [r[:4] for r in rows(cursor)] == [("q", "mpi", 8, 112)] * 2


def test_max_total_nodes_caps_the_nodes_of_all_batch_jobs(db, cursor):
    add_jobs(db, 6, num_nodes=8, wall_time_minutes=110)
    run_plan(db, settings(q=policy(max_queued=5, max_running=5, max_total_nodes=20)))
    assert [r[2] for r in rows(cursor)] == [8, 8]


def test_small_backlog_is_raised_to_the_queue_minimums(db, cursor):
    add_jobs(db, 1, wall_time_minutes=1)
    run_plan(db, settings(q=policy(min_nodes=2, min_minutes=30)))
    assert [r[:4] for r in rows(cursor)] == [("q", "serial", 2, 30)]


def test_jobs_too_big_for_the_first_queue_go_to_the_next_and_unfittable_ones_are_skipped(db, cursor):
    add_jobs(db, 1, num_nodes=2, wall_time_minutes=20)
    add_jobs(db, 1, num_nodes=32, wall_time_minutes=20)
    add_jobs(db, 1, num_nodes=1000, wall_time_minutes=20)
    sett = settings(debug=policy(max_nodes=4, max_total_nodes=4),
                    big=policy(min_nodes=16, max_nodes=64, max_total_nodes=64))
    run_plan(db, sett)
    assert [r[:4] for r in rows(cursor)] == [("debug", "mpi", 2, 22), ("big", "mpi", 32, 22)]


def test_only_unheld_runnable_or_nearly_runnable_jobs_count(db, cursor):
    for state in ("CREATED", "AWAITING_PARENTS", "RUNNING", "RUN_DONE", "JOB_FINISHED", "FAILED"):
        add_jobs(db, 2, state=state, num_nodes=2)
    assert run_plan(db, settings()) == []
    add_jobs(db, 1, state="READY", num_nodes=2, wall_time_minutes=10)
    add_jobs(db, 1, state="STAGED_IN", num_nodes=2, wall_time_minutes=10)
    add_jobs(db, 1, state="RESTART_READY", num_nodes=2, wall_time_minutes=10)
    assert len(run_plan(db, settings())) == 1
    assert [r[:4] for r in rows(cursor)] == [("q", "mpi", 6, 12)]


def test_a_running_batch_job_with_little_time_left_does_not_cover_long_jobs(db, cursor):
    add_jobs(db, 1, num_nodes=4, wall_time_minutes=60)
    run_plan(db, settings())
    cursor.execute(f"UPDATE {QL} SET state = 'running', minutes_left = 5")
    assert len(run_plan(db, settings())) == 1
    cursor.execute(f"UPDATE {QL} SET state = 'finished'")
    assert len(run_plan(db, settings())) == 1  # finished rows cover nothing
    assert [r[4] for r in rows(cursor)] == ["finished", "finished", "pending-submission"]


def test_a_queue_whose_submission_failed_takes_no_new_batch_job_for_a_while(db, cursor):
    add_jobs(db, 1, num_nodes=4, wall_time_minutes=60)
    now = datetime.now(timezone.utc)
    run_plan(db, settings(), now=now)
    cursor.execute(f"UPDATE {QL} SET state = 'submit-failed', ended_at = %s", [now])
    assert run_plan(db, settings(), now=now + timedelta(seconds=60)) == []
    later = now + timedelta(seconds=planner.FAILED_QUEUE_COOLDOWN + 1)
    assert len(run_plan(db, settings(), now=later)) == 1


def test_concurrent_plans_do_not_both_cover_the_same_backlog(db, cursor):
    from balsam.db.connect import connect

    add_jobs(db, 3, num_nodes=2, wall_time_minutes=30)
    first = connect(db)
    cur = first.cursor()
    assert len(planner.plan(cur, settings())) == 1  # not committed yet: lock held
    second: list = []
    thread = threading.Thread(target=lambda: second.append(run_plan(db, settings())))
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()  # waits for the first plan's transaction
    first.commit()
    thread.join(30)
    first.close()
    assert second == [[]]
    assert len(rows(cursor)) == 1


def test_policy_errors_name_the_key_and_disabled_queues_are_left_out():
    bad = {"queues": {"q": {k: v for k, v in policy().items() if k != "max_nodes"}}}
    with pytest.raises(BalsamError, match="`queues.q`: missing key `max_nodes`"):
        load_policies(bad)
    got = load_policies(settings(off=policy(max_queued=0), on=policy()))
    assert [p.name for p in got] == ["on"]
    assert got[0].batch_minutes(5) == 10 and got[0].batch_minutes(500) == 120
    assert got[0].batch_minutes(60) == 62
