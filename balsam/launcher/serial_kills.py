"""Serial-mode master: user kills of the jobs it holds, forwarded to the workers running them.

:class:`MasterKills` (a base of :class:`balsam.launcher.serial_master.Master`) asks every
``kill_check_seconds`` which of its jobs a user killed (one statement) while it holds anything
-- tasks on workers, queued work, the launcher's own tasks, a claim in flight, state changes
not written yet -- and once more after it stopped holding (a job killed after its task ended
but before its end was written is still held: that check releases it). An idle master asked
two times a second before (issue 16, session 20: a third of its idle transactions), always for
nothing: a kill can only touch a job the session holds, and holding nothing it gets no new
holds but by claiming. A killed task is stopped on its worker; killed work not started is
dropped from the queue and released.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from balsam.core import leases
from balsam.errors import DatabaseUnavailable
from balsam.launcher.context import Context
from balsam.launcher.status_writers import StatusSink
from balsam.launcher.task import TaskSpec


class MasterKills:
    """The kill checks of one serial-mode master (see the module docstring); the loop
    (:class:`balsam.launcher.serial_master.Master`) sets these attributes up."""

    ctx: Context
    status: StatusSink
    channel: Any  # the master's MasterChannel
    queue: deque[TaskSpec]
    inflight: dict[str, int]
    held: dict[str, int]
    kill_sent: set[str]
    _dropped: set[str]
    _held_at_check = True
    """The master held something at the last kill check (or that check failed)."""

    def _claiming(self) -> bool:
        raise NotImplementedError  # provided by MasterClaims

    def _take_claims(self, now: float) -> bool:
        raise NotImplementedError  # provided by MasterClaims

    def _holding(self) -> bool:
        """Whether the master holds anything a user could have killed."""
        return bool(self.inflight or self.queue or self.held or self._claiming()
                    or self.status.pending)

    def _kill_check_due(self) -> bool:
        """A kill check is worth a statement now (see the module docstring)."""
        holding = self._holding()
        due, self._held_at_check = holding or self._held_at_check, holding
        return due

    def _check_kills(self) -> None:
        try:
            killed = self.ctx.db.try_run(leases.killed, self.ctx.session_id)
        except DatabaseUnavailable:
            self._held_at_check = True  # asked again at the next check
            return
        if killed:
            self._take_claims(time.monotonic())
        self._act_on_kills(killed)

    def _act_on_kills(self, killed: Iterable[str]) -> None:
        killed = list(killed)
        queued = {s.job_id for s in self.queue} if killed else set()
        for job_id in killed:
            if job_id in self.inflight:
                self._forward_kill(job_id)
            elif job_id in queued:
                self.queue = deque(s for s in self.queue if s.job_id != job_id)
                self.status.release(job_id)
            else:  # its task already ended: its end was not recorded over USER_KILLED
                self.status.release(job_id)  # (or a claim in flight holds it: dropped)
                if self._claiming():
                    self._dropped.add(job_id)

    def _forward_kill(self, job_id: str) -> None:
        worker = self.inflight.get(job_id)
        if worker is not None and job_id not in self.kill_sent:
            self.kill_sent.add(job_id)
            self.channel.send(worker, {"kill": [job_id]})
            self.ctx.log.info(f"job {job_id[:8]} was killed by a user: stopping its task on "
                              f"worker {worker}")
