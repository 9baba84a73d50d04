"""Serial-mode master (MPI rank 0): the only rank that talks to the database.

:class:`Master` owns the loop: it gets serial jobs from its claiming side (its base
:class:`balsam.launcher.serial_claims.MasterClaims`: claims in batches through :class:`JobSource`
or, at scale, :class:`Claimer` threads it never waits on), sends them to the workers
(:mod:`balsam.launcher.serial_worker`: a node's worth running on each node and some queued, more
when tasks are short; :class:`balsam.launcher.serial_dispatch.MasterDispatch`, its base), records
their reports through a :class:`StatusBuffer` or, at scale, K :class:`StatusWriters` threads
(RUNNING once a start is reported; one statement per flush; a RUN_DONE goes on to JOB_FINISHED
in the same update when nothing follows it), forwards user kills every ``kill_check_seconds``,
renews the lease and sweeps dead sessions (:class:`Housekeeper`), runs the processing pass
(:func:`transitions.advance`), and exits when idle only once :func:`transitions.outstanding` is
0 (a child waiting on its parent keeps it up) and no other live serial session holds work queued
that it could be given (:func:`idle_slots.givable`).

Stopping (``ctx.stop``: SIGTERM/SIGINT, or ``ctx.stop_at``): claims not sent are released,
workers stop their tasks (SIGTERM, ``ctx.grace()``, SIGKILL), each task stopped is recorded
RUN_TIMEOUT with the reason, every claim is released, then the workers exit. If the session was
swept, workers SIGKILL their tasks and nothing is recorded (the jobs may run elsewhere). While the
database is unreachable the master serves the workers and keeps state changes pending; after a
reconnection, holds it does not know of (a claim whose commit reply was lost) are reconciled.
"""
from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from balsam.core.retries import STOP_MESSAGE_PREFIX, WALLTIME_STOP_REASON
from balsam.db.idle_poll import IdlePoll
from balsam.defaults import IDLE_SLOTS_NOTIFY_CHANNEL as IDLE_CHANNEL
from balsam.errors import DatabaseUnavailable
from balsam.launcher import serial_mode as sm  # the master's exit statuses
from balsam.launcher.context import FINISHED_REASON, Context, Housekeeper, SessionLost
from balsam.launcher.job_source import JobSource
from balsam.launcher.rank_heartbeat import RankWatch
from balsam.launcher.serial_claims import CLAIMERS as CLAIMERS  # re-exported (tests, docs)
from balsam.launcher.serial_claims import MAX_CLAIM_BATCH as MAX_CLAIM_BATCH
from balsam.launcher.serial_claims import RATE_WINDOW_SECONDS, MasterClaims
from balsam.launcher.serial_dispatch import QUEUE_SECONDS as QUEUE_SECONDS  # re-exported
from balsam.launcher.serial_dispatch import MasterChannel as MasterChannel  # re-exported
from balsam.launcher.serial_dispatch import MasterDispatch
from balsam.launcher.serial_dispatch import work_item as work_item  # re-exported (tests)
from balsam.launcher.serial_holds import LauncherHolds
from balsam.launcher.serial_kills import MasterKills
from balsam.launcher.serial_share import MasterShare
from balsam.launcher.status_writers import StatusSink
from balsam.launcher.task import TaskSpec
from balsam.processing import transitions

