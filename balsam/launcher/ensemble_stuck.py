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
tunables (10-s heartbeat, 60-s lease, 30-s back-off) it is 50 s, under the lease, so a master
that froze while running is replaced before a sweep could hand its jobs to another launcher. A
new ensemble first gets ``max(limit, lease_seconds)`` to come up (MPI start-up on a loaded
machine; the lease may be old already when a stuck one is replaced). Ages follow the sweep's
rule (counted from the server's start if it restarted since), a session closed under a running
ensemble counts as stuck, and while the database cannot be reached nothing is decided. A gap of
more than half the limit between two looks means the launcher did not run either (the job was
suspended, e.g. ``scontrol suspend``, and its master with it): the master then gets half the
limit to renew the lease before it is judged.

Once it looks, it also judges by the fence's rule (:func:`balsam.launcher.fence.fence_after`:
the lease less the worker watchdogs' kill grace less a margin, 57 s with the defaults, less
:data:`READ_ALLOWANCE_SECONDS`) and looks again no later than the age could reach it: with the
defaults a check every 12.5 s against the 50-s limit could find a master stuck only at a lease
age of 62.5 s, after another launcher could have swept the session and run its jobs again
beside the ensemble's tasks.

If the launcher's own connection hangs too (the node cut off from the database), no look
returns. From its first confirmed look on, the launcher has a fence of its own
(:func:`balsam.launcher.fence.start_serial_fence`, a thread): each confirmed look moves it to
the look's send time less the age it read (the lease runs a whole lease from then at least);
:func:`fence_after` later with no newer confirmed look, it SIGKILLs the ensemble, stops the
launcher's own tasks and ends the process with status 1, the session left to a sweep. That
fence is armed when the ensemble starts (its tasks start within a second), counting from the
lease's last confirmed renewal (the session's opening for the first ensemble; a later one's
launcher renews the lease first, as the old ensemble's last look may be old), and the first
look comes before it would fire, also within the start-up (which judges by the fence's rule
only: the master may not have renewed yet). Before, it was armed at the first confirmed look,
``max(limit, lease)`` after the start: an ensemble starting while the node was cut off ran its
tasks past the lease. Not covered (docs/architecture.md, "Fencing"): the half limit after a
suspension.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

from balsam.core import leases
from balsam.errors import DatabaseUnavailable
from balsam.launcher.fence import LeaseFence, fence_after, start_serial_fence
from balsam.launcher.fence import stuck_after as stuck_after  # (moved there; tests read it here)

if TYPE_CHECKING:
    from balsam.launcher.context import Context


READ_ALLOWANCE_SECONDS = 2.0
"""With the launcher's own fence (:func:`start_serial_fence`; a :class:`StuckWatch` given the
ensemble's ``pgid``) a check judges by the fence's rule this much early: its read, sent up to a
loop's nap late, must be confirmed before that fence would fire."""


class StuckWatch:
    """Looks at the lease of ``ctx``'s session every ``max(heartbeat, limit / 4)`` seconds
    while one ensemble runs (see the module docstring). The ensemble, started when this is
    made, has ``max(limit, lease_seconds)`` to come up before it can be found stuck: the lease
    may be old already (a restart after a stuck master), and MPI start-up on a loaded machine
    takes seconds."""

    def __init__(self, ctx: Context, now: Optional[float] = None, pgid: int = 0) -> None:
        self.ctx = ctx
        self.pgid = pgid
        self.limit = stuck_after(ctx.tunables)
        self.fence = fence_after(ctx.tunables) - (READ_ALLOWANCE_SECONDS if pgid else 0.0)
        self.lease_fence: Optional[LeaseFence] = None
        self.period = max(ctx.tunables.heartbeat_seconds, self.limit / 4.0)
        self.started = time.monotonic() if now is None else now
        self.up_by = self.started + max(self.limit, ctx.tunables.lease_seconds)
        """The end of the ensemble's start-up: until then the master is judged by the fence's
        rule only (it may not have renewed the lease yet)."""
        self.next_check = self.up_by
        self.looked = self.started
        if pgid:  # fenced from its start (tasks start within a second), not from a first look
            since = self._arm()
            self.next_check = min(self.next_check, since + self.fence)

    def stuck(self, now: float) -> Optional[str]:
        """Why the ensemble is stuck, if a check is due and finds it so; else None. A session
        closed under a running ensemble (swept by another launcher: the master, had it been
        alive, would have exited on its next heartbeat) is stuck too. After a gap of more than
        half the limit since the last call (a suspended job) the next check waits half the
        limit."""
        gap, self.looked = now - self.looked, now
        if gap > self.limit / 2.0:
            self.next_check = max(self.next_check, now + self.limit / 2.0)
        if now < self.next_check:
            return None
        self.next_check = now + self.period
        if self.lease_fence is not None and self.lease_fence.fired:
            return None  # the fence is killing everything and ending the process
        sent = time.monotonic()
        try:
            age = self.ctx.db.try_run(leases.lease_age, self.ctx.session_id)
        except DatabaseUnavailable:
            return None
        if age is None:
            self.close()
            return f"its session {self.ctx.session_id} was closed by a sweep"
        limit = min(self.limit, self.fence) if now >= self.up_by else self.fence
        if age > limit:
            self.close()
            return f"its master has not renewed the lease for {age:.0f} s (limit {limit:g} s)"
        self.next_check = min(self.next_check, now + self.fence - age)
        self._confirmed(sent - age)
        return None

    def _arm(self) -> float:
        """Start the launcher's own fence (the module docstring, last paragraph) from the
        lease's last confirmed renewal (``ctx.lease_since``: the session's opening, or the last
        confirmed look of an earlier ensemble's watch; renewed here first if older than a
        heartbeat -- a new ensemble after a failed one -- while the fence counts from it, so
        that a hung statement cannot delay it). Returns the time it counts from."""
        ctx = self.ctx
        since = max(ctx.opened_at, ctx.lease_since)
        self.lease_fence = start_serial_fence(ctx, self.pgid, since)
        if time.monotonic() - since > ctx.tunables.heartbeat_seconds:
            sent = time.monotonic()
            try:
                if ctx.db.try_run(leases.heartbeat, ctx.session_id):
                    since = sent
                    self._confirmed(sent)
            except DatabaseUnavailable:
                pass
        ctx.log.info(f"lease fence armed for the serial-mode ensemble (it fires "
                     f"{self.lease_fence.after:g} s after the lease was last renewed by the "
                     "latest confirmed look)")
        return since

    def _confirmed(self, expires_after: float) -> None:
        """The lease runs a whole lease from ``expires_after`` at least: move the launcher's
        own fence (and the bound the next ensemble's starts from)."""
        if self.lease_fence is not None:
            self.lease_fence.renewed(expires_after)
            self.ctx.lease_since = max(self.ctx.lease_since, expires_after)

    def close(self) -> None:
        """Stop the launcher's own fence (the ensemble is being killed or has ended)."""
        if self.lease_fence is not None:
            self.lease_fence.close()
