"""MPI mode: one MPI launch per job, on whole nodes of the allocation.

Nodes are slots addressed by index (idle or running one job). Claimed jobs wait in a short
queue (held, not RUNNING: at most as many as the allocation has nodes, single-node ones while
every node is busy) so that a node that frees up starts the next job at once. Each loop
iteration:

1. reap finished tasks and free their nodes (:mod:`balsam.launcher.mpi_runs` says how an exit
   is recorded);
2. start ready jobs (already recorded RUNNING, see below) on the idle nodes: no database
   round trip between a node freeing and its next launch;
3. one transaction, only when there is something to do and none is in flight, whose routine
   part is ONE statement (:func:`leases.cycle`): the ends just reaped, RUNNING for the queued
   jobs that fit the idle nodes now (largest first; recorded before their launch) and for
   single-node jobs *ready ahead* (below), and a claim topping the queue up.
   Besides, when due: the processing pass (:func:`transitions.advance`; every 0.1 s while it
   makes jobs runnable, else every second while tasks run), which running or queued jobs a
   user killed, releasing claims that will not run (killed, changed, or too long for the
   time left), and moving jobs no task can be built for to FAILED. While tasks run, the
   transaction runs on a helper thread (the database connection is its own until the result
   lands): tasks end and ready jobs start while it commits, and the ends that arrive meanwhile
   share the next commit (group commit). An idle launcher waits for it (claim and start in one
   transaction, as before);
4. when its result lands, start the jobs it marked RUNNING (:mod:`balsam.launcher.mpi_runs`);
5. wait for a task to exit (pidfds), the transaction to land, a notification from another
   session (a job became runnable, a user killed a job), or the next timer -- never a fixed
   sleep. Idle, its own periodic look (claim and processing pass, one transaction) backs off
   from ``idle_wait_seconds`` to ``idle_poll_max_seconds`` (:mod:`balsam.db.idle_poll`); a
   notification, or work found, brings it back, and it comes no later than the moment a job
   the last pass left backing off may be retried (``PassResult.retry_in``).

**Ready ahead.** RUNNING is always committed before a task starts (so a launcher that dies
never leaves a started job unrecorded), but a commit waits for the WAL flush: with short tasks
a node would idle for it at every start, and each commit costs the server as much as ~10 jobs.
So while the recent runs are short (an average under 1 s) and no multi-node job waits in the
queue (it needs nodes idle at once), a few single-node jobs (:mod:`balsam.launcher.ready_ahead`:
two per node, at least 16 with runs under 0.1 s, at most 32) are recorded RUNNING before a
node is free ("launcher session N, ready ahead of a free node"), refilled when half are left
and topped up by any transaction that goes anyway (the claim topping the queue up rides with
them: no transaction for a claim alone while the queue holds the next refill), and start the
moment one frees. Such a job shows RUNNING for a few short runs (at most that many
launches) before its process starts; if the launcher dies meanwhile the sweep records it
RUN_TIMEOUT, "did not run" (no retry used) if its watchdog reports it was never launched
(:mod:`balsam.core.launch_reports`; so for a launcher dying between a commit and its
launch), else as a run (retried); if it stops
(signal, time limit) the job is recorded RUN_TIMEOUT with the stop's message saying it did
not start; one a user kills is dropped at the next kill check, its RUNNING visit marked as no
run when its hold is dropped (:func:`balsam.core.killed_starts.record_unlaunched`), or, if a
node freed first, started and stopped like any running job. With long runs nothing is ready ahead: a commit
is nothing beside them.

At steady state that is at most one statement per task start (and end), fewer when ends
arrive during a commit or jobs are ready ahead, plus a processing pass a second, the kill
check and the heartbeat. A recorded RUN_DONE goes on to JOB_FINISHED in the same row update
where nothing is left to postprocess or stage out (``transitions.FINISH_ON_RECORD``, as
serial mode records ends).

Who does what: this module holds the loop (:class:`MPIMode`: when a transaction goes and what
it carries, ready ahead) and :class:`MPILauncherMode`; :mod:`balsam.launcher.mpi_cycle` (a
base of :class:`MPIMode`) is the transaction itself; :mod:`balsam.launcher.mpi_runs` (its
base) starts (:mod:`balsam.launcher.mpi_spawn`), reaps and stops the runs on the nodes
(stopping: signal, time limit, idle exit; then :mod:`balsam.launcher.main` closes the
session, releasing every claim); :mod:`balsam.launcher.flight` runs the transaction on the
helper thread.
"""
from __future__ import annotations

import time
from typing import Any, Optional