ADVANCE_BUSY_SECONDS = 1.0
"""While tasks run, the processing pass runs at most this often (each pass is statements)."""
BYE_SECONDS = 5.0  # how long the master waits for every worker to acknowledge exit/abort
QUIET_SECONDS = 0.05
"""After this long without a report the loop naps ``QUIET_NAP_SECONDS`` (long tasks running)."""
QUIET_NAP_SECONDS = 0.01
FLOWING_NAP_SECONDS = (0.001, 0.002)
"""The nap while reports flow: while a worker's queue is below its refill mark; while every
queue is topped up (nothing urgent: half the wake-ups). A nap costs ~20-25 us of CPU on this
VM whatever its length; 4 ms while topped up, and a nap after an iteration that handled
reports too, halved the iterations per task but lowered the rate (issue 16, session 15: one
report per pass then, see ``RECEIVE_MISSES``)."""
RECEIVE_MISSES = 2
"""Reports are taken until this many receives in a row find none. With MPICH ch4:ucx a failed
matched probe makes progress, which brings in one waiting message: stopping at the first
miss took one report per loop iteration, however many waited (10 waiting: 1 per drain; with a
second probe, all 10), and a worker whose reports wait has its sends pile up (issue 16)."""
NOTIFY_POLL_SECONDS = 0.02
"""While reports flow, other sessions' notifications are polled at most this often (a
non-blocking read of the connection, ~10 us: it only brings a claim forward)."""


