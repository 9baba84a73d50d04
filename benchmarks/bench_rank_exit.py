"""What a serial-mode rank's end costs with and without flushing open file objects.

``serial_ranks.exit_rank`` ends a rank with the C library's ``exit`` (no interpreter teardown);
since session 18 it first flushes the buffers of Python file objects left open
(``flush_open_files``, one walk of the collector's objects). Each round runs one 2-rank MPI job
(the mpich wheel's Hydra, ``-launcher fork``) per mode, in ABBA order; every rank imports the
modules of the master's and the worker's roles and ``mpi4py.MPI``, leaves one file open with
unwritten data (except in ``flush-none``), notes the time, then ends:

* ``flush``: ``exit_rank`` as it is;
* ``flush-none``: the same, no file left open (the usual case: no walk of the objects);
* ``skip``: ``exit_rank`` with ``flush_open_files`` replaced by a no-op (before session 18;
  each of these three modes notes the time its ``flush_open_files`` took in a file);
* ``teardown``: ``sys.exit`` (the interpreter's teardown, then mpi4py's ``MPI_Finalize``).

Printed: per mode the median time from the later rank's note to ``mpiexec``'s end, whether
the open file's data reached it, and (``flush``) the time ``flush_open_files`` took in the
rank with the number of objects it walked; the same-run ratio flush/skip; ``uptime``'s load.

    python benchmarks/bench_rank_exit.py --rounds 20
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from balsam.platform.mpi.choice import wheel_mpiexec

PROGRAM = r"""
import gc, os, sys, time
import balsam.launcher.serial_ranks as ranks
import balsam.launcher.serial_master, balsam.launcher.serial_worker, balsam.launcher.job_source
import balsam.launcher.context, balsam.launcher.nodeslots, balsam.launcher.rank_heartbeat
from mpi4py import MPI

mode, out = sys.argv[1], sys.argv[2]
rank = MPI.COMM_WORLD.Get_rank()
if mode != "flush-none":
    left_open = open(os.path.join(out, f"data{rank}"), "w")
    left_open.write("x" * 100)
objects = len(gc.get_objects())
real = (lambda: 0) if mode == "skip" else ranks.flush_open_files


def timed():  # (every exit_rank mode writes this note: the same cost in each)
    start = time.perf_counter()
    flushed = real()
    with open(os.path.join(out, f"flush{rank}"), "w") as fh:
        fh.write(f"{time.perf_counter() - start} {objects} {flushed}")
    return flushed


ranks.flush_open_files = timed
with open(os.path.join(out, f"t{rank}"), "w") as fh:
    fh.write(repr(time.time()))
if mode == "teardown":
    sys.exit(0)
ranks.exit_rank(0)
"""


def one(mpiexec: str, mode: str) -> tuple[float, bool, list[tuple[float, int]]]:
    """(later note -> mpiexec gone in s, the open files' data reached them, [(flush s,
    objects)] per rank in ``flush`` mode)."""
    with tempfile.TemporaryDirectory(prefix="bench-rank-exit-") as out:
        proc = subprocess.run([mpiexec, "-launcher", "fork", "-n", "2", "-bind-to", "none",
                               sys.executable, "-c", PROGRAM, mode, out],
                              capture_output=True, text=True, timeout=300)
        end = time.time()
        if proc.returncode != 0:
            raise SystemExit(f"{mode}: mpiexec exited {proc.returncode}: {proc.stderr[-2000:]}")
        noted = max(float(open(os.path.join(out, f"t{r}")).read()) for r in range(2))
        data = all(os.path.getsize(os.path.join(out, f"data{r}")) == 100 for r in range(2)
                   if os.path.exists(os.path.join(out, f"data{r}")))
        flushes = []
        for r in range(2):
            path = os.path.join(out, f"flush{r}")
            if os.path.exists(path):
                seconds, objects, _ = open(path).read().split()
                flushes.append((float(seconds), int(objects)))
        return end - noted, data, flushes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    mpiexec = wheel_mpiexec()
    if not mpiexec:
        raise SystemExit("needs the mpich wheel")
    print(f"load before: {os.getloadavg()}")
    times: dict[str, list[float]] = {"flush": [], "flush-none": [], "skip": [], "teardown": []}
    data: dict[str, set[bool]] = {mode: set() for mode in times}
    flushes: list[tuple[float, int]] = []
    gated: list[tuple[float, int]] = []
    for i in range(args.rounds):
        order = ["flush", "flush-none", "skip", "teardown"]
        order = order if i % 2 == 0 else order[::-1]
        for mode in order:
            seconds, reached, flushed = one(mpiexec, mode)
            times[mode].append(seconds)
            data[mode].add(reached)
            if mode == "flush":
                flushes += flushed
            elif mode == "flush-none":
                gated += flushed
    for mode, values in times.items():
        print(f"{mode:9s}: later rank's note -> mpiexec gone, median "
              f"{statistics.median(values) * 1e3:.1f} ms "
              f"(min {min(values) * 1e3:.1f}, max {max(values) * 1e3:.1f}); open file's data "
              f"written: {sorted(data[mode])}")
    for mode in ("flush", "flush-none"):
        ratios = [f / s for f, s in zip(times[mode], times["skip"])]
        print(f"{mode}/skip per round: median {statistics.median(ratios):.2f}")
    print(f"flush_open_files in a rank: median "
          f"{statistics.median(s for s, _ in flushes) * 1e3:.2f} ms, "
          f"max {max(s for s, _ in flushes) * 1e3:.2f} ms, ~{flushes[0][1]} objects walked; "
          f"with no file open (no walk): median {statistics.median(s for s, _ in gated) * 1e3:.2f}"
          f" ms, max {max(s for s, _ in gated) * 1e3:.2f} ms")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
