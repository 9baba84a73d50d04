"""Serial mode's MPI channels: a worker rank's to rank 0 (:class:`WorkerLink`) and rank 0's
to the workers (:class:`MasterLink`), used by :mod:`balsam.launcher.serial_ranks`.

Messages are pickled dicts sent with ``isend`` and received with matched probes (``improbe``):
no rank ever blocks in MPI, so none spins at 100% CPU. A worker's loop calls
:meth:`WorkerLink.receive` once an iteration and :meth:`WorkerLink.send` once a report (its
exit line counts both: :mod:`balsam.launcher.rank_usage`); MPI's own share of a worker rank's
CPU is small (benchmarks/README.md, "Issue 16, session 20").
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Optional

ORDERS, REPORTS, SESSION = 11, 12, 13
"""MPI tags: master -> worker orders, worker -> master reports, master -> worker the session
id of an ensemble started before the session opened (0: exit at once)."""


class WorkerLink:
    """A worker's channel to rank 0 (:class:`balsam.launcher.serial_worker.Channel`)."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self._sends: list[Any] = []

    def send(self, message: dict[str, Any]) -> None:
        self._sends = [r for r in self._sends if not r.Test()]
        self._sends.append(self.comm.isend(message, dest=0, tag=REPORTS))

    def receive(self) -> Optional[dict[str, Any]]:
        matched = self.comm.improbe(source=0, tag=ORDERS)
        return None if matched is None else matched.recv()

    def flush(self, timeout: float) -> None:
        _complete(self._sends, timeout)


class MasterLink:
    """Rank 0's channels to workers 1..N (:class:`balsam.launcher.serial_master.MasterChannel`)."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self.comm = comm
        self.workers: Sequence[int] = range(1, comm.Get_size())
        self._any = MPI.ANY_SOURCE
        self._status = MPI.Status()
        self._sends: list[Any] = []
        self.launcher_ended: deque[str] = deque()
        """Job ids of the launcher's own tasks on worker 1's node that ended (filled by
        :func:`ended_from_launcher`): given to the master as worker 1's ``unheld`` report."""

    def send(self, worker: int, message: dict[str, Any]) -> None:
        self.send_tagged(worker, message, ORDERS)

    def send_tagged(self, worker: int, message: Any, tag: int) -> None:
        if len(self._sends) > 64:
            self._sends = [r for r in self._sends if not r.Test()]
        self._sends.append(self.comm.isend(message, dest=worker, tag=tag))

    def receive(self) -> Optional[tuple[int, dict[str, Any]]]:
        if self.launcher_ended:
            ended = [self.launcher_ended.popleft() for _ in range(len(self.launcher_ended))]
            report: dict[str, Any] = {"unheld": [j for j in ended if j]}
            if "" in ended:  # its stdin closed
                report["launcher_gone"] = True
            return self.workers[0], report
        matched = self.comm.improbe(source=self._any, tag=REPORTS, status=self._status)
        if matched is None:
            return None
        return self._status.Get_source(), matched.recv()

    def flush(self, timeout: float) -> None:
        _complete(self._sends, timeout)


def session_from_master(comm: Any, stop: threading.Event) -> int:
    """A worker of an ensemble started before the session: the id rank 0 sends (0: exit)."""
    while not stop.is_set():
        matched = comm.improbe(source=0, tag=SESSION)
        if matched is not None:
            return int(matched.recv())
        time.sleep(0.002)
    return 0


def _complete(requests: list[Any], timeout: float) -> None:
    """Wait (without spinning hard) until ``requests`` complete or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while requests and time.monotonic() < end:
        requests[:] = [r for r in requests if not r.Test()]
        if requests:
            time.sleep(0.002)
