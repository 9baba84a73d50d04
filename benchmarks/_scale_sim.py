"""The simulated workers of ``bench_scale.py``: :class:`SimWorkers`, a :class:`MasterChannel`
that answers as ``N`` workers of ``S`` slots each would (issue 16; see ``bench_scale.py``)."""
from __future__ import annotations

import heapq
import pickle
import time
from array import array
from collections import deque
from collections.abc import Sequence
from typing import Any, Optional

TICK_SECONDS = 0.001
"""A simulated worker's loop period: ends within one tick on one worker make one report."""


class SimWorkers:
    """``nodes`` simulated workers of ``slots`` slots each, as a :class:`MasterChannel`.

    Tasks take ``duration()`` seconds of the simulated clock (``time.monotonic``); ``sim_cpu``
    is the process CPU time spent simulating (not the master's). ``starts``/``ends`` are the
    simulated times at which tasks started and ended, ``started`` how many were started.
    """

    def __init__(self, nodes: int, slots: int, duration: Any) -> None:
        self.workers: Sequence[int] = range(1, nodes + 1)
        self.slots = slots
        self.duration = duration
        self.free = [slots] * (nodes + 1)
        self.queued: list[deque[str]] = [deque() for _ in range(nodes + 1)]
        self.heap: list[tuple[float, int, str]] = []
        self.cancelled: set[str] = set()
        self.stopping: set[int] = set()
        self.outbox: deque[tuple[int, bytes]] = deque()
        self.starts = array("d")
        self.ends = array("d")
        self.started = 0
        self.reports = 0
        self.sim_cpu = 0.0
        self.last_work = 0.0
        """When the master last sent new work (after it, it had no more to hand out; work given
        back by a ``recall`` and sent again is not new: the tail's rebalancing)."""
        self.recalled: set[str] = set()

    # ---- the master's side ------------------------------------------------------------------
    def send(self, worker: int, message: dict[str, Any]) -> None:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)  # the master's isend pickles
        t0 = time.process_time()
        self._obey(worker, pickle.loads(data))
        self.sim_cpu += time.process_time() - t0

    def receive(self) -> Optional[tuple[int, dict[str, Any]]]:
        if not self.outbox and self.heap:
            t0 = time.process_time()
            self._advance(time.monotonic())
            self.sim_cpu += time.process_time() - t0
        if not self.outbox:
            return None
        worker, data = self.outbox.popleft()
        return worker, pickle.loads(data)  # the master's recv unpickles

    def flush(self, timeout: float) -> None:
        """Nothing to flush: :meth:`send` hands each message to the simulated worker at once
        (the real channel waits here for its pending MPI sends)."""

    # ---- the workers' side ------------------------------------------------------------------
    def _report(self, worker: int, report: dict[str, Any]) -> None:
        self.reports += 1
        self.outbox.append((worker, pickle.dumps(report, pickle.HIGHEST_PROTOCOL)))

    def _start(self, worker: int, now: float) -> list[str]:
        queue, started = self.queued[worker], []
        while queue and self.free[worker] > 0:
            job_id = queue.popleft()
            self.free[worker] -= 1
            started.append(job_id)
            heapq.heappush(self.heap, (now + self.duration(), worker, job_id))
            self.starts.append(now)
        self.started += len(started)
        return started

    def _obey(self, worker: int, message: dict[str, Any]) -> None:
        now = time.monotonic()
        report: dict[str, Any] = {}
        if message.get("abort") or message.get("exit"):
            self._drop_running(worker, now)
            self.queued[worker].clear()
            self._report(worker, {"bye": True})
            return
        if message.get("work"):
            ids = [w.job_id for w in message["work"]]
            if any(job_id not in self.recalled for job_id in ids):  # new work, not a recall's
                self.last_work = now
            if worker in self.stopping:
                report["returned"] = ids
            else:
                self.queued[worker].extend(ids)
        for job_id in message.get("kill", ()):
            if job_id in self.queued[worker]:
                self.queued[worker].remove(job_id)
            else:
                self._drop_running(worker, now, [job_id])
            report.setdefault("killed", []).append(job_id)
        if "recall" in message:  # queued work taken back for idle nodes (serial_rebalance)
            queue = self.queued[worker]
            count = min(len(queue), int(message["recall"] * self.slots + 1e-6))
            report["recalled"] = [queue.pop() for _ in range(count)]
            self.recalled.update(report["recalled"])
        if "stop" in message:
            self.stopping.add(worker)
            if self.queued[worker]:
                report.setdefault("returned", []).extend(self.queued[worker])
                self.queued[worker].clear()
            report["stopped"] = [(j, -15) for j in self._drop_running(worker, now)]
            report["drained"] = True
        started = [] if worker in self.stopping else self._start(worker, now)
        if started:
            report["started"] = started
        if report:
            self._report(worker, report)

    def _drop_running(self, worker: int, now: float,
                      only: Optional[list[str]] = None) -> list[str]:
        """Stop running tasks of ``worker`` (``only`` those); their ids (rare: a linear scan)."""
        dropped = [j for _, w, j in self.heap if w == worker and j not in self.cancelled
                   and (only is None or j in only)]
        self.cancelled.update(dropped)
        self.free[worker] += len(dropped)
        for _ in dropped:
            self.ends.append(now)
        return dropped

    def _advance(self, now: float) -> None:
        """Run every simulated worker up to ``now``: ends, then starts in the freed slots;
        one report per worker per tick."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            tick_end = min(now, heap[0][0] + TICK_SECONDS)
            done: dict[int, list[str]] = {}
            while heap and heap[0][0] <= tick_end:
                t, worker, job_id = heapq.heappop(heap)
                if job_id in self.cancelled:
                    self.cancelled.discard(job_id)
                    continue
                self.free[worker] += 1
                self.ends.append(t)
                done.setdefault(worker, []).append(job_id)
            for worker, ids in done.items():
                report: dict[str, Any] = {"done": ids}
                if worker not in self.stopping:
                    started = self._start(worker, tick_end)
                    if started:
                        report["started"] = started
                self._report(worker, report)