from balsam.core import launch_reports
from balsam.db.idle_poll import IdlePoll
from balsam.errors import DatabaseUnavailable
from balsam.launcher import ready_ahead, spawn
from balsam.launcher.context import Context, Housekeeper, SessionLost
from balsam.launcher.fence import start_fence
from balsam.launcher.flight import Flight, readable
from balsam.launcher.job_source import JobSource
from balsam.launcher.mpi_cycle import MPICycle
from balsam.launcher.mpi_runs import POLL_SECONDS, SHUTDOWN_FLUSH_SECONDS, Run
from balsam.launcher.status import Batch, StatusBuffer
from balsam.launcher.task import TaskSpec
from balsam.launcher.watchdog import Watchdog
from balsam.platform import mpi
from balsam.processing import transitions

PROCESSING_MIN_INTERVAL = 0.1
"""Seconds between processing passes while jobs keep changing (each pass is 2+ statements)."""
PROCESSING_BUSY_INTERVAL = 1.0
"""While tasks run and the last pass made nothing runnable, the next pass waits this long (as
in serial mode): recording JOB_FINISHED can wait, a DAG's next level comes at the 0.1 s pace."""


class MPIMode(MPICycle):
    """The MPI-mode loop of one launcher (see the module docstring)."""

    def __init__(self, ctx: Context, source: Optional[JobSource] = None,
                 status: Optional[StatusBuffer] = None) -> None:
        self.ctx = ctx
        t = ctx.tunables
        self.source = source or JobSource(ctx.db, ctx.session_id, ctx.alloc, ctx.db_path, "mpi",
                                          ctx.wf_filter, ctx.base_env, ctx.tags)
        self.status = status or StatusBuffer(ctx.db, ctx.session_id, t.status_flush_seconds)
        self.house = Housekeeper(ctx)
        self.flavour = mpi.get(ctx.flavour)
        self.follow = transitions.FINISH_ON_RECORD if ctx.processing else None
        """RUN_DONE -> JOB_FINISHED in the end's own row update where nothing is left to
        postprocess or stage out (as serial mode records ends): no processing pass for it."""
        self.node_job: list[Optional[str]] = [None] * ctx.alloc.num_nodes
        self.runs: dict[str, Run] = {}
        self.queue: list[TaskSpec] = []
        """Claimed (held, not RUNNING) jobs, in claim order: started when nodes free up."""
        self.ready: list[tuple[TaskSpec, list[int]]] = []
        """Jobs recorded RUNNING, not started yet: on the nodes given, or ([]) the first free."""
        self.run_seconds: Optional[float] = None
        """Running average of the durations of the runs reaped so far."""
        self.flight: Optional[Flight] = None
        self.landing: Optional[tuple[Any, ...]] = None
        """What the transaction in flight was asked to do (see :meth:`_land`)."""
        self.again = False
        """The last transaction claimed jobs with nodes still idle: cycle again at once."""
        self.want_claim = True
        self.want_process = ctx.processing
        now = time.monotonic()
        self.next_process = now
        self.next_kill_check = now
        self.next_periodic = now + t.idle_wait_seconds
        self.poll = IdlePoll(t.idle_wait_seconds, t.idle_poll_max_seconds)
        self.seen_reconnects = ctx.db.reconnects
        self.launched = 0
        self.deferred = False
        self.db_down = False

    # ---- loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped or idle; 0, or 1 if the session was lost."""
        ctx = self.ctx
        ctx.db.listen()
        flight = self.flight = Flight()
        self.prep = spawn.Preparer()
        try:
            while not ctx.should_stop():
                self.house.fenced()  # (also while a transaction in flight hangs)
                self._reap()
                if flight.done():
                    self._land()
                self._launch_ready()
                if not flight.busy:  # (after landing: a busy launcher has one in flight often)
                    self.house.beat()
                    if self.house.take_released():  # our own sweep's notification is unheard
                        self.want_claim, self.want_process = True, ctx.processing
                        self.poll.reset()
                while not flight.busy and self._cycle():
                    if self.runs:  # tasks run: it commits while they do, lands when done
                        break
                    again = self._land()  # idle: claim and start in one go, as soon as can be
                    self._launch_ready()
                    if not again:
                        break
                if self.runs or self.queue or self.ready:
                    self.house.busy()
                    self.poll.reset()
                elif (not flight.busy and not self.status.pending
                      and self.house.idle_exit(self._outstanding)):
                    break
                self._wait()
            if flight.busy:
                self._land()
        except SessionLost as exc:
            ctx.log.error(str(exc))
            ctx.exit_reason = "session lost"
            self._abandon()
            return 1
        finally:
            flight.close()
            self.prep.close()
            self.prep = None
        self._shutdown()
        return 0

    def _outstanding(self) -> int:
        ctx = self.ctx
        return ctx.db.try_run(transitions.outstanding, ctx.session_id, ctx.wf_filter,
                              serial=False, max_nodes=ctx.alloc.num_nodes,
                              processing=ctx.processing, tags=ctx.tags,
                              gpus_per_node=ctx.gpus_per_node)

    def _wait(self) -> None:
        if self.ctx.watchdog is not None:
            self.ctx.watchdog.flush()  # removals of runs reaped and not followed by a start
        now = time.monotonic()
        t = self.ctx.tunables
        timers = [self.next_periodic, now + self.house.due_in(now)]
        if self.runs:
            timers.append(self.next_kill_check)
        elif not self.ctx.persistent and not self.status.pending:  # (checked once written)
            timers.append(self.house.next_outstanding_check)
        if self.status.pending:
            timers.append(now + t.status_flush_seconds)
        if self.want_process:
            timers.append(self.next_process)
        if self.ctx.stop_at is not None:
            timers.append(self.ctx.stop_at)
        timeout = max(0.0, min(timers) - now) if not self.again else 0.0
        fds = [r.pidfd for r in self.runs.values() if r.pidfd is not None]
        if len(fds) < len(self.runs):
            timeout = min(timeout, POLL_SECONDS)
        if self.ctx.wakeup_fd is not None:
            fds.append(self.ctx.wakeup_fd)
        if self.flight is not None and self.flight.busy:
            # The connection is the thread's and due timers wait for its landing, which wakes
            # this wait (a due timer must not make it spin meanwhile).
            if len(fds) - (self.ctx.wakeup_fd is not None) == len(self.runs):
                timeout = SHUTDOWN_FLUSH_SECONDS
            readable(fds + [self.flight.fd], timeout)
        elif self.ctx.db.wait(timeout, fds):  # claims only for jobs left claimable (0024)
            self.want_process = self.ctx.processing
            if self.ctx.db.runnable():
                self.want_claim = True
                self.poll.reset()

    # ---- the one transaction per iteration --------------------------------------------------
    def _cycle(self) -> bool:
        """Submit one transaction if there is something to do (nothing may be in flight);
        whether it did. :meth:`_land` takes its result."""
        ctx, t = self.ctx, self.ctx.tunables
        now = time.monotonic()
        self.again = False
        if now >= self.next_periodic:  # idle: backing off (work or a notification resets it)
            busy = self.runs or self.queue or self.ready
            self.next_periodic = now + (t.idle_wait_seconds if busy else self.poll.empty())
            self.want_claim = True
            self.want_process = ctx.processing
        idle = [i for i, j in enumerate(self.node_job) if j is None]
        slots = t.max_concurrent_runs - len(self.runs) - len(self.ready)
        stopping = ctx.should_stop()
        process = self.want_process and now >= self.next_process
        kill = bool(self.runs or self.queue or self.ready) and now >= self.next_kill_check
        reconcile = ctx.db.reconnects != self.seen_reconnects
        # With nothing running no end can join the batch: write it now, not in 50 ms.
        due = self.status.pending and (self.status.due() or not (self.runs or self.db_down))
        target = self._ahead_target()
        starts, unfit = self._pick(idle, slots) if not stopping else ([], [])
        if not stopping:  # a transaction that goes anyway also tops up what is ready ahead
            anyway = bool(starts or unfit or due or process or kill or reconcile)
            starts += ready_ahead.pick(target, len(self.ready), self.queue, starts, unfit, slots,
                                       top_up=anyway)
        free = len(idle) - sum(s.num_nodes for s, _ in starts)
        queued = len(self.queue) - len(starts) - len(unfit)
        want = max(min(t.claim_batch, ctx.alloc.num_nodes), target) - queued
        claim = self.want_claim and want > 0 and not stopping
        if claim and target and not starts and self.ready and queued >= target - target // 2:
            claim = False  # the queue holds the next refill: its transaction claims
        process, kill = self._defer(starts, process, kill)
        write = self.status.pending and (due or claim or process or kill or starts)
        if not (claim or process or kill or reconcile or write or starts or unfit):
            return False
        batch = self.status.take() if write else Batch()
        known = set(self.runs) | {s.job_id for s in self.queue} | {
            s.job_id for s, _ in self.ready} | self.status.pending_ids() | set(
            batch.done) | set(batch.errors) | set(batch.timeouts) | set(batch.release)
        assert self.flight is not None
        self.flight.submit(ctx.db.try_run, self._transaction, batch, process, kill, reconcile,
                           known, starts, unfit, want if claim else 0, max(1, free), idle, slots,
                           inline=not self.runs)
        self.landing = (now, batch, process, kill, reconcile, claim, want, starts, unfit, free)
        return True

    def _defer(self, starts: list[tuple[TaskSpec, list[int]]], process: bool, kill: bool
               ) -> tuple[bool, bool]:
        """(process, kill) for a transaction starting ``starts``: when tasks wait for it to
        launch, the pass and the kill check come in the next one, right after the launches
        (deferred once, never starved). Jobs ready ahead, with more ready still, wait for no
        one."""
        urgent = any(nodes for _, nodes in starts) or not self.ready
        if starts and urgent and (process or kill) and not self.deferred:
            self.deferred = True
            return False, False
        self.deferred = False
        return process, kill

    def _land(self) -> bool:
        """Take the result of the transaction in flight (waiting for it): the jobs it marked
        RUNNING become ready (started by :meth:`_launch_ready`), claims join the queue, kills
        are acted on. True if it claimed jobs, or its processing pass made jobs runnable, while
        nodes stay idle (cycle again at once: nothing else would wake an idle launcher for them;
        the pass's notification is its own)."""
        ctx, t = self.ctx, self.ctx.tunables
        assert self.flight is not None and self.landing is not None
        now, batch, process, kill, reconcile, claim, want, starts, unfit, free = self.landing
        self.landing = None
        try:
            killed, started, claimed, runnable, more, ended, retry_in = self.flight.land()
        except DatabaseUnavailable as exc:
            self.status.restore(batch)
            if not self.db_down:
                ctx.log.warning(f"database unavailable, state changes kept until it is back: "
                                f"{exc}")
            self.db_down = True
            return False
        if self.db_down:
            ctx.log.info(f"database available again; {len(batch)} pending change(s) written")
            self.db_down = False
        if ctx.watchdog is not None:  # recorded: its report need not list them
            ctx.watchdog.forget(ended)
        if reconcile:  # notifications sent while the connection was down are lost: look now
            self.seen_reconnects = ctx.db.reconnects
            self.poll.reset()
            self.next_periodic = 0.0
        if process:
            self.want_process = False
            self.next_process = now + (PROCESSING_MIN_INTERVAL if runnable or not self.runs
                                       else PROCESSING_BUSY_INTERVAL)
            if retry_in is not None:  # a retry's back-off ends: no statement announces it
                # (spaced as the idle look: staggered back-offs, a pass per spacing, not per job)
                self.next_periodic = min(self.next_periodic,
                                         now + max(retry_in, t.idle_wait_seconds))
        if batch.done or batch.errors or batch.timeouts:
            self.want_process = ctx.processing
        gone = {s.job_id for s, _ in starts + more} | {s.job_id for s in unfit}
        self.queue = [s for s in self.queue + claimed if s.job_id not in gone]
        if claim:
            self.want_claim = len(claimed) >= want
        self._add_ready([(spec, nodes) for spec, nodes in starts + more if spec.job_id in started])
        if kill:
            self.next_kill_check = now + t.kill_check_seconds
            self._kill(killed)
        if runnable:  # the pass runs after the transaction's claim, which could not see them
            self.want_claim = True
        if runnable or claimed:
            self.poll.reset()
        self.again = ((bool(claimed) or runnable) and free > len(more)
                      and len(self.runs) < t.max_concurrent_runs)
        return self.again

    def _ahead_target(self) -> int:
        """How many jobs to keep ready ahead of a free node (:func:`ready_ahead.target`)."""
        return ready_ahead.target(self.run_seconds, self.ctx.alloc.num_nodes)


