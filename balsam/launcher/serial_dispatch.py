"""Serial-mode master's dispatch: how rank 0 deals its claimed work to the worker ranks.

:class:`MasterDispatch` (a base of :class:`balsam.launcher.serial_master.Master`, which owns
the loop) fills every open node first, then queues work behind what runs -- evenly, in rounds,
least loaded workers first, on the workers whose queue fell below its refill mark, so that one
message carries several tasks -- enough that a worker never waits on the master's claims or
writes. ``_topped`` says that every open worker's queue was above its refill mark at the last
:meth:`MasterDispatch._dispatch` (nothing urgent for the master: it may nap longer).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Optional, Protocol

from balsam.launcher.serial_work import Work
from balsam.launcher.task import TaskSpec

QUEUED_NODES, FAST_RATE, QUEUE_SECONDS, MAX_QUEUED_TASKS = (1.0, 4.0), 50.0, 0.1, 1024
"""Work queued on a worker behind what runs, in nodes' worth: ``QUEUED_NODES`` (the first while
tasks end slower than ``FAST_RATE``/s in all), or ``QUEUE_SECONDS`` at the worker's share of the
end rate (up to ``MAX_QUEUED_TASKS``) if more: it never waits on the master's claims or writes."""
REFILL_BELOW = 0.5
"""A worker's queue is topped up once less than this fraction is left (one message, many tasks)."""
QUEUE_ROUNDS = 8
"""Queued work is dealt in this many rounds, least loaded workers first, so that a claim is
spread over the workers (filled one by one, a campaign's last jobs sat in a few queues)."""


class MasterChannel(Protocol):
    """The master's links to workers: ``receive`` returns (worker, report) or None at once."""

    workers: Sequence[int]

    def send(self, worker: int, message: dict[str, Any]) -> None: ...

    def receive(self) -> Optional[tuple[int, dict[str, Any]]]: ...

    def flush(self, timeout: float) -> None: ...


def work_item(spec: TaskSpec) -> Work:
    """What a worker needs to start ``spec`` (``spec.env`` holds only the job's variables:
    the master's :class:`JobSource` is built with an empty base environment)."""
    return Work(spec.job_id, spec.app_argv, spec.envscript, spec.env, spec.workdir,
                spec.output_path, spec.node_packing_count, spec.required_cores, spec.pyfunc_row)


class MasterDispatch:
    """The dispatch of one serial-mode master (see the module docstring); the loop
    (:class:`balsam.launcher.serial_master.Master`) sets these attributes up."""

    channel: MasterChannel
    queue: deque[TaskSpec]
    inflight: dict[str, int]             # job id -> worker holding it (queued or running)
    weight: dict[str, float]             # job id -> its share of its node
    load: dict[int, float]               # worker -> nodes' worth it holds (running + queued)
    closed: set[int]
    rate: float
    slots_per_node: int
    _topped: bool

    def _slots(self, spec: TaskSpec) -> int:
        raise NotImplementedError  # provided by MasterClaims

    def _dispatch(self) -> bool:
        """Send work to the workers that need it (True: some was sent)."""
        self._topped = False
        if not self.queue:
            return False
        batches: dict[int, list[Work]] = {}
        load, slots = self.load, self.slots_per_node
        open_workers = [w for w in load if w not in self.closed]
        queued = max(QUEUED_NODES[self.rate >= FAST_RATE], min(  # in nodes' worth
            self.rate / max(1, len(open_workers)) * QUEUE_SECONDS, MAX_QUEUED_TASKS) / slots)
        # fill every node first; then queue behind, evenly in rounds, on the workers whose
        # queue is below the refill mark (so one message carries several tasks)
        refill = 1.0 + queued * REFILL_BELOW
        topped = {w for w in open_workers if load[w] < refill - 1e-9}
        if not topped:  # every open node full and enough queued (most iterations)
            self._topped = True
            return False
        rounds = [1.0 + queued * k / QUEUE_ROUNDS for k in range(1, QUEUE_ROUNDS + 1)]
        for target in (1.0, *rounds):
            if not self.queue:
                break
            for worker in sorted(open_workers, key=self.load.__getitem__):
                if target > 1.0 and worker not in topped:
                    continue
                while self.queue and self.load[worker] < target - 1e-9:
                    spec = self.queue.popleft()
                    weight = 1.0 / self._slots(spec)
                    self.load[worker] += weight
                    self.weight[spec.job_id] = weight
                    self.inflight[spec.job_id] = worker
                    batches.setdefault(worker, []).append(work_item(spec))
        for worker, items in batches.items():
            self.channel.send(worker, {"work": items})
        return bool(batches)
