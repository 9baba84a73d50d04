"""What every launcher mode is given, and the housekeeping both modes share.

:class:`Context` is built once by :func:`balsam.launcher.main.run` (the composition root) and
handed to the mode: the DB path and settings, the tunables, the (sliced) allocation, the
database connection, the open session, the one stop event (set by SIGTERM/SIGINT; no module
flags), the time at which tasks must be stopped, the MPI flavour and the logger.

:class:`Housekeeper` does what a mode's loop must do besides running tasks: renew the session
lease every ``heartbeat_seconds`` (raising :class:`SessionLost` if the session was swept: the
mode then kills its tasks, records nothing and exits non-zero), sweep expired sessions of other
launchers every few heartbeats, and decide when a non-persistent launcher has been idle long
enough to exit. A launcher is not idle while a session that looks dead (no heartbeat for
``STALE_HEARTBEATS`` periods) holds jobs it could run: it sweeps that session the moment its
lease expires (:func:`leases.holders_elsewhere`), then runs them; and while live sessions hold
such jobs it stays idle long enough to see a missed heartbeat before it exits. A launcher
whose work is done exits at once, without idling, when nothing could bring it more: nothing
outstanding and no other session or service alive (:meth:`Housekeeper.idle_exit`). All its database calls are
non-blocking (:meth:`Database.try_run`): while the database is away they are skipped and
retried on the next call.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from balsam.core.retries import WALLTIME_STOP_REASON
from balsam.core.tunables import Tunables as Tunables  # its old home: imports keep working
from balsam.db.database import Database
from balsam.errors import BalsamError, DatabaseUnavailable
from balsam.platform.allocation import Allocation

SWEEP_EVERY_HEARTBEATS = 3
FIRST_IDLE_CHECK_SECONDS = 0.05
"""How soon after going idle a launcher first looks whether anything is left to run."""
FINISHED_REASON = "nothing left to run and no other launcher or service to add work"
"""The exit reason of a launcher that ran its work and found nothing more could come."""
STALE_HEARTBEATS = 1.5
"""A session whose heartbeat is this many periods old looks dead (the lease decides)."""


class Fence(Protocol):
    """What the :class:`Housekeeper` needs of a :class:`balsam.launcher.fence.LeaseFence`."""

    after: float

    @property
    def fired(self) -> bool: ...

    def renewed(self, sent_at: float) -> None: ...


class SessionLost(BalsamError):
    """The launcher's session was closed by a sweep (its lease expired): its jobs may already
    run elsewhere, so it must stop its tasks and record nothing."""


@dataclass
class Context:
    """Everything a launcher mode needs (see the module docstring).

    ``stop_at`` is a ``time.monotonic()`` time (None: no limit) at which running tasks must be
    stopped: the end of ``--time-limit-minutes`` or of the allocation, less the walltime margin.
    ``stop_grace`` is the SIGTERM-to-SIGKILL grace used then (it fits in the margin).
    """

    db_path: str
    settings: dict[str, Any]
    tunables: Tunables
    alloc: Allocation
    db: Database
    session_id: int
    job_mode: str
    wf_filter: Optional[str]
    persistent: bool
    processing: bool
    gpus_per_node: int
    stop: threading.Event
    log: logging.Logger
    base_env: dict[str, str]
    flavour: str
    mpi_executable: Optional[str]
    stop_at: Optional[float] = None
    stop_grace: float = 5.0
    stop_reason: str = ""
    exit_reason: str = field(default="")
    watchdog: Optional[Any] = None
    """A :class:`balsam.launcher.watchdog.Watchdog` the mode registers its task process groups
    with, so they die if the launcher is killed (None: not covered)."""
    ensembles: int = 0
    """Serial mode: how many ensembles this session started before the current one."""
    ensemble_since: int = 0
    """Serial mode: the last job event id written before the current ensemble began (the
    RUNNING events of its starts come after it: :mod:`balsam.core.serial_reports`)."""
    stuck_ensembles: int = 0
    """Serial mode: how many ensembles the launcher killed because their master stopped
    renewing the lease (:mod:`balsam.launcher.ensemble_stuck`); such a one is restarted."""
    release_session: bool = True
    """False when tasks of this session may still run (a serial ensemble died and its worker
    watchdogs did not report them dead): the session is then left to the lease sweep."""
    settled_reports: list[str] = field(default_factory=list)
    """Serial mode: the file names of the last ensemble's final reports whose starts its
    settle recorded (:func:`balsam.launcher.ensemble_watch.settle`)."""
    wakeup_fd: Optional[int] = None
    """Readable when a signal arrived (``signal.set_wakeup_fd``): add it to what a loop waits
    on, so SIGTERM/SIGINT wake it at once (drain it if the loop goes on waiting)."""
    mpi_reason: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    """Run only jobs whose tags hold every one of these (``--tag KEY=VALUE``; empty: any)."""
    """Why ``mpi_executable`` was chosen (:class:`balsam.platform.mpi.choice.LauncherChoice`)."""
    after_start: Optional[Any] = None
    """Called (once, no arguments) when the mode's tasks can start: serial mode calls it right
    after launching its ensemble, so what it starts (the transition workers) does not compete
    with the ensemble's start-up."""

    prestarted: Optional[Any] = None
    """Serial mode: the ensemble its ``prestart`` started before the session opened (a
    :class:`balsam.launcher.ensemble_stdin.Launched`), which its ``run`` adopts."""
    carried: Optional[Any] = None
    """Serial mode: the launcher's own tasks (a :class:`balsam.launcher.warm_start.WarmStart`)
    still running when its ensemble failed; the next ensemble gets their shares of node 1."""
    watch_dir: str = ""
    """Serial mode: where its worker ranks' watchdogs report (set at its first launch:
    :func:`balsam.launcher.serial_mode.watch_dir`; read by :mod:`.ensemble_watch`)."""

    opened_at: float = 0.0
    """``time.monotonic()`` when the session's opening statement was sent: its first lease
    runs from then at the earliest (:class:`balsam.launcher.fence.LeaseFence` counts from it)."""
    lease_since: float = 0.0
    """Serial mode: the latest ``time.monotonic()`` from which the lease runs a whole lease at
    least, as confirmed looks at it found (:mod:`balsam.launcher.ensemble_stuck`)."""

    def started(self) -> None:
        """The mode is up: run :attr:`after_start` once."""
        hook, self.after_start = self.after_start, None
        if hook is not None:
            hook()

    def request_stop(self, reason: str) -> None:
        """Ask the mode to stop its tasks and exit (signal handlers call this)."""
        if not self.stop_reason:
            self.stop_reason = reason
        self.stop.set()

    def seconds_left(self, now: Optional[float] = None) -> float:
        """Seconds until tasks must be stopped (``math.inf`` without a limit; never < 0)."""
        if self.stop_at is None:
            return math.inf
        return max(0.0, self.stop_at - (time.monotonic() if now is None else now))

    def max_wall_minutes(self) -> Optional[float]:
        """Longest ``wall_time_minutes`` a job may have to be started now (None: any)."""
        left = self.seconds_left()
        return None if math.isinf(left) else left / 60.0

    def should_stop(self) -> bool:
        """A signal arrived or the time is up."""
        if self.stop.is_set():
            return True
        if self.stop_at is not None and time.monotonic() >= self.stop_at:
            self.request_stop(WALLTIME_STOP_REASON)
            return True
        return False

    def grace(self) -> float:
        """SIGTERM-to-SIGKILL grace for a stop now."""
        deadline_stop = self.stop_reason == WALLTIME_STOP_REASON
        return self.stop_grace if deadline_stop else self.tunables.shutdown_grace_seconds


