"""Serial-mode master: the tasks the launcher itself started on worker 1's node.

:mod:`balsam.launcher.warm_start` has the launcher start the first tasks while its ensemble
boots; rank 0 gets them with the session id (:func:`balsam.launcher.rank_boot.read_handover`)
and :class:`LauncherHolds` (a base of :class:`balsam.launcher.serial_master.Master`) counts them
as running on worker 1 without recording anything for them, until the launcher says they ended
(recorded by the launcher) -- or, if the launcher died, records RUN_TIMEOUT for each once its
process group is gone (the launcher's watchdog stops them).
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from balsam.core.retries import STOP_MESSAGE_PREFIX
from balsam.launcher.context import Context
from balsam.launcher.status_writers import StatusSink
from balsam.platform.procgroup import live_members


class LauncherHolds:
    """The launcher's own tasks on a worker's node (see the module docstring); the loop
    (:class:`balsam.launcher.serial_master.Master`) sets these attributes up."""

    held: dict[str, int]
    """Job id -> process group of the launcher's tasks not yet ended."""
    _orphans: bool
    """The launcher died while some of them ran."""
    ctx: Context
    status: StatusSink
    channel: Any  # the master's MasterChannel
    load: dict[int, float]
    weight: dict[str, float]
    inflight: dict[str, int]

    def _gone(self, job_id: str) -> None:
        """Forget ``job_id``'s share on its node (provided by ``Master``)."""
        raise NotImplementedError

    def _receive(self) -> bool:
        """Handle the workers' waiting reports; whether there were any (provided by ``Master``)."""
        raise NotImplementedError

    def hold(self, worker: int, holds: Sequence[Sequence[Any]]) -> None:
        """Tasks the launcher started itself on ``worker``'s node while the ensemble (or one
        before it) started (:mod:`balsam.launcher.warm_start`: [job id, packing count, cores,
        process group], then their CPUs and GPU if an earlier ensemble failed): counted as
        running there, never recorded here, until the launcher says they ended (an ``unheld``
        report); ``worker`` keeps their share of its node meanwhile. If the launcher dies first
        (``launcher_gone``), :meth:`_settle_holds` records them once their groups are gone.
        Call before :meth:`run` (the worker must place them first)."""
        if not holds:
            return
        gpus = self.ctx.gpus_per_node
        for job_id, packing, _cores, pgid, *_where in holds:
            self.held[job_id] = pgid
            per_node = max(1, int(packing))
            weight = 1.0 / (min(per_node, gpus) if gpus else per_node)
            self.load[worker] += weight
            self.weight[job_id] = weight
            self.inflight[job_id] = worker
        self.channel.send(worker, {"hold": [list(h) for h in holds]})

    def _unheld(self, worker: int, report: Mapping[str, Any]) -> None:
        """The launcher recorded the end of these tasks (``unheld``), or its stdin closed
        (``launcher_gone``: with tasks left, it died)."""
        if report["unheld"]:
            self.channel.send(worker, {"unhold": report["unheld"]})
        for job_id in report["unheld"]:
            self.held.pop(job_id, None)
            self._gone(job_id)
        if report.get("launcher_gone") and self.held:
            self.ctx.log.error(f"the launcher died while its own {len(self.held)} task(s) ran: "
                               "they are recorded once its watchdog stopped them")
            self._orphans = True

    def _settle_holds(self, end: float, reason: str) -> None:
        """While stopping: wait (until ``end``) for the launcher to record its own tasks'
        ends (it stops them too) -- or, if it died (its stdin closed with tasks left), for
        its watchdog to stop them: then record RUN_TIMEOUT for each whose process group is
        gone (the others stay RUNNING, held, for the lease sweep: they may still run)."""
        while self.held and time.monotonic() < end:
            self._receive()  # the launcher's lines come in as worker 1's reports
            for job_id, pgid in list(self.held.items()) if self._orphans else ():
                if not pgid or not live_members(pgid):
                    del self.held[job_id]
                    self.status.timeout(job_id, f"{STOP_MESSAGE_PREFIX}{reason} (the launcher, "
                                                "which ran this task itself, died)")
                    self._gone(job_id)
            if self.held:
                time.sleep(0.01)
