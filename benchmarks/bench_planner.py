"""Benchmark: one planning pass (``balsam.service.planner.plan``) over 1,000,000 runnable jobs.

Goal (issue 5): planning under 1 second (issue 16: under 250 ms); the Cython packing kernel >=
20x faster than the pure-Python reference on the same input. Jobs (seeded): 80% serial
(node_packing_count 1, 2, 4, 8 or 16; 5-60 min) and 20% MPI (2-128 nodes; 10-120 min), all
PREPROCESSED, loaded with ``balsam.core.bulk.copy_jobs`` (COPY). Each timed plan runs in a
transaction that is rolled back, so every round sees the same backlog; beside it, the backlog
read the way the planner read it before migration 0009 (a GROUP BY of the jobs). Printed, not
asserted.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line, throwaway_db  # noqa: E402

SETTINGS = {"project": "bench", "queues": {
    "debug": {"min_nodes": 1, "max_nodes": 8, "min_minutes": 5, "max_minutes": 60,
              "max_queued": 1, "max_running": 1, "max_total_nodes": 8},
    "default": {"min_nodes": 1, "max_nodes": 512, "min_minutes": 10, "max_minutes": 360,
                "max_queued": 20, "max_running": 10, "max_total_nodes": 4096}}}


def load_jobs(path: str, n: int) -> float:
    from balsam.core import bulk, schema
    from balsam.db.connect import connect

    rng = random.Random(5)
    base = schema.new_job_row({"workflow": "bench", "application": "app", "state": "PREPROCESSED"})
    rows = []
    for i in range(n):
        if rng.random() < 0.8:
            shape = {"node_packing_count": rng.choice((1, 2, 4, 8, 16)),
                     "wall_time_minutes": rng.randint(5, 60)}
        else:
            shape = {"num_nodes": rng.randint(2, 128), "wall_time_minutes": rng.randint(10, 120)}
        rows.append(dict(base, job_id=bulk.uuid4(), name=f"j{i}", **shape))
    conn = connect(path)
    t0 = time.perf_counter()
    with conn, conn.cursor() as cur:
        bulk.copy_jobs(cur, rows)
        cur.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - t0


def scan_backlog(cur: Any) -> None:
    """The backlog query of the planner before migration 0009 (a GROUP BY of the jobs), for
    comparison in the same run."""
    from balsam.service import planner

    cur.execute("""
        SELECT num_nodes = 1 AND ranks_per_node = 1, num_nodes, node_packing_count,
               wall_time_minutes, count(*), priority
        FROM core_balsamjob WHERE state = ANY(%s) AND session_id IS NULL
        GROUP BY 1, 2, 3, 4, 6""", [list(planner.BACKLOG_STATES)])
    cur.fetchall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="runnable jobs (default 1000000)")
    parser.add_argument("--rounds", type=int, default=5, help="timed plans (default 5)")
    args = parser.parse_args()
    print(machine_line())
    with throwaway_db() as path:
        from balsam.db.connect import connect
        from balsam.service import packing, planner
        from balsam.service.policy import load_policies

        print(f"loaded {args.n:,} jobs in {load_jobs(path, args.n):.1f} s (COPY, not timed below)")
        conn = connect(path)
        with conn, conn.cursor() as cur:  # what the service's first cycle does after a load
            t0 = time.perf_counter()
            planner.backlog(cur)
            print(f"first fold of the load's shape counts: {(time.perf_counter() - t0) * 1000:.1f} ms")
        times, backlog_times, scan_times = [], [], []
        for r in range(args.rounds):
            with conn.cursor() as cur:
                t0 = time.perf_counter()
                scan_backlog(cur)
                scan_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                planner.backlog(cur)
                backlog_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                ids = planner.plan(cur, SETTINGS)
                times.append(time.perf_counter() - t0)
                cur.execute("SELECT queue, job_mode, nodes, wall_minutes FROM core_queuedlaunch "
                            "WHERE id = ANY(%s) ORDER BY id", [ids])
                made = cur.fetchall()
            conn.rollback()
            print(f"  round {r + 1}: plan {times[-1] * 1000:7.1f} ms, {len(ids)} batch jobs "
                  f"(backlog from the counts alone {backlog_times[-1] * 1000:.1f} ms; "
                  f"by scanning the jobs {scan_times[-1] * 1000:.1f} ms)")
        print(f"plan(): median {statistics.median(times) * 1000:.1f} ms   (goal < 250 ms, issue 16)")
        print(f"backlog by scanning the jobs (the planner before migration 0009): median "
              f"{statistics.median(scan_times) * 1000:.1f} ms")
        print("  batch jobs: " + ", ".join(f"{q}/{m} {n}x{t}min" for q, m, n, t in made[:6])
              + (" ..." if len(made) > 6 else ""))
        with conn.cursor() as cur:
            shapes = planner.backlog(cur)
        conn.close()
        policy = load_policies(SETTINGS)[1]
        for mode in planner.MODES:
            units = planner._units_per_node(shapes[mode], mode)
            w, h = planner._arrays(shapes[mode], mode, units)
            box = (policy.max_nodes * units, policy.usable_seconds(), policy.max_queued)
            kernel = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                fast = packing.pack(w, h, *box)
                kernel.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            slow = packing.pack_reference(w, h, *box)
            ref = time.perf_counter() - t0
            k = statistics.median(kernel)
            print(f"{mode}: {len(w):,} jobs into {box[2]} boxes of {policy.max_nodes} nodes x "
                  f"{box[1] // 60} min: kernel ({packing.KERNEL}) {k * 1000:.1f} ms, reference "
                  f"{ref * 1000:.1f} ms, speed-up {ref / k:.0f}x (goal >= 20x), identical "
                  f"{tuple(fast) == tuple(slow)}")


if __name__ == "__main__":
    main()
