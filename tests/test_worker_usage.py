"""A serial worker says where its CPU went (issue 16, session 20): its loop's counts, the CPU of
each of its threads by name (the preparer is ``task-dirs``, the native spawning threads
``balsam-spawn``), context switches and page faults -- in its rank's exit line, read by
benchmarks/bench_launcher_serial.py. Real processes, real MPI and PostgreSQL for the line."""
from __future__ import annotations

import os
import re
import threading
from typing import Any, Optional

import pytest
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, settings, wait_for

from balsam.launcher import rank_usage, spawn, spawn_native
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Work, Worker

TRUE = "/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true"


class Orders:
    """A worker channel: one ``work`` order, ``exit`` once every task ended; reports kept."""

    def __init__(self, works: list[Work]) -> None:
        self.orders: list[dict[str, Any]] = [{"work": works}]
        self.count = len(works)
        self.reports: list[dict[str, Any]] = []

    def ended(self) -> int:
        return sum(len(r.get("done", ())) + len(r.get("failed", ())) for r in self.reports)

    def send(self, report: dict[str, Any]) -> None:
        self.reports.append(report)

    def receive(self) -> Optional[dict[str, Any]]:
        if self.orders:
            return self.orders.pop(0)
        return {"exit": True} if self.ended() >= self.count else None


def test_the_preparer_thread_carries_its_name_in_the_kernels_view(tmp_path):
    prep = spawn.Preparer()
    try:
        wait_for(lambda: "task-dirs" in rank_usage.thread_cpu(), 30,
                 "the preparer's thread named task-dirs in /proc/self/task")
        assert "main" in rank_usage.thread_cpu()
    finally:
        prep.close()


def test_a_worker_counts_its_loop_and_reports_and_its_threads_cpu(tmp_path):
    works = [Work(f"t{i}", [TRUE], None, {}, str(tmp_path / f"t{i}"),
                  str(tmp_path / f"t{i}" / "t.out"), 2, 1) for i in range(12)]
    orders = Orders(works)
    worker = Worker(orders, NodeSlots([0, 1], 0), {"PATH": os.environ["PATH"]})
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), orders.reports
    assert orders.ended() == 12 and any(r.get("bye") for r in orders.reports)
    loops = worker.loops
    assert loops["reports"] == len(orders.reports) - 1  # all but the goodbye, sent by step()
    assert loops["iterations"] >= loops["waits"] + loops["paces"] > 0
    assert "task-dirs" in worker.threads  # read before close() ended the threads
    if spawn_native.KERNEL == "cython":
        assert "balsam-spawn" in worker.threads
    summary = rank_usage.usage_summary(worker.threads)
    assert re.search(r"threads: .*task-dirs [\d.]+ s.*; \d+ voluntary and \d+ involuntary "
                     r"switches, \d+ minor faults$", summary), summary


@pytest.mark.slow
def test_a_worker_ranks_exit_line_says_its_loop_and_threads(db, cursor):
    add_app(cursor, "true", TRUE)
    add_jobs(cursor, [{"name": f"u{i}", "application": "true", "node_packing_count": 2}
                      for i in range(6)])
    with settings(db, local_nodes=1, launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "serial")
        assert launcher.wait(60) == 0, launcher.output()
        log = launcher.log()
    line = next(x for x in log.splitlines() if "serial worker 1 " in x and " exits: " in x)
    assert re.search(r"exits: 6 task\(s\) started, .*; loop: \d+ iterations, \d+ waits, "
                     r"\d+ paces, \d+ reports; threads: .*main [\d.]+ s", line), line
    assert "task-dirs" in line and "minor faults" in line, line
