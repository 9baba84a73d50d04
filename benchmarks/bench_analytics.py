"""Benchmark: every ``balsam.core.analytics`` report over 1,000,000 jobs with realistic histories.

The campaign (seeded): jobs created over ~10 hours in three workflows and two apps; 80% serial
(packing 1-16), 20% MPI (2-128 nodes); 5-600 s runs under 20 launcher sessions. 90% finish
(PREPROCESSED, RUNNING, RUN_DONE, JOB_FINISHED); 4% fail (RUN_ERROR with one of a dozen
messages, FAILED); 3% fail once then succeed (RUN_ERROR, RESTART_READY, RUNNING, RUN_DONE,
JOB_FINISHED); 3% are still running or waiting. About 4.4 events per job. Jobs and events are
loaded with ``COPY``, in chunks whose events are sorted by time (ids follow time, as when a real
launcher writes them), then ``VACUUM ANALYZE`` (the steady state autovacuum reaches).

Each report runs ``--rounds`` times on a plain psycopg2 cursor; the median is printed. Goal
(issue 6): each < 2 s.

Run: ``python benchmarks/bench_analytics.py [-n 1000000] [--rounds 3]``
"""
from __future__ import annotations

import argparse
import datetime
import io
import os
import random
import statistics
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line, throwaway_db  # noqa: E402

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
CHUNK = 50_000
NULL = "\\N"  # COPY text
ERRORS = [f"exit code {c}: {what}" for c in (1, 2, 137) for what in
          ("segfault", "out of memory", "input missing", "bad config")]


def _ts(seconds: float) -> str:
    return (T0 + datetime.timedelta(seconds=seconds)).isoformat()


def history(rng: random.Random, created: float) -> list[tuple[float, str, str, str]]:
    """[(time, from, to, message)] of one job created at ``created``, and its final state."""
    t = created + rng.uniform(0.1, 5)
    ev = [(t, "CREATED", "PREPROCESSED", "")]
    fate = rng.random()
    if fate > 0.97:
        return ev if fate > 0.985 else ev + [(t + 30, "PREPROCESSED", "RUNNING",
                                             f"launcher session {rng.randint(1, 20)} on nid1")]
    start = t + rng.uniform(1, 120)
    run = rng.uniform(5, 600)
    ev.append((start, "PREPROCESSED", "RUNNING", f"launcher session {rng.randint(1, 20)} on nid1"))
    if fate < 0.90:
        return ev + [(start + run, "RUNNING", "RUN_DONE", ""),
                     (start + run + rng.uniform(0.1, 3), "RUN_DONE", "JOB_FINISHED", "")]
    msg = rng.choice(ERRORS)
    ev.append((start + run, "RUNNING", "RUN_ERROR", msg))
    if fate < 0.94:
        return ev + [(start + run + 1, "RUN_ERROR", "FAILED", msg)]
    again = start + run + rng.uniform(5, 60)
    return ev + [(start + run + 1, "RUN_ERROR", "RESTART_READY", ""),
                 (again, "RESTART_READY", "RUNNING", f"launcher session {rng.randint(1, 20)} on nid2"),
                 (again + run, "RUNNING", "RUN_DONE", ""),
                 (again + run + 1, "RUN_DONE", "JOB_FINISHED", "")]


