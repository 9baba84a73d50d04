"""Benchmark: the processing pass (issue 4).

A. 10,000 jobs with no parents, scripts or staging, from CREATED to runnable (PREPROCESSED)
   through ``transitions.advance`` in committed transactions. Goal: >= 5,000 jobs/s.
B. A 10,000-job binary tree made ready level by level: each level is recorded JOB_FINISHED
   through the state writer (which queues the children in ``core_jobwake``), then ``advance``
   runs until the next level is runnable. Time per edge, with the tree alone in a DB of 10,000,
   100,000 and 1,000,000 jobs. Goal: flat. The filler is 80% JOB_FINISHED and 20%
   AWAITING_PARENTS jobs whose parent never finishes, so a check that scanned waiting jobs would
   show it.

Run: ``python benchmarks/bench_processing.py [--sizes 10000,100000,1000000] [--rounds 3]``
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line, throwaway_db  # noqa: E402

TREE = 10_000


def _connect(db: str):
    from balsam.db import connect

    return connect.connect(db, "balsam-bench")


def _truncate(conn) -> None:
    from balsam.core import schema

    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE {schema.JOB_TABLE}, {schema.EVENT_TABLE}, {schema.DEP_TABLE}, "
                    f"{schema.WAKE_TABLE}, {schema.APP_TABLE} CASCADE")
        cur.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, preprocess, "
                    "envscript, postprocess) VALUES ('app', '', 'true', '', '', '')")
    conn.commit()


def _insert(conn, specs: list[dict]) -> list[str]:
    from balsam.core import bulk, schema

    rows = [schema.new_job_row({"workflow": "bench", "application": "app", **s}) for s in specs]
    with conn.cursor() as cur:
        bulk.copy_jobs(cur, rows)
    conn.commit()
    return [str(r["job_id"]) for r in rows]


def _advance_until(conn, done) -> tuple[float, int]:
    from balsam.processing import transitions

    passes, spent = 0, 0.0
    while True:
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            transitions.advance(cur)
        conn.commit()
        spent += time.perf_counter() - t0
        passes += 1
        if done():
            return spent, passes


def _count(conn, sql: str, params=None) -> int:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        (n,) = cur.fetchone()
    conn.commit()
    return int(n)


def bench_ready(conn, n: int) -> float:
    from balsam.core import schema

    _truncate(conn)
    _insert(conn, [{"name": f"j{i}"} for i in range(n)])
    spent, passes = _advance_until(conn, lambda: _count(
        conn, f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE state = 'CREATED'") == 0)
    ready = _count(conn, f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE state = 'PREPROCESSED'")
    assert ready == n, ready
    print(f"A  {n} jobs CREATED -> PREPROCESSED: {spent * 1000:.0f} ms in {passes} passes = "
          f"{n / spent:,.0f} jobs/s")
    return n / spent


def _filler(conn, size: int) -> None:
    """``size - TREE`` jobs: 80% JOB_FINISHED, 20% waiting on a parent that is RUNNING."""
    from balsam.core import bulk, schema

    count = max(0, size - TREE)
    waiting = count // 5
    done = count - waiting - 1
    for start in range(0, done, 200_000):
        _insert(conn, [{"name": f"f{i}", "state": "JOB_FINISHED"}
                       for i in range(start, min(done, start + 200_000))])
    if waiting:
        (blocker,) = _insert(conn, [{"name": "blocker", "state": "RUNNING"}])
        ids = _insert(conn, [{"name": f"w{i}", "state": "AWAITING_PARENTS"}
                             for i in range(waiting)])
        with conn.cursor() as cur:
            bulk.insert_edges(cur, [(blocker, c) for c in ids])
            cur.execute(f"TRUNCATE {schema.WAKE_TABLE}")
            cur.execute("ANALYZE")
        conn.commit()


def bench_tree(conn, size: int) -> float:
    from balsam.core import bulk, lifecycle, schema

    _truncate(conn)
    _filler(conn, size)
    ids = _insert(conn, [{"name": f"t{i}"} for i in range(TREE)])
    with conn.cursor() as cur:
        bulk.insert_edges(cur, [(ids[(i - 1) // 2], ids[i]) for i in range(1, TREE)])
    conn.commit()
    total = _count(conn, f"SELECT count(*) FROM {schema.JOB_TABLE}")
    # Untimed: the tree's CREATED pass (root runnable, the rest waiting).
    _advance_until(conn, lambda: _count(
        conn, f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE state = 'CREATED'") == 0)
    level, spent, writes, passes = [ids[0]], 0.0, 0.0, 0
    while level:
        t0 = time.perf_counter()
        with conn.cursor() as cur:
            for state in ("RUNNING", "RUN_DONE", "JOB_FINISHED"):
                lifecycle.transition(cur, level, state)
        conn.commit()
        writes += time.perf_counter() - t0
        nxt = _next_level(ids, level)
        if not nxt:
            break
        took, p = _advance_until(conn, lambda nxt=nxt: _count(
            conn, f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE job_id = ANY(%s::uuid[]) "
            "AND state = 'PREPROCESSED'", [nxt]) == len(nxt))
        spent += took
        passes += p
        level = nxt
    edges = TREE - 1
    print(f"B  DB {total:>9,} jobs: {edges} edges made ready in {spent * 1000:6.0f} ms "
          f"({passes} passes) = {spent / edges * 1e6:6.1f} us/edge; finishing writes "
          f"{writes / TREE * 1e6:5.1f} us/job")
    return spent / edges


_POS: dict[str, int] = {}


def _next_level(ids: list[str], level: list[str]) -> list[str]:
    if not _POS or len(_POS) != len(ids) or next(iter(_POS)) != ids[0]:
        _POS.clear()
        _POS.update((j, i) for i, j in enumerate(ids))
    out = []
    for j in level:
        i = _POS[j]
        out += [ids[c] for c in (2 * i + 1, 2 * i + 2) if c < len(ids)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(machine_line())
    with throwaway_db() as db:
        conn = _connect(db)
        rates = [bench_ready(conn, TREE) for _ in range(args.rounds)]
        print(f"A  median {statistics.median(rates):,.0f} jobs/s (goal >= 5,000)")
        per_edge = {}
        for size in (int(s) for s in args.sizes.split(",")):
            per_edge[size] = statistics.median(bench_tree(conn, size) for _ in range(args.rounds))
        base = per_edge[min(per_edge)]
        for size, t in per_edge.items():
            print(f"B  median per edge at {size:>9,} jobs: {t * 1e6:6.1f} us "
                  f"({t / base:.2f}x the smallest DB; goal: flat)")
        conn.close()


if __name__ == "__main__":
    main()
