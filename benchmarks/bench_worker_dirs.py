"""Benchmark: one serial worker's CPU for N `true` tasks, by thread, with the tasks' directories
on each of several file systems (default: /tmp, then /dev/shm, alternating).

The serial benchmark's worker ranks used 0.55 s to 1.86 s of CPU for the same 2,000 tasks
(issue 16). This runs the same :class:`balsam.launcher.serial_worker.Worker` in this process
(no MPI, no database: the orders come from a list, every task packed 2 on CPUs 0 and 1, as in
``bench_launcher_serial.py``), so what differs between the lines is only where the tasks'
directories and output files are made: ``main`` is the loop, ``task-dirs`` the thread making
directories and output files ahead, ``balsam-spawn`` the native spawning threads (which make
those of chained starts themselves).

Run: ``python benchmarks/bench_worker_dirs.py [-n 2000] [--rounds 3] [--dirs /tmp /dev/shm]``
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line  # noqa: E402
from _worker_cpu import dir_cost  # noqa: E402

TRUE = "/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true"
BATCH = 200
"""Tasks per ``work`` order (the master sends the queue in batches too)."""


class Orders:
    """The worker's channel: the ``work`` orders, then ``exit`` once every task ended."""

    def __init__(self, orders: list[dict[str, Any]], count: int) -> None:
        self.orders, self.count, self.ended = orders, count, 0

    def send(self, report: dict[str, Any]) -> None:
        self.ended += len(report.get("done", ())) + len(report.get("failed", ()))

    def receive(self) -> Optional[dict[str, Any]]:
        if self.orders:
            return self.orders.pop(0)
        return {"exit": True} if self.ended >= self.count else None


def one_round(count: int, where: str) -> str:
    """Run ``count`` tasks with their directories under ``where``; one line of results."""
    from balsam.launcher.nodeslots import NodeSlots
    from balsam.launcher.serial_worker import Work, Worker

    root = tempfile.mkdtemp(prefix="balsam-bench-dirs-", dir=where)
    try:
        os.makedirs(os.path.join(root, "data"))
        price = dir_cost(root, "before")
        works = [Work(f"t{i}", [TRUE], None, {}, os.path.join(root, "wf", f"t{i}"),
                      os.path.join(root, "wf", f"t{i}", f"t{i}.out"), 2, 1)
                 for i in range(count)]
        channel = Orders([{"work": works[k:k + BATCH]} for k in range(0, count, BATCH)], count)
        worker = Worker(channel, NodeSlots([0, 1], 0), {"PATH": os.environ["PATH"]})
        began, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        loop0 = resource.getrusage(resource.RUSAGE_THREAD)
        worker.run()
        loop1 = resource.getrusage(resource.RUSAGE_THREAD)
        ended, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        failed = count - channel.ended
    finally:
        shutil.rmtree(root, ignore_errors=True)
    own = ended.ru_utime + ended.ru_stime - began.ru_utime - began.ru_stime
    loop = loop1.ru_utime + loop1.ru_stime - loop0.ru_utime - loop0.ru_stime
    threads = ", ".join([f"main {loop:.2f} s"] + [  # (the thread's total: every round's)
        f"{name} {cpu:.2f} s" for name, cpu in sorted(worker.threads.items()) if name != "main"])
    return (f"{where:9s} {count / (t1 - t0):6.0f} tasks/s, worker CPU {own:.2f} s "
            f"({threads}); {ended.ru_nivcsw - began.ru_nivcsw} involuntary switches; a "
            f"directory and output file {price:.0f} us before" + (
                f"; {failed} NOT ENDED" if failed else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="tasks per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--dirs", nargs="+", default=["/tmp", "/dev/shm"],
                        help="where the tasks' directories go, in turn (default /tmp /dev/shm)")
    args = parser.parse_args()
    for where in args.dirs:
        if not os.path.isdir(where):
            raise SystemExit(f"bench_worker_dirs: no directory {where}")
    print(machine_line())
    for r in range(1, args.rounds + 1):
        for where in args.dirs:
            print(f"round {r} {one_round(args.n, where)}")


if __name__ == "__main__":
    main()
