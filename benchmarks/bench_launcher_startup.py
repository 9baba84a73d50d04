"""Benchmark: serial-mode launcher start-up and exit, this source tree against another, in
alternating order (ABBA), many short rounds.

Issue 16 asks for the first task RUNNING <= 0.3 s after `balsam launcher` starts. On a shared
machine one launcher start varies by +-0.3 s, and in `bench_launcher_serial.py` the side that
runs first in a round is favoured, so this compares start-up alone: each round inserts 100
runnable `true` jobs and runs a real `balsam launcher --consume-all --job-mode serial` of each
tree, the order flipping every round. Printed per tree: median (and mean) delay from the
launcher's process start to the first RUNNING event (the server's clock), median wall time
from start to exit, and median CPU time of the launcher's whole process tree (its 100 `true`
tasks included: less sensitive to the load than wall times); then, round by round, the ratios
of this tree's first RUNNING and start-to-exit time to the other's (medians) and how many
rounds this tree won.

Run: ``python benchmarks/bench_launcher_startup.py --compare-with SRC [--rounds 12] [-n 100]``
(SRC: e.g. ``git archive OLD | tar -x -C /tmp/old``; it runs first on ``PYTHONPATH``).
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line, throwaway_db  # noqa: E402
from bench_launcher_serial import fill, settings  # noqa: E402


def first_running(db_path: str) -> float:
    from balsam.core import schema
    from balsam.db.connect import connect

    conn = connect(db_path)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT extract(epoch FROM min(timestamp)) FROM "
                        f"{schema.EVENT_TABLE} WHERE to_state = 'RUNNING'")
            (value,) = cur.fetchone()
    finally:
        conn.close()
    if value is None:
        raise SystemExit("no job became RUNNING")
    return float(value)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(db_path: str, count: int, source: str) -> tuple[float, float, float]:
    """(first RUNNING after start, start to exit, CPU seconds of the launcher's process tree)
    of one launcher of ``source`` ("" = this)."""
    fill(db_path, count, os.cpu_count() or 1)
    env = dict(os.environ, PYTHONPATH=source) if source else None
    cpu = _children_cpu()
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "balsam", "launcher", "--consume-all",
                           "--job-mode", "serial"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=source or None)
    ended = time.time()
    cpu = _children_cpu() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"launcher failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return first_running(db_path) - started, ended - started, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-with", metavar="SRC", required=True,
                        help="the other source tree (e.g. `git archive` of an older commit)")
    parser.add_argument("--rounds", type=int, default=12, help="rounds (default 12)")
    parser.add_argument("-n", type=int, default=100, help="tasks per run (default 100)")
    args = parser.parse_args()
    print(machine_line())
    sides = {"other": os.path.abspath(args.compare_with), "this": ""}
    results: dict[str, list[tuple[float, float, float]]] = {side: [] for side in sides}
    with throwaway_db() as db_path:
        settings(db_path, 1)
        time.sleep(2.2)  # settings.yml older than 2 s: its checked copy is used, as usual
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for side in order:
                results[side].append(one_run(db_path, args.n, sides[side]))
    for side, runs in results.items():
        name = args.compare_with if side == "other" else "this tree"
        firsts = [f for f, _, _ in runs]
        print(f"== {name}: first RUNNING after start median {statistics.median(firsts):.3f} s "
              f"(mean {statistics.mean(firsts):.3f}, goal <= 0.3 s); start to exit of "
              f"{args.n} tasks median {statistics.median(e for _, e, _ in runs):.3f} s; CPU of "
              f"the launcher tree median {statistics.median(c for _, _, c in runs):.3f} s; "
              "runs: " + " ".join(f"{f:.2f}" for f in firsts))
    pairs = [(t[0] / o[0], t[2] / o[2], t[1] / o[1])
             for t, o in zip(results["this"], results["other"])]
    print(f"paired rounds: first RUNNING this/other median "
          f"{statistics.median(r for r, _, _ in pairs):.2f} (this sooner in "
          f"{sum(r < 1 for r, _, _ in pairs)} of {len(pairs)}); start to exit this/other median "
          f"{statistics.median(e for _, _, e in pairs):.2f} (this sooner in "
          f"{sum(e < 1 for _, _, e in pairs)}); launcher tree CPU this/other "
          f"median {statistics.median(c for _, c, _ in pairs):.2f}")


if __name__ == "__main__":
    main()
