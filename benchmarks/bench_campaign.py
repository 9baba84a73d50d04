"""Benchmark: 100,000 jobs from a CSV through ``balsam job --from-file`` vs the same jobs through
``BalsamJob.objects.bulk_create``.

Goal (issue 13): the CLI rate is >= 0.5 of the API rate. Printed, not asserted.

The CSV has the columns ``x`` (a float), ``seed`` and ``num_nodes``; the CLI run is a real
subprocess (interpreter start, reading and checking the file, substitutions, one COPY, commit)::

    balsam job --name 'p{i}' --workflow camp --application sim \\
               --args '--x {x} --seed {seed}' --from-file points.csv --yes

The API side constructs the same jobs (same names, args, ``num_nodes`` and
``environ_vars=BALSAM_ARRAY_INDEX=i``) from the already-parsed values, in-process with Django
set up, and bulk_creates them; its timing includes constructing the objects. After one untimed
warm-up of each, the two alternate for ``--rounds`` rounds, truncating the table before each.

Then, once, the same CLI command on the CSV with a ``parents`` column added (each of the 100
first rows a parent of every 100th row after it, by row name): the cost of resolving names and
inserting 99,900 dependency rows in the same transaction.

Run: ``python benchmarks/bench_campaign.py [-n 100000] [--rounds 5]``
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line, throwaway_db  # noqa: E402
from bench_bulk_insert import count, truncate  # noqa: E402


def points(n: int) -> list[tuple[str, str, str]]:
    """The campaign's parameter rows (x, seed, num_nodes) as text."""
    return [(f"{0.001 * i:.3f}", str(1000 + i), str(1 + i % 4)) for i in range(n)]


def write_csv(path: str, rows: list[tuple[str, str, str]], parents: bool = False) -> None:
    """The CSV; with ``parents``, row i >= 100 has the parent ``p{i % 100}`` (a row above it)."""
    with open(path, "w") as fh:
        if not parents:
            fh.write("x,seed,num_nodes\n")
            fh.writelines(f"{x},{seed},{nodes}\n" for x, seed, nodes in rows)
            return
        fh.write("x,seed,num_nodes,parents\n")
        fh.writelines(f"{x},{seed},{nodes},{f'p{i % 100}' if i >= 100 else ''}\n"
                      for i, (x, seed, nodes) in enumerate(rows))


def cli_insert(csv_path: str) -> None:
    argv = [sys.executable, "-m", "balsam", "job", "--name", "p{i}", "--workflow", "camp",
            "--application", "sim", "--args", "--x {x} --seed {seed}", "--from-file", csv_path,
            "--yes"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        sys.exit(f"balsam job --from-file failed: {proc.stderr.strip()}")


def api_insert(rows: list[tuple[str, str, str]]) -> None:
    from balsam.core.models import BalsamJob

    BalsamJob.objects.bulk_create([
        BalsamJob(name=f"p{i}", workflow="camp", application="sim", args=f"--x {x} --seed {seed}",
                  num_nodes=int(nodes), environ_vars=f"BALSAM_ARRAY_INDEX={i}")
        for i, (x, seed, nodes) in enumerate(rows)])


def time_wait(conn, csv_path: str) -> dict[str, float]:
    """Seconds of a whole ``balsam wait --timeout 0`` (start, resolve, one count, exit 124) over
    the campaign, selected by workflow and by its 100,000 ids read from stdin."""
    truncate(conn)
    argv = [sys.executable, "-m", "balsam", "job", "--name", "p{i}", "--workflow", "camp",
            "--application", "sim", "--from-file", csv_path, "--args", "--x {x} --seed {seed}",
            "--yes", "--quiet"]
    ids = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout
    result = {}
    for what, extra, stdin in (("--wf camp", ["--wf", "camp"], None), ("- (ids on stdin)", ["-"], ids)):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "balsam", "wait", *extra, "--timeout", "0"],
                              input=stdin, capture_output=True, text=True, timeout=600)
        result[what] = time.perf_counter() - t0
        assert proc.returncode == 124, proc.stderr
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="jobs per run (default 100000)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each path (default 5)")
    args = parser.parse_args()
    print(machine_line())
    with throwaway_db() as path:
        from balsam.core.models import ApplicationDefinition, BalsamJob
        from balsam.db.connect import connect

        ApplicationDefinition.objects.create(name="sim", executable="/bin/true")
        rows = points(args.n)
        csv_path = os.path.join(path, "points.csv")
        write_csv(csv_path, rows)
        conn = connect(path)
        BalsamJob.objects.exists()  # open Django's connection outside the timings
        runs = {"cli": lambda: cli_insert(csv_path), "api": lambda: api_insert(rows)}
        for run in runs.values():
            truncate(conn)
            run()  # warm-up, not timed
        times: dict[str, list[float]] = {"cli": [], "api": []}
        for r in range(args.rounds):
            for label in (["cli", "api"] if r % 2 == 0 else ["api", "cli"]):
                truncate(conn)
                t0 = time.perf_counter()
                runs[label]()
                times[label].append(time.perf_counter() - t0)
                got = count(conn)
                assert got == args.n, f"{label} inserted {got} rows, not {args.n}"
                print(f"round {r + 1} {label}: {times[label][-1]:.3f} s  "
                      f"({args.n / times[label][-1]:,.0f} jobs/s)")
        wait_times = time_wait(conn, csv_path)
        dag_path = os.path.join(path, "dag.csv")
        write_csv(dag_path, rows, parents=True)
        truncate(conn)
        t0 = time.perf_counter()
        cli_insert(dag_path)
        dag_seconds = time.perf_counter() - t0
        conn.close()
    for what, seconds in wait_times.items():
        print(f"balsam wait {what} over {args.n:,} jobs, one count (--timeout 0): {seconds:.3f} s")
    cli, api = statistics.median(times["cli"]), statistics.median(times["api"])
    print(f"CLI  balsam job --from-file (whole command):     median {cli:.3f} s = "
          f"{args.n / cli:,.0f} jobs/s")
    print(f"API  bulk_create (incl. constructing objects):   median {api:.3f} s = "
          f"{args.n / api:,.0f} jobs/s")
    print(f"ratio CLI/API (rate): {api / cli:.2f}   (goal >= 0.50)")
    print(f"CLI  with a parents column ({max(args.n - 100, 0):,} dependencies by row name), one "
          f"run: {dag_seconds:.3f} s = {args.n / dag_seconds:,.0f} jobs/s")


if __name__ == "__main__":
    main()
