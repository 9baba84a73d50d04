"""Benchmark: what each process on the serial boot's critical path imports (issue 16).

Runs, in fresh interpreters, the imports of each entry point before its first task -- the
launcher (`balsam launcher`'s modules up to its warm start), rank 0 and a worker rank (the
modules `python -m balsam.launcher.serial_ranks` imports for each role) and the watchdog process
(`python -S`, as :class:`balsam.launcher.watchdog.Watchdog` starts it) -- with `-X importtime`,
and prints the medians of the top-level imports' total (wall) and of the process's CPU time.
With `--compare-with TREE`, every round runs both trees one after the other (the order
alternates) and the median of the paired differences is printed too: on a loaded machine only
that is worth reading.

    python benchmarks/bench_boot_imports.py --rounds 11 --compare-with /tmp/base
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RANK = ["balsam.launcher.serial_ranks", "balsam.launcher.rank_boot"]
ENTRIES = {
    "launcher": ["balsam.cli.main", "balsam.cli.cmd_launcher", "balsam.launcher.main",
                 "balsam.launcher.serial_mode", "balsam.core.leases", "psycopg2",
                 "balsam.launcher.warm_start"],
    "master": RANK + ["balsam.launcher.metered", "balsam.launcher.context",
                      "balsam.launcher.ensemble_watch", "balsam.launcher.job_source",
                      "balsam.launcher.rank_heartbeat", "balsam.launcher.serial_master",
                      "balsam.launcher.status_writers", "psycopg2"],
    "worker": RANK + ["balsam.core.tunables", "balsam.launcher.nodeslots",
                      "balsam.launcher.rank_heartbeat", "balsam.launcher.serial_worker",
                      "balsam.launcher.ensemble_watch", "balsam.launcher.watchdog"],
    "watchdog (-S)": ["balsam.launcher.watchdog"],
}


def run_once(root: str, entry: str) -> tuple[float, float]:
    """(ms of the top-level imports by `-X importtime`, ms of the child's CPU) for one run."""
    imports = "; ".join(f"import {m}" for m in ENTRIES[entry])
    flags = ["-S"] if entry.startswith("watchdog") else []
    code = f"import sys; sys.path.insert(0, {root!r}); {imports}"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, *flags, "-X", "importtime", "-c", code],
                          capture_output=True, text=True, cwd=root, timeout=120, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    total = 0
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            _, cumulative, name = line.split("|")
            if len(name) - len(name.lstrip()) == 1:  # top level
                total += int(cumulative)
    return total / 1000, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="runs of each (default 7)")
    parser.add_argument("--compare-with", metavar="TREE", default="",
                        help="also run this source tree's imports, paired with ours")
    args = parser.parse_args()
    trees = [HERE] + ([os.path.abspath(args.compare_with)] if args.compare_with else [])
    print(f"# {os.getloadavg()[0]:.2f} load; {args.rounds} rounds; trees: {', '.join(trees)}")
    for entry in ENTRIES:
        runs: dict[str, list[tuple[float, float]]] = {t: [] for t in trees}
        for i in range(args.rounds):
            for tree in (trees if i % 2 == 0 else trees[::-1]):
                runs[tree].append(run_once(tree, entry))
        for tree in trees[::-1]:
            imp = statistics.median(r[0] for r in runs[tree])
            cpu = statistics.median(r[1] for r in runs[tree])
            print(f"{entry:14s} {tree}: imports {imp:6.1f} ms, process CPU {cpu:6.1f} ms")
        if len(trees) == 2:
            ours, base = runs[trees[0]], runs[trees[1]]
            d_imp = statistics.median(a[0] - b[0] for a, b in zip(ours, base))
            d_cpu = statistics.median(a[1] - b[1] for a, b in zip(ours, base))
            print(f"{entry:14s} paired difference (this - base): imports {d_imp:+.1f} ms, "
                  f"CPU {d_cpu:+.1f} ms")
    print(f"# load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
