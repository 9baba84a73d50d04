"""Benchmark: latency of `balsam job ... --yes`, `balsam ls` and `balsam ls --wf w` with 100,000
jobs in the DB, each the median of 20 runs as a real subprocess, beside `python3 -c pass`.

Goals: `balsam job` and `balsam ls` under 100 ms (issue 16), `balsam ls --wf w` under 200 ms
(issue 2), on an idle machine. Printed, not asserted.

The DB holds 99,000 jobs in workflows sim0..sim9 and 1,000 in workflow ``w`` (so ``--wf w``,
a "workflow contains" filter, selects 1,000 plus the jobs the runs of ``balsam job`` add).
``balsam ls`` runs with the default BALSAM_LS_LIMIT; output goes to /dev/null. The job table is
vacuumed and analysed once loaded, as autovacuum does within a minute of a bulk load, so that
autovacuum does not run in the middle of the timings (and the planner knows the table's size).

Run: ``python benchmarks/bench_cli_latency.py [--runs 20] [--jobs 100000] [--compare DIR]``

``--compare DIR`` also times every command with ``PYTHONPATH=DIR`` (another checkout of the
package, e.g. ``git archive main | tar -x -C DIR``), interleaved run by run with this tree's
against the same DB, and prints the ratio of the medians (this tree / DIR): a before/after on a
shared, noisy machine.

Bytecode: the package(s) timed are byte-compiled first (``compileall``), as ``pip install``
does for a regular install. This environment sets ``PYTHONDONTWRITEBYTECODE``, so an editable
checkout never caches bytecode and every run would recompile each module it imports (~15 ms);
``--no-compile`` times it that way. Beside each median wall time the table gives the median CPU
time (user + system) of the command's process, which other load on the machine inflates less.
"""
from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line, throwaway_db  # noqa: E402

TIMEOUT_SECONDS = 60
GOAL_MS = {"balsam job": 100, "balsam ls": 100, "balsam ls --wf w": 200}
"""Median goals: issue 16 for `balsam job` and `balsam ls`, issue 2 for the filtered listing."""


def fill(jobs: int) -> None:
    from balsam.core.models import ApplicationDefinition, BalsamJob

    ApplicationDefinition.objects.create(name="a", executable="/bin/echo")
    in_w = min(1000, jobs)
    BalsamJob.objects.bulk_create(
        BalsamJob(name=f"job{i}", workflow=f"sim{i % 10}" if i >= in_w else "w", application="a",
                  args=f"--input {i}") for i in range(jobs))


CPU_MS: list[float] = []
"""CPU time (user + system, ms) of each run of :func:`once_ms`, in order."""


def once_ms(argv: list[str], env: Optional[dict[str, str]] = None) -> float:
    """Wall time in ms of one run of ``argv``, which must exit 0 (its CPU time goes to CPU_MS)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, timeout=TIMEOUT_SECONDS, env=env)
    elapsed = (time.perf_counter() - t0) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_MS.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()}")
    return elapsed


def median_ms(argv: list[str], runs: int) -> tuple[float, float, float]:
    """(median, min) wall time and median CPU time in ms of ``argv`` run ``runs`` times; each
    must exit 0."""
    times = [once_ms(argv) for _ in range(runs)]
    return statistics.median(times), min(times), statistics.median(CPU_MS[-runs:])


def compare(commands: list[tuple[str, list[str]]], runs: int, other: str) -> None:
    """Each command with this tree and with ``PYTHONPATH=other``, alternating, ``runs`` each."""
    env = dict(os.environ, PYTHONPATH=other)
    width = max(len(label) for label, _ in commands)
    print(f"# compare: this tree vs PYTHONPATH={other}, interleaved")
    print(f"{'command':<{width}}  this ms  other ms  ratio   CPU: this ms  other ms  ratio")
    for label, argv in commands:
        mine, theirs, mine_cpu, theirs_cpu = [], [], [], []
        for _ in range(runs):
            mine.append(once_ms(argv))
            mine_cpu.append(CPU_MS[-1])
            theirs.append(once_ms(argv, env))
            theirs_cpu.append(CPU_MS[-1])
        a, b = statistics.median(mine), statistics.median(theirs)
        c, d = statistics.median(mine_cpu), statistics.median(theirs_cpu)
        print(f"{label:<{width}}  {a:7.1f}  {b:8.1f}  {a / b:5.2f}        {c:7.1f}  {d:8.1f}  "
              f"{c / d:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs in the DB (default 100000)")
    parser.add_argument("--compare", metavar="DIR", help="also time the package in DIR "
                        "(PYTHONPATH), interleaved, and print the ratios")
    parser.add_argument("--no-compile", action="store_true", help="do not byte-compile the "
                        "package(s) first (with PYTHONDONTWRITEBYTECODE set, each run recompiles)")
    args = parser.parse_args()
    print(machine_line())
    if not args.no_compile:
        import balsam

        trees = [os.path.dirname(os.path.abspath(balsam.__file__))]
        if args.compare:
            trees.append(os.path.join(os.path.abspath(args.compare), "balsam"))
        for tree in trees:
            compileall.compile_dir(tree, quiet=1)
        print(f"# bytecode compiled (as pip install does): {', '.join(trees)}")
    else:
        flag = os.environ.get("PYTHONDONTWRITEBYTECODE", "")
        print(f"# not byte-compiled; PYTHONDONTWRITEBYTECODE={flag!r}")
    script = shutil.which("balsam")
    balsam = [script] if script else [sys.executable, "-m", "balsam"]
    with throwaway_db():
        t0 = time.perf_counter()
        fill(args.jobs)
        print(f"# {args.jobs:,} jobs added in {time.perf_counter() - t0:.1f} s; balsam = {balsam[0]}")
        from django.db import connection, connections

        from balsam.core.schema import JOB_TABLE

        t0 = time.perf_counter()
        with connection.cursor() as cur:  # what autovacuum does to a freshly loaded table
            cur.execute(f"VACUUM (ANALYZE) {JOB_TABLE}")  # within a minute, here before timing
        print(f"# VACUUM (ANALYZE) of the job table: {time.perf_counter() - t0:.1f} s")
        connections.close_all()
        commands = [
            ("python3 -c pass", [sys.executable, "-c", "pass"]),
            ("balsam job --name x --workflow w --application a --yes",
             balsam + ["job", "--name", "x", "--workflow", "w", "--application", "a", "--yes"]),
            ("balsam ls", balsam + ["ls"]),
            ("balsam ls --wf w", balsam + ["ls", "--wf", "w"]),
        ]
        for _, argv in commands:  # warm the page cache and the server's buffers, untimed
            median_ms(argv, 1)
        width = max(len(label) for label, _ in commands)
        print(f"{'command':<{width}}  median ms  (min)   CPU ms  goal")
        for label, argv in commands:
            med, low, cpu = median_ms(argv, args.runs)
            limit = GOAL_MS.get(label.split(" --")[0] if label != "balsam ls --wf w" else label)
            goal = "" if limit is None else f"< {limit}  {'ok' if med < limit else 'MISSED'}"
            print(f"{label:<{width}}  {med:9.1f}  ({low:5.1f})  {cpu:6.1f}  {goal}")
        if args.compare:
            compare(commands[1:], args.runs, os.path.abspath(args.compare))
    print(machine_line())


if __name__ == "__main__":
    main()