class Master(MasterClaims, MasterDispatch, LauncherHolds, RankWatch, MasterShare, MasterKills):
    """The master loop of one serial-mode launcher (see the module docstring)."""

    def __init__(self, ctx: Context, source: JobSource, status: StatusSink,
                 channel: MasterChannel) -> None:
        self.ctx, self.source, self.status, self.channel = ctx, source, status, channel
        self.t = ctx.tunables
        self.house = Housekeeper(ctx)
        self.queue: deque[TaskSpec] = deque()
        self.inflight: dict[str, int] = {}   # job id -> worker holding it (queued or running)
        self.weight: dict[str, float] = {}
        self.load = {w: 0.0 for w in channel.workers}
        self.closed: set[int] = set()        # workers stopping on a signal of their own
        self.drained: set[int] = set()
        self.gone: set[int] = set()          # workers that said bye
        self.kill_sent: set[str] = set()
        self._asked: dict[int, float] = {}  # recalls (serial_rebalance)
        self._fruitless: dict[int, tuple[float, float]] = {}
        self.held, self._orphans = {}, False  # the launcher's own tasks (LauncherHolds)
        self._ended, self._ended_since_advance = 0, False
        self._timeout_message = ""
        self._open_claimers()
        now = time.monotonic()
        self._last_flush = 0.0
        self._last_busy = now
        self._notified = False
        # Idle, the claim and the processing pass look on their own ever more rarely (a
        # notification brings them forward: :mod:`balsam.db.idle_poll`).
        self.claim_poll = IdlePoll(self.t.idle_wait_seconds, self.t.idle_poll_max_seconds)
        self.advance_poll = IdlePoll(self.t.idle_wait_seconds, self.t.idle_poll_max_seconds)
        self._advanced_at = now
        self._retry_due = math.inf  # when a job left backing off may be retried (a pass then)
        self._was_busy = False
        self._topped = False  # every open worker's queue topped up (set by _dispatch)
        # A new ensemble runs no task a user could have killed yet: the first check can wait.
        self._next = {"kill": now + self.t.kill_check_seconds, "advance": now, "claim": now,
                      "rate": now + RATE_WINDOW_SECONDS, "notify": now}

    # ---- main loop --------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until idle (non-persistent), stopped, or past ``ctx.stop_at``; returns
        ``sm.EXIT_IDLE``, ``sm.EXIT_TIME_LIMIT``, ``sm.EXIT_STOPPED`` (a signal), or
        ``sm.EXIT_SESSION_LOST`` (the session was swept: nothing was recorded)."""
        try:
            return self._run()
        finally:
            self._close_claimers()

    def _run(self) -> int:
        ctx = self.ctx
        ctx.db.listen()
        ctx.db.listen_also(IDLE_CHANNEL)  # other launchers' idle slots (serial_share)
        if ctx.ensembles:  # a failed ensemble's kept claims are not this one's to give back
            self.source.inherit(ctx.log.warning)
        self._claim(time.monotonic())  # work first: the heartbeat and the sweep can wait 1 ms
        self._dispatch()
        while not ctx.should_stop():
            busy = self._receive()
            now = time.monotonic()
            # Written at once when the master has nothing else to do (a lone job shows RUNNING
            # at once), but at most once per flush period: under load, in batches.
            if self.status.due() or (self.status.pending and not busy and
                                     now - self._last_flush >= self.status.flush_seconds):
                self._flush()
            try:
                self.house.beat(now)
            except SessionLost as exc:
                ctx.log.error(str(exc))
                ctx.exit_reason = "session lost"
                self._tell_all({"abort": True})
                return sm.EXIT_SESSION_LOST
            if self.house.take_released():  # our sweep's jobs: our own notification is unheard
                self._next["claim"] = self._next["advance"] = 0.0
                self.claim_poll.reset()
                self.advance_poll.reset()
            if now >= self._next["kill"]:
                self._next["kill"] = now + self.t.kill_check_seconds
                if self._kill_check_due():  # (holding nothing: none, see serial_kills)
                    self._check_kills()
                if self._ranks_lost(now):  # a worker sends no heartbeat: MPI_Abort
                    return sm.EXIT_RANK_LOST
            self._check_reconnect()
            busy = self._claim(now) or busy
            busy = self._dispatch() or busy
            self._rebalance(now)  # work waiting behind long tasks while a node idles
            self._share(now)  # idle slots published; surplus given to other launchers' idle
            if self.closed and self.closed | self.drained >= set(self.load):
                ctx.request_stop("every worker received a signal")
                break
            self._maybe_advance(now)
            self._rate_tick(now)
            if self.inflight or self.queue or self.status.pending:
                self.house.busy()
                self._was_busy = True
                self.claim_poll.reset()
                self.advance_poll.reset()
            elif self._claiming():
                pass  # the claim's answer decides whether the master is idle
            elif self._went_idle(now) or self.house.idle_exit(self._outstanding, now):
                ctx.log.info(f"exiting: {ctx.exit_reason}")
                self._release_all()
                self._tell_all({"exit": True, "recorded": True})
                return sm.EXIT_FINISHED if ctx.exit_reason == FINISHED_REASON else sm.EXIT_IDLE
            if busy:
                self._last_busy = now
            else:
                self._wait(now)
        self.shutdown(ctx.stop_reason)
        return (sm.EXIT_TIME_LIMIT if ctx.stop_reason == WALLTIME_STOP_REASON
                else sm.EXIT_STOPPED)

    def _went_idle(self, now: float) -> bool:
        """When the last task ended: run the processing pass at once (its JOB_FINISHED may leave
        nothing outstanding: the launcher exits without idling). Always False (then ``idle_exit``)."""
        if self._was_busy:
            self._was_busy = False
            self._idle_from = None  # (waits anew to be given work: serial_share)
            self._next["advance"] = 0.0
            self._maybe_advance(now)
        return False

    def _wait(self, now: float) -> None:
        """Nap after an iteration that did nothing: 1-2 ms while reports are flowing
        (``FLOWING_NAP_SECONDS``), longer when quiet; a job change by another session (or a
        signal) ends the nap at once (while reports flow: seen within ``NOTIFY_POLL_SECONDS``)."""
        flowing = (self.inflight or self.queue) and now - self._last_busy < QUIET_SECONDS
        if flowing or self._claiming():  # a claim's answer is taken at once too
            time.sleep(FLOWING_NAP_SECONDS[self._topped and not self._claiming()])
            notified = False
            if now >= self._next["notify"]:
                self._next["notify"] = now + NOTIFY_POLL_SECONDS
                notified = self.ctx.db.notified()
        else:
            nap = QUIET_NAP_SECONDS if self.inflight or self.queue else min(
                0.2, self.t.idle_wait_seconds,
                max(0.001, self.house.next_outstanding_check - now))
            fds = [self.ctx.wakeup_fd] if self.ctx.wakeup_fd is not None else []
            notified = self.ctx.db.wait(nap, fds)
        if notified:  # jobs changed elsewhere: process (at most every idle_wait_seconds), and
            self._notified = True  # claim at once if jobs were left claimable (migration 0024)
            self._next["advance"] = min(self._next["advance"],
                                        self._advanced_at + self.t.idle_wait_seconds)
            self.advance_poll.reset()
            if self.ctx.db.runnable():
                self._next["claim"] = 0.0
                self.claim_poll.reset()

    def _outstanding(self) -> int:
        """Work this launcher could still run: outstanding in its filter, or else queued (not
        started) in another live serial session, which gives it back to idle slots
        (:func:`idle_slots.givable`): the launcher stays, publishing its idle slots, for at
        most ``serial_share.GIVEN_WITHIN_SECONDS`` without being given any."""
        ctx = self.ctx
        return ctx.db.try_run(transitions.outstanding, ctx.session_id, ctx.wf_filter,
                              serial=True, max_nodes=1, processing=ctx.processing,
                              tags=ctx.tags, gpus_per_node=ctx.gpus_per_node) or self._givable()

    # ---- worker reports ---------------------------------------------------------------------
    def _receive(self) -> bool:
        got, misses = False, 0
        while True:
            item = self.channel.receive()
            if item is None:
                misses += 1
                if misses >= RECEIVE_MISSES:
                    return got
                continue
            got, misses = True, 0
            self._handle(*item)

    def _handle(self, worker: int, report: Mapping[str, Any]) -> None:
        status = self.status
        if "unheld" in report:  # the launcher's own tasks (warm start) ended, or it died
            self._unheld(worker, report)
        if report.get("started"):
            status.started(report["started"])
        if report.get("outcomes"):  # written in the transaction of the ends they go with
            status.pyfunc_outcomes(report["outcomes"])
        for job_id in report.get("done", ()):
            status.done(job_id)
            self._gone(job_id)
        for job_id, rc, tail in report.get("failed", ()):
            status.error(job_id, tail if rc == -1 else f"exit code {rc}:\n{tail}")
            self._gone(job_id)
        for job_id, rc in report.get("stopped", ()):
            status.timeout(job_id, self._timeout_message or
                           f"stopped by the launcher's worker {worker} (exit code {rc})")
            self._gone(job_id)
        for job_id, rc in report.get("terminated", ()):
            from balsam.launcher.procs import stopped_from_outside  # (rare; ~10 ms at import)

            name = stopped_from_outside(rc)
            status.timeout(job_id, f"terminated by {name} from outside the launcher (exit code "
                                   f"{rc}): the batch job ending?")
            self._gone(job_id)
        for job_id in list(report.get("killed", ())) + list(report.get("returned", ())):
            status.release(job_id)
            self._gone(job_id)
        if "recalled" in report:
            self._recalled(worker, report)
        if report.get("stopping"):
            self.ctx.log.info(f"worker {worker} received a signal and stops its tasks")
            self.closed.add(worker)
        if report.get("drained"):
            self.drained.add(worker)
        if report.get("bye"):
            self.gone.add(worker)
            self._said_bye(worker, report)  # how many heartbeats it sent (RankWatch)

    def _release_recalled(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:  # never started: claimable again, here first
            self.status.release(job_id)
        self._flush()
        self._releasing |= frozenset(job_ids)  # claimed again once committed (rebalance)

    def _gone(self, job_id: str) -> None:
        worker = self.inflight.pop(job_id, None)
        if worker is not None:
            self.load[worker] -= self.weight.pop(job_id, 0.0)
            self._ended += 1
            self._ended_since_advance = True
        self.kill_sent.discard(job_id)

    # ---- database work ----------------------------------------------------------------------
    def _flush(self, before: Optional[float] = None) -> None:
        self._last_flush = time.monotonic()
        written = self.status.flush(before=before)
        if written is None:
            return
        for job_id in written.not_started:  # killed/changed by a user before RUNNING was written
            self._forward_kill(job_id)

    def _maybe_advance(self, now: float) -> None:
        if not self.ctx.processing or now < self._next["advance"]:
            return
        idle = not (self.inflight or self.queue)
        if not (self._ended_since_advance or idle or self._notified or now >= self._retry_due):
            return
        self._notified = False
        if self.status.pending:
            self._flush()
        try:
            done = self.ctx.db.try_run(transitions.advance_pass, self.ctx.wf_filter,
                                       self.t.processing_batch, self.t.retry_policy())
            moved, retry_in = done.moved, done.retry_in
        except DatabaseUnavailable:
            moved, retry_in = {}, None
        # A retry whose back-off runs out is announced by no statement: pass again then, but
        # spaced as after a notification (staggered back-offs: a pass per spacing, not per job).
        spacing = self.t.idle_wait_seconds if idle else ADVANCE_BUSY_SECONDS
        self._retry_due = math.inf if retry_in is None else now + max(retry_in, spacing)
        self._ended_since_advance = False
        self._advanced_at = now
        if not idle:
            self._next["advance"] = now + ADVANCE_BUSY_SECONDS
        elif any(n for kind, n in moved.items() if kind != "retry"):
            # a cascade (parent finished -> child ready) may go on; a retry (RESTART_READY,
            # claimed) leaves the next pass nothing: staggered ones come at ``_retry_due``
            self._next["advance"] = now + 0.05
            self.advance_poll.reset()
        else:  # idle and nothing moved: backing off (a notification brings it forward)
            self._next["advance"] = now + self.advance_poll.empty()
        self._next["advance"] = min(self._next["advance"], self._retry_due)
        if any(moved.values()):
            self._next["claim"] = 0.0
            self.house.busy()

    # ---- ending -----------------------------------------------------------------------------
    def shutdown(self, reason: str) -> None:
        """Stop every task (recorded RUN_TIMEOUT: ``reason``), release all claims, tell workers to exit."""
        ctx = self.ctx
        ctx.log.info(f"stopping {len(self.inflight)} task(s): {reason}")
        self._timeout_message = STOP_MESSAGE_PREFIX + reason
        self._close_claimers()
        for spec in self.queue:
            self.status.release(spec.job_id)
        self.queue.clear()
        grace = ctx.grace()
        self._tell_all({"stop": grace}, wait=False)
        end = time.monotonic() + grace + 3.0
        while self.drained < set(self.load) and time.monotonic() < end:
            if not self._receive():
                time.sleep(0.002)
            if self.status.due():
                self._flush()
        if self.drained < set(self.load):
            ctx.log.warning(f"workers {sorted(set(self.load) - self.drained)} did not report "
                            "their tasks stopped in time")
        self._settle_holds(end, reason)  # the launcher's own tasks (it stops them too)
        self._flush(before=time.monotonic() + 3.0)
        self._release_all()
        self._tell_all({"exit": True, "recorded": not self.status.pending})

    def _release_all(self) -> None:
        self._close_claimers()
        try:
            self.ctx.db.run_before(time.monotonic() + 3.0, self.source.release_all_in)
        except DatabaseUnavailable as exc:
            self.ctx.log.warning(f"could not release the claims ({exc}): closing the session will")

    def _tell_all(self, message: dict[str, Any], wait: bool = True) -> None:
        """Send ``message`` to every worker; with ``wait`` (exit, abort), wait until each
        said bye, so no worker is still busy when the MPI job ends."""
        for worker in self.load:
            self.channel.send(worker, message)
        end = time.monotonic() + BYE_SECONDS
        while wait and self.gone < set(self.load) and time.monotonic() < end:
            if not self._receive():
                time.sleep(0.002)
        self._settle_beats(end if wait else time.monotonic())  # all received before Finalize
        self.channel.flush(max(0.0, end - time.monotonic()) if wait else 0.0)
