"""A serial-mode ensemble whose master stopped renewing the lease is stuck: the launcher kills it.

The master (rank 0) renews the session's lease every ``heartbeat_seconds`` from its loop
(:class:`balsam.launcher.context.Housekeeper`). While the MPI launch runs, the launcher
(:func:`balsam.launcher.serial_mode.run_launcher`) looks at the lease's age now and then
(:class:`StuckWatch`, one short query): an age past :func:`stuck_after` means the master is
frozen, blocked, or never got through the MPI start-up. Before, the launcher then waited on the
launch until its time limit -- forever without one -- holding its jobs and nodes while no task
ran, and another launcher could only wait for the lease and sweep. Now it kills the launch
(SIGKILL to its process group: the master's connection, and any row lock it held, go with it)
and :func:`balsam.launcher.ensemble_restart.run_serial` starts a new ensemble as after a dead
rank (the worker watchdogs stop the tasks and report; starts never recorded are recorded),
even when no worker had come up.

The limit is above what a live master can miss (a reconnection's back-off,
``reconnect_max_seconds``, plus two heartbeats) and at least half the lease; with the default
tunables (10-s heartbeat, 60-s lease, 30-s back-off) it is 50 s, under the lease, so a stuck
master is replaced before a sweep could hand its jobs to another launcher. Ages follow the
sweep's rule (counted from the server's start if it restarted since), and while the database
cannot be reached nothing is decided.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

from balsam.core import leases
from balsam.core.tunables import Tunables
from balsam.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from balsam.launcher.context import Context


def stuck_after(tunables: Tunables) -> float:
    """Seconds without a lease renewal after which an ensemble's master is stuck."""
    return max(tunables.lease_seconds / 2.0,
               tunables.reconnect_max_seconds + 2.0 * tunables.heartbeat_seconds)


class StuckWatch:
    """Looks at the lease of ``ctx``'s session every ``max(heartbeat, limit / 4)`` seconds
    (see the module docstring)."""

    def __init__(self, ctx: Context, now: Optional[float] = None) -> None:
        self.ctx = ctx
        self.limit = stuck_after(ctx.tunables)
        self.period = max(ctx.tunables.heartbeat_seconds, self.limit / 4.0)
        self.next_check = (time.monotonic() if now is None else now) + self.period

    def stuck(self, now: float) -> Optional[float]:
        """The lease's age if a check is due and the age is past the limit, else None."""
        if now < self.next_check:
            return None
        self.next_check = now + self.period
        try:
            age = self.ctx.db.try_run(leases.lease_age, self.ctx.session_id)
        except DatabaseUnavailable:
            return None
        return age if age is not None and age > self.limit else None
