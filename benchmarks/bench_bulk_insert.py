"""Benchmark: 100,000 jobs through ``BalsamJob.objects.bulk_create`` vs a raw psycopg2 COPY.

Goal: the API rate is >= 0.95 of the raw rate (issue 16; issue 2 asked 0.8). Printed, not
asserted.

The API timing includes constructing the 100,000 ``BalsamJob`` objects. The raw baseline loads
the same rows (same columns, a fresh UUID per job) with ``COPY ... FROM STDIN``, and its timing
includes building the rows in plain Python as tuples of text values joined into tab-separated
lines (no escaping: a careful loader that knows its values needs none). After one untimed
warm-up of each, the two alternate for ``--rounds`` rounds, truncating the table before each;
every run is committed.

On a loaded machine the wall times swing 2x from round to round, so each round also prints the
CPU seconds of both sides of each path: this process (``time.process_time``) and the server
backend serving it (``/proc/<pid>/stat`` of ``pg_backend_pid()``; the server is local). Work is
what the load does not change: the "CPU-bound estimate" at the end is the wall time an idle
machine with a core for each side would give. Both paths first prepare in Python alone
(constructing the objects, building the text), then stream while the server stores, so each is
estimated as that preparation plus the larger of the rest of its client CPU and its server CPU.

Run: ``python benchmarks/bench_bulk_insert.py [-n 100000] [--rounds 5] [--profile]``
"""
from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import os
import pstats
import statistics
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line, throwaway_db  # noqa: E402