class Housekeeper:
    """Heartbeat, sweep and idle-exit bookkeeping for one session (see the module docstring)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.beats = 0
        self.next_beat = time.monotonic()  # the first beat (and sweep) at once
        self.idle_since: Optional[float] = None
        self.next_outstanding_check = 0.0
        self._check_gap = FIRST_IDLE_CHECK_SECONDS
        self.worked = False
        """The launcher ran or processed something (only then may it exit without idling)."""
        self.min_idle = 0.0
        """Shortest idle time before exiting (other sessions hold jobs: see if they renew)."""
        self.next_sweep: Optional[float] = None
        """When a session holding jobs this launcher could run expires (None: none known)."""
        self.swept: list[tuple[int, int]] = []
        self.released = False
        """A sweep of ours closed sessions since :meth:`take_released` (their jobs were
        released by our own statement, whose notification this launcher does not hear)."""
        self.fence: Optional[Fence] = None
        """Told of every confirmed renewal (MPI mode: :mod:`balsam.launcher.fence`)."""

    def fenced(self) -> None:
        """SessionLost if the fence stopped the tasks (no renewal confirmed in time)."""
        fence = self.fence
        if fence is not None and fence.fired:
            raise SessionLost(f"no renewal of session {self.ctx.session_id}'s lease was "
                              f"confirmed for {fence.after:g} s: its tasks were stopped before "
                              "the lease could expire; stopping without recording anything")

    def due_in(self, now: float) -> float:
        """Seconds until :meth:`beat` has work."""
        due = self.next_beat if self.next_sweep is None else min(self.next_beat, self.next_sweep)
        return max(0.0, due - now)

    def beat(self, now: Optional[float] = None) -> None:
        """Renew the lease (and sweep) if due; SessionLost if the session was swept or the
        fence stopped the tasks (:meth:`fenced`)."""
        self.fenced()
        now = time.monotonic() if now is None else now
        if self.next_sweep is not None and now >= self.next_sweep:
            self.next_sweep = None
            self.sweep()
        if now < self.next_beat:
            return
        from balsam.core import leases  # imported late: the launcher starts its ensemble first

        ctx = self.ctx
        sent = time.monotonic()
        try:
            alive = ctx.db.try_run(leases.heartbeat, ctx.session_id)
        except DatabaseUnavailable:
            self.next_beat = now + min(1.0, ctx.tunables.heartbeat_seconds)
            self.fenced()  # (the fence may have cut a statement that hung)
            return
        self.fenced()  # fired while the statement hung: the tasks are gone, whatever it says
        if alive and self.fence is not None:
            self.fence.renewed(sent)
        if not alive:
            raise SessionLost(f"session {ctx.session_id} was closed by a sweep (its lease of "
                              f"{ctx.tunables.lease_seconds} s expired): stopping without "
                              "recording anything")
        self.beats += 1
        self.next_beat = now + ctx.tunables.heartbeat_seconds
        if self.beats % SWEEP_EVERY_HEARTBEATS == 1:
            self.sweep()

    def sweep(self) -> None:
        """Close the sessions of launchers whose lease expired (their RUNNING jobs time out)."""
        from balsam.core import leases

        try:
            swept = self.ctx.db.try_run(leases.sweep_sessions, self.ctx.db_path)
        except DatabaseUnavailable:
            return
        for line in leases.after_sweep(self.ctx.db_path, swept):
            self.ctx.log.warning(line)
        self.swept += [(s.session, s.timed_out) for s in swept]
        self.released = self.released or bool(swept)

    def take_released(self) -> bool:
        """Whether a sweep of ours released jobs since the last call: the loop then claims
        and processes at once (its own notification wakes no look of its own)."""
        hit, self.released = self.released, False
        return hit

    def busy(self) -> None:
        """The launcher runs something: not idle. The next idle iteration looks at once
        whether anything is left (:meth:`idle_exit`)."""
        self.idle_since = None
        self.worked = True
        self.next_outstanding_check = 0.0
        self._check_gap = FIRST_IDLE_CHECK_SECONDS

    def idle_exit(self, outstanding: Any, now: Optional[float] = None) -> bool:
        """Whether a launcher running nothing should exit now. ``outstanding`` is a callable
        returning :func:`balsam.processing.transitions.outstanding`, called 50 ms after the
        launcher went idle, then at doubling intervals up to ``idle_poll_max_seconds`` (it was
        ``idle_wait_seconds`` before session 20), and when the idle time is up. With
        nothing outstanding, a launcher that has run or processed something exits at once
        when no other session or service could add work (:func:`leases.others_alive`;
        ``ctx.exit_reason`` is :data:`FINISHED_REASON`); otherwise after ``idle_exit_seconds``
        of idling (a launcher that found nothing at all waits for work to be submitted).
        Persistent launchers never exit for lack of work."""
        ctx = self.ctx
        if ctx.persistent:
            return False
        now = time.monotonic() if now is None else now
        t = ctx.tunables
        if now >= self.next_outstanding_check:
            from balsam.core import leases

            gap = min(self._check_gap, t.idle_poll_max_seconds)
            self._check_gap = gap * 2
            self.next_outstanding_check = now + gap
            try:
                count = outstanding() or self._stranded(now)
                finished = not count and self.worked and not ctx.db.try_run(
                    leases.others_alive, ctx.session_id)
            except DatabaseUnavailable:
                count = 1  # unknown: not idle
            if count:
                self.idle_since = None
                return False
            if finished:
                ctx.exit_reason = FINISHED_REASON
                return True
            if self.idle_since is None:
                self.idle_since = now
            # Looked at again when the idle time is up: the exit goes by a fresh count.
            self.next_outstanding_check = min(self.next_outstanding_check, self.idle_since
                                              + max(t.idle_exit_seconds, self.min_idle))
        if self.idle_since is None:
            return False
        if now - self.idle_since >= max(ctx.tunables.idle_exit_seconds, self.min_idle):
            ctx.exit_reason = f"idle for {ctx.tunables.idle_exit_seconds:g} s with nothing to run"
            return True
        return False

    def _stranded(self, now: float) -> int:
        """1 if a session that stopped renewing its lease holds jobs this launcher could run
        (a sweep is then scheduled for when it expires), else 0. While other sessions hold
        such jobs, idling lasts long enough to see whether they renew (``min_idle``)."""
        from balsam.core import leases

        ctx = self.ctx
        serial = ctx.job_mode == "serial"
        holders = ctx.db.try_run(leases.holders_elsewhere, ctx.session_id, serial=serial,
                                 max_nodes=1 if serial else ctx.alloc.num_nodes,
                                 wf_filter=ctx.wf_filter, tags=ctx.tags,
                                 gpus_per_node=ctx.gpus_per_node)
        period = ctx.tunables.heartbeat_seconds
        self.min_idle = (STALE_HEARTBEATS * period + ctx.tunables.idle_wait_seconds
                         if holders else 0.0)
        stale = [expires for age, expires in holders if age > STALE_HEARTBEATS * period]
        if not stale:
            return 0
        expires_in = max(0.0, min(stale))
        if self.next_sweep is None:
            ctx.log.info(f"a launcher session that stopped renewing its lease holds jobs this "
                         f"launcher can run: sweeping it in {expires_in:.1f} s")
        # A little after the expiry: the database's clock decides, and it must have passed.
        self.next_sweep = now + expires_in + 0.2
        return 1