class MPILauncherMode:
    """MPI mode as a :class:`balsam.launcher.modes.LauncherMode`: nothing starts before the
    session opens; :meth:`run` starts the transition workers and the watchdog, then the
    :class:`MPIMode` loop. It records RUNNING before a task starts (the module docstring of
    :mod:`balsam.launcher.modes` says why)."""

    def prestart(self, ctx: Context) -> None:
        """Nothing overlaps opening the session in MPI mode."""

    def abandon(self, ctx: Context) -> None:
        """Nothing to undo (:meth:`prestart` starts nothing)."""

    def run(self, ctx: Context) -> int:
        """The :class:`MPIMode` loop for the open session of ``ctx``; 0, or 1 if it was lost."""
        ctx.started()
        # Its report says what was launched if the launcher dies (launch_reports).
        ctx.watchdog = Watchdog(ctx.tunables.kill_grace_seconds, log=ctx.log.error,
                                report=launch_reports.report_path(ctx.db_path, ctx.session_id))
        mode = MPIMode(ctx)
        # Its tasks die if the lease goes unconfirmed, also while the loop is stuck in a
        # statement or stops them (:mod:`balsam.launcher.fence`).
        fence = mode.house.fence = start_fence(ctx)
        try:
            status = mode.run()
        finally:
            fence.close()
        if status == 0 and not mode.status.pending:  # everything recorded: not needed
            ctx.watchdog.close()
            launch_reports.discard(ctx.db_path, ctx.session_id)
        return status