def load(conn: Any, n: int, seed: int = 6) -> int:
    """COPY ``n`` jobs and their events as the state writer records them (each event with the
    time its job entered ``from_state``, a run's end with its nodes; each job with the time it
    entered its state); returns the number of events."""
    from balsam.core import bulk, copyfmt, schema

    columns = bulk.COLUMNS + schema.JOB_STATE_COLUMNS
    rng = random.Random(seed)
    spacing = 36_000 / n
    nevents = 0
    with conn.cursor() as cur:
        for lo in range(0, n, CHUNK):
            rows, events = [], []
            for i in range(lo, min(n, lo + CHUNK)):
                serial = rng.random() < 0.8
                row = schema.new_job_row({
                    "workflow": rng.choice(("physics", "chemistry", "bio")),
                    "application": "simA" if rng.random() < 0.7 else "simB", "name": f"j{i}",
                    "num_nodes": 1 if serial else rng.randint(2, 128),
                    "ranks_per_node": 1 if serial else 64,
                    "node_packing_count": rng.randint(1, 16) if serial else 1})
                created = i * spacing
                row["created_at"] = T0 + datetime.timedelta(seconds=created)
                hist = history(rng, created)
                row["state"] = hist[-1][2]
                row["state_since"] = T0 + datetime.timedelta(seconds=hist[-1][0])
                rows.append(row)
                jid = str(row["job_id"])
                nodes = (1 / row["node_packing_count"] if row["num_nodes"] == 1
                         and row["ranks_per_node"] == 1 else row["num_nodes"])
                entered = [created] + [t for t, _, _, _ in hist[:-1]]
                events += [(t, jid, a, b, m, e, nodes if a == "RUNNING" else None)
                           for (t, a, b, m), e in zip(hist, entered)]
            bulk.normalize_rows(rows)
            cur.copy_expert(f"COPY {schema.JOB_TABLE} ({', '.join(columns)}) FROM STDIN",
                            io.BytesIO(copyfmt.encode_dicts(rows, columns, 0, len(rows))))
            events.sort()
            text = "".join(f"{j}\t{_ts(t)}\t{a}\t{b}\t{m}\t{_ts(e)}\t{NULL if w is None else w}\n"
                           for t, j, a, b, m, e, w in events)
            cur.copy_expert(f"COPY {schema.EVENT_TABLE} (job_id, timestamp, from_state, to_state, "
                            "message, entered_at, nodes) FROM STDIN", io.StringIO(text))
            nevents += len(events)
            conn.commit()
            print(f"\r# loaded {min(n, lo + CHUNK):,} jobs, {nevents:,} events", end="", flush=True)
    print()
    conn.autocommit = True
    with conn.cursor() as cur:
        t0 = time.perf_counter()
        cur.execute("VACUUM ANALYZE")
        print(f"# VACUUM ANALYZE {time.perf_counter() - t0:.1f} s")
    return nevents


def reports() -> list[tuple[str, Callable[[Any], Any]]]:
    from balsam.core import analytics as a
    from balsam.core.analytics import Filters

    hour = Filters(since=T0 + datetime.timedelta(hours=4), until=T0 + datetime.timedelta(hours=5))
    return [
        ("throughput", lambda c: a.throughput(c)),
        ("throughput --wf physics", lambda c: a.throughput(c, Filters(workflow="physics"))),
        ("throughput, one hour", lambda c: a.throughput(c, hour)),
        ("utilization", lambda c: a.utilization(c)),
        ("utilization --wf physics", lambda c: a.utilization(c, Filters(workflow="physics"))),
        ("errors", lambda c: a.errors(c)),
        ("errors, one hour", lambda c: a.errors(c, hour)),
        ("runtime_stats", lambda c: a.runtime_stats(c)),
        ("runtime_stats --app simB", lambda c: a.runtime_stats(c, Filters(app="simB"))),
        ("job_runtimes (top 20)", lambda c: a.job_runtimes(c, limit=20)),
        ("state_times", lambda c: a.state_times(c)),
        ("state_times --wf physics", lambda c: a.state_times(c, Filters(workflow="physics"))),
        ("runtime_stats --session 3", lambda c: a.runtime_stats(c, Filters(session=3))),
        ("summary", lambda c: a.summary(c, Filters(until=T0 + datetime.timedelta(hours=10)))),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="jobs (default 1000000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each report (default 3)")
    args = parser.parse_args()
    print(machine_line())
    with throwaway_db() as path:
        from balsam.core import schema
        from balsam.db.connect import connect

        conn = connect(path)
        t0 = time.perf_counter()
        nev = load(conn, args.n)
        print(f"# {args.n:,} jobs, {nev:,} events loaded in {time.perf_counter() - t0:.0f} s")
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {schema.SESSION_TABLE} (id, hostname, pid, job_mode, label, "
                        "scheduler_id, num_nodes, started_at, heartbeat, lease_seconds, ended_at, "
                        "end_reason) VALUES (3, 'nid1', 1, 'mpi', '', '', 128, %s, %s, 60, NULL, '')",
                        [T0, T0])
            worst = 0.0
            for name, fn in reports():
                times = []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    fn(cur)
                    times.append(time.perf_counter() - t)
                med = statistics.median(times)
                worst = max(worst, med)
                print(f"{name:<28} median {med:6.3f} s   (runs: {', '.join(f'{x:.3f}' for x in times)})")
        conn.close()
    print(f"slowest report: {worst:.3f} s   (goal < 2 s each)")


if __name__ == "__main__":
    main()
