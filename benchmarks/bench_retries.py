"""Benchmark: what counting failures only since a job's last reset costs the passes that read it.

The retry count (``balsam.core.retries.FAILURES_SQL``) is read by the processing pass (for every
RUN_ERROR/RUN_TIMEOUT job of its batch) and by the processing worker's claim (for handled
errors); the launchers' claim of runnable jobs never reads it. Since issue 13 the count skips
events before the job's newest event leaving a final state (a user's reset). This compares the
query with that condition against the same query without it (the count before), over
``-n`` jobs in RUN_TIMEOUT, each with ``--runs`` failed runs (2 events each) and, for one job
in ten, a FAILED -> READY reset after its first run; the tables are vacuumed (as autovacuum
would) before timing. Printed, not asserted.

Run: ``python benchmarks/bench_retries.py [-n 100000] [--runs 4] [--rounds 5]``
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line, throwaway_db  # noqa: E402


def fill(cur, n: int, runs: int) -> None:
    """``n`` RUN_TIMEOUT jobs, each with ``runs`` RUNNING/RUN_TIMEOUT pairs; one in ten also
    FAILED and reset to READY after its first run."""
    from balsam.core import bulk, schema

    rows = [schema.new_job_row({"name": f"j{i}", "workflow": "w", "application": "a",
                                "state": "RUN_TIMEOUT"}) for i in range(n)]
    bulk.copy_jobs(cur, rows)
    cur.execute(f"""
        INSERT INTO {schema.EVENT_TABLE} (job_id, timestamp, from_state, to_state, message)
        SELECT j.job_id, now(), e.f, e.t, 'x'
        FROM {schema.JOB_TABLE} j, generate_series(1, %s) r,
             LATERAL (VALUES ('PREPROCESSED', 'RUNNING', 0), ('RUNNING', 'RUN_TIMEOUT', 1),
                             ('RUN_TIMEOUT', 'FAILED', 2), ('FAILED', 'READY', 3)) e(f, t, k)
        WHERE e.k < 2 OR (r = 1 AND right(j.name, 1) = '0')
        ORDER BY j.job_id, r, e.k""", [runs])


def timed(cur, sql: str) -> tuple[float, list]:
    t0 = time.perf_counter()
    cur.execute(sql)
    rows = cur.fetchall()
    return time.perf_counter() - t0, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="jobs (default 100000)")
    parser.add_argument("--runs", type=int, default=4, help="failed runs per job (default 4)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each query (default 5)")
    args = parser.parse_args()
    print(machine_line())
    from balsam.core import retries, schema

    reset_clause = f"    AND e.id > COALESCE({retries.RESET_SQL}, 0)\n"
    assert reset_clause in retries.FAILURES_SQL
    variants = {"since reset": retries.FAILURES_SQL,
                "all (before)": retries.FAILURES_SQL.replace(reset_clause, "")}
    with throwaway_db() as path:
        from balsam.db.connect import connect

        conn = connect(path)
        with conn.cursor() as cur:
            t0 = time.perf_counter()
            fill(cur, args.n, args.runs)
            conn.commit()
            conn.autocommit = True
            cur.execute("VACUUM ANALYZE")
            conn.autocommit = False
            cur.execute(f"SELECT count(*) FROM {schema.EVENT_TABLE}")
            print(f"# {args.n:,} jobs, {cur.fetchone()[0]:,} events, filled in "
                  f"{time.perf_counter() - t0:.1f} s")
            # The processing pass's read: every failed job's count and limit.
            sql = {k: f"SELECT j.job_id, {v}, {retries.limit_sql(3)} FROM {schema.JOB_TABLE} j "
                      "WHERE j.state IN ('RUN_ERROR', 'RUN_TIMEOUT')" for k, v in variants.items()}
            counts = {}
            times: dict[str, list[float]] = {k: [] for k in sql}
            for r in range(args.rounds + 1):
                for label in (list(sql) if r % 2 == 0 else list(sql)[::-1]):
                    seconds, rows = timed(cur, sql[label])
                    counts[label] = sorted({int(c) for _, c, _ in rows})
                    if r:  # round 0 warms the cache
                        times[label].append(seconds)
            conn.commit()
        conn.close()
    for label, values in times.items():
        med = statistics.median(values)
        print(f"count {label:>13}: median {med:.3f} s over {args.n:,} jobs = "
              f"{1e6 * med / args.n:.2f} us/job  (distinct counts {counts[label]})")
    new, old = (statistics.median(times[k]) for k in variants)
    print(f"ratio since-reset/before (time): {new / old:.2f}")


if __name__ == "__main__":
    main()