CPU: dict[str, list[float]] = {"api": [], "raw": []}
"""Process CPU seconds of each timed construct/build step (less sensitive to other processes on
a loaded machine than the wall time)."""
TICK = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float:
    """CPU seconds (user + system) the server process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def backend_pid(cursor) -> int:
    cursor.execute("SELECT pg_backend_pid()")
    return int(cursor.fetchone()[0])


def api_insert(n: int) -> float:
    """Construct ``n`` jobs and bulk_create them; returns the seconds spent constructing."""
    from balsam.core.models import BalsamJob

    t0, c0 = time.perf_counter(), time.process_time()
    jobs = [BalsamJob(name=f"job{i}", workflow="bench", application="app", args=f"--input {i}")
            for i in range(n)]
    built = time.perf_counter() - t0
    CPU["api"].append(time.process_time() - c0)
    BalsamJob.objects.bulk_create(jobs)
    return built


def raw_insert(conn, n: int) -> float:
    """The careful raw baseline: plain tuples of text, tab-joined, one COPY, commit; returns
    the seconds spent building the text."""
    from balsam.core import schema

    t0, c0 = time.perf_counter(), time.process_time()

    columns = ["job_id", "created_at", "tick", "queued_launch_id"] + list(schema.JOB_DEFAULTS)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    rows = [
        (str(uuid.uuid4()), now, now, "\\N", "bench", f"job{i}", "", "", "", "", "", "",
         "1", "1", "0", "1", "none", "1", "1", "1", "", "", "app", f"--input {i}", "",
         "t", "f", "f", "t", "CREATED", "{}", "{}", "{}", "-1", "0", "0")
        for i in range(n)
    ]
    assert len(rows[0]) == len(columns), "the raw rows do not match the job table's columns"
    text = "\n".join(["\t".join(r) for r in rows]) + "\n"
    built = time.perf_counter() - t0
    CPU["raw"].append(time.process_time() - c0)
    with conn.cursor() as cur:
        cur.copy_expert(f"COPY {schema.JOB_TABLE} ({', '.join(columns)}) FROM STDIN", io.StringIO(text))
    conn.commit()
    return built


def truncate(conn) -> None:
    from balsam.core import schema

    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE {schema.EVENT_TABLE}, {schema.DEP_TABLE}, {schema.JOB_TABLE} CASCADE")
        cur.execute("CHECKPOINT")
    conn.commit()


def count(conn) -> int:
    from balsam.core import schema

    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {schema.JOB_TABLE}")
        return cur.fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="jobs per run (default 100000)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each path (default 5)")
    parser.add_argument("--profile", action="store_true",
                        help="also print a cProfile of one API run (not timed)")
    args = parser.parse_args()
    print(machine_line())
    with throwaway_db() as path:
        from balsam.core import copyfmt
        from balsam.core.models import ApplicationDefinition
        from balsam.db.connect import connect

        print(f"# COPY kernel: {copyfmt.KERNEL}")
        conn = connect(path)
        ApplicationDefinition.objects.create(name="app", executable="echo")  # jobs need it; opens
        # Django's connection outside the timings
        for run in (lambda: api_insert(args.n), lambda: raw_insert(conn, args.n)):
            truncate(conn)
            run()  # warm-up, not timed: the first 100k-object run pays for growing the heap
        from django.db import connection

        with connection.cursor() as django_cur, conn.cursor() as raw_cur:
            backends = {"api": backend_pid(django_cur), "raw": backend_pid(raw_cur)}
        conn.commit()
        api_times: list[float] = []
        raw_times: list[float] = []
        stores: dict[str, list[float]] = {"api": [], "raw": []}  # time minus constructing/building
        client: dict[str, list[float]] = {"api": [], "raw": []}  # process CPU of the whole path
        server: dict[str, list[float]] = {"api": [], "raw": []}  # its backend's CPU
        for r in range(args.rounds):
            order = [("api", api_times), ("raw", raw_times)]
            if r % 2:
                order.reverse()
            for label, times in order:
                truncate(conn)
                s0, c0 = backend_cpu(backends[label]), time.process_time()
                t0 = time.perf_counter()
                built = api_insert(args.n) if label == "api" else raw_insert(conn, args.n)
                times.append(time.perf_counter() - t0)
                client[label].append(time.process_time() - c0)
                server[label].append(backend_cpu(backends[label]) - s0)
                stores[label].append(times[-1] - built)
                got = count(conn)
                assert got == args.n, f"{label} inserted {got} rows, not {args.n}"
                what = "constructing objects" if label == "api" else "building rows"
                print(f"round {r + 1} {label}: {times[-1]:.3f} s  ({args.n / times[-1]:,.0f} jobs/s; "
                      f"{built:.3f} s of it {what}, CPU {CPU[label][-1]:.3f} s); CPU of the "
                      f"path: client {client[label][-1]:.3f} s, server {server[label][-1]:.3f} s")
        if args.profile:
            truncate(conn)
            prof = cProfile.Profile()
            prof.runcall(api_insert, args.n)
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        conn.close()
    api, raw = statistics.median(api_times), statistics.median(raw_times)
    print(f"API  bulk_create (incl. constructing objects): median {api:.3f} s = {args.n / api:,.0f} jobs/s")
    print(f"raw  psycopg2 COPY (incl. building rows):      median {raw:.3f} s = {args.n / raw:,.0f} jobs/s")
    print(f"ratio API/raw (rate): {raw / api:.2f}   (goal >= 0.95)")
    api_store, raw_store = statistics.median(stores["api"]), statistics.median(stores["raw"])
    print(f"without constructing/building: bulk_create median {api_store:.3f} s, COPY median "
          f"{raw_store:.3f} s, ratio {raw_store / api_store:.2f}")
    rounds = args.rounds + 1  # the warm-up's CPU time is not counted
    print(f"CPU of constructing objects: median {statistics.median(CPU['api'][1:rounds]):.3f} s; "
          f"of building rows: median {statistics.median(CPU['raw'][1:rounds]):.3f} s")
    med = {k: (statistics.median(client[k]), statistics.median(server[k])) for k in client}
    for k, what in (("api", "bulk_create"), ("raw", "raw COPY")):
        print(f"CPU of the whole path, {what}: client median {med[k][0]:.3f} s, server backend "
              f"median {med[k][1]:.3f} s")
    prep = {k: statistics.median(CPU[k][1:rounds]) for k in CPU}
    api_idle, raw_idle = (prep[k] + max(med[k][0] - prep[k], med[k][1]) for k in ("api", "raw"))
    print(f"CPU-bound estimate for an idle machine: bulk_create {api_idle:.3f} s, raw "
          f"{raw_idle:.3f} s, ratio API/raw (rate) {raw_idle / api_idle:.2f}")
    print(machine_line())


if __name__ == "__main__":
    main()
