"""MPI mode: one MPI launch per job, on whole nodes of the allocation.

Nodes are slots addressed by index (idle or running one job). Claimed jobs wait in a short
queue (held, not RUNNING: at most as many as the allocation has nodes, single-node ones while
every node is busy) so that a node that frees up starts the next job at once. Each loop
iteration:

1. reap finished tasks (exit 0 -> RUN_DONE; non-zero -> RUN_ERROR with the output's tail;
   a task a user killed -> its claim is dropped, the job stays USER_KILLED; a task the
   launcher stopped -> RUN_TIMEOUT, unless it exited 0 within the grace: it completed, RUN_DONE)
   and free their nodes;
2. one transaction, only when there is something to do, whose routine part is ONE statement
   (:func:`leases.cycle`): the ends just reaped, RUNNING for the queued jobs that fit the idle
   nodes now (largest first; recorded before their launch), and a claim topping the queue up.
   Besides, when due: the processing pass (:func:`transitions.advance`; every 0.1 s while it
   makes jobs runnable, else every second while tasks run), which running or queued jobs a
   user killed, releasing claims that will not run (killed, changed, or too long for the
   time left), and moving jobs no task can be built for to FAILED;
3. start the jobs marked RUNNING (``mpiexec``-style argv from the configured flavour, wrapped
   to source the app's envscript; output to ``<workdir>/<name>.out``);
4. wait for a task to exit (pidfds), a notification from another session (a job became
   runnable, a user killed a job), or the next timer -- never a fixed sleep.

At steady state that is one statement per task start (and end), plus a processing pass a
second, the kill check and the heartbeat.

Stopping (signal, time limit, idle exit) terminates running tasks' process groups (SIGTERM,
grace, SIGKILL), records them RUN_TIMEOUT and flushes; :mod:`balsam.launcher.main` then closes
the session, releasing every claim.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Optional

from balsam.core import leases
from balsam.core.retries import STOP_MESSAGE_PREFIX
from balsam.core.states import State
from balsam.db.dbapi import Cursor
from balsam.errors import DatabaseUnavailable
from balsam.launcher import procs
from balsam.launcher.context import Context, Housekeeper, SessionLost
from balsam.launcher.job_source import JobSource, Row
from balsam.launcher.status import Batch, StatusBuffer
from balsam.launcher.task import TaskSpec, with_envscript
from balsam.launcher.watchdog import Watchdog
from balsam.platform import mpi
from balsam.platform.process import pidfd_open
from balsam.processing import transitions

PROCESSING_MIN_INTERVAL = 0.1
"""Seconds between processing passes while jobs keep changing (each pass is 2+ statements)."""
PROCESSING_BUSY_INTERVAL = 1.0
"""While tasks run and the last pass made nothing runnable, the next pass waits this long (as
in serial mode): recording JOB_FINISHED can wait, a DAG's next level comes at the 0.1 s pace."""
POLL_SECONDS = 0.01
"""Task polling period where pidfds are not available."""
SHUTDOWN_FLUSH_SECONDS = 5.0


@dataclass
class Run:
    """A job running on ``nodes`` (indexes into the allocation's hosts)."""

    spec: TaskSpec
    task: procs.Task
    nodes: list[int]
    pidfd: Optional[int]
    killed: bool = False
    stopped: bool = False


class MPIMode:
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
        self.node_job: list[Optional[str]] = [None] * ctx.alloc.num_nodes
        self.runs: dict[str, Run] = {}
        self.queue: list[TaskSpec] = []
        """Claimed (held, not RUNNING) jobs, in claim order: started when nodes free up."""
        self.want_claim = True
        self.want_process = ctx.processing
        now = time.monotonic()
        self.next_process = now
        self.next_kill_check = now
        self.next_periodic = now + t.idle_wait_seconds
        self.seen_reconnects = ctx.db.reconnects
        self.launched = 0
        self.deferred = False
        self.db_down = False

    # ---- loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped or idle; 0, or 1 if the session was lost."""
        ctx = self.ctx
        ctx.db.listen()
        try:
            while not ctx.should_stop():
                self.house.beat()
                self._reap()
                while self._cycle():  # claimed jobs that can start now: start them at once
                    pass
                if not self.runs and not self.queue:
                    if not self.status.pending and self.house.idle_exit(self._outstanding):
                        break
                else:
                    self.house.busy()
                self._wait()
        except SessionLost as exc:
            ctx.log.error(str(exc))
            ctx.exit_reason = "session lost"
            self._abandon()
            return 1
        self._shutdown()
        return 0

    def _outstanding(self) -> int:
        ctx = self.ctx
        return ctx.db.try_run(transitions.outstanding, ctx.session_id, ctx.wf_filter,
                              serial=False, max_nodes=ctx.alloc.num_nodes,
                              processing=ctx.processing, tags=ctx.tags,
                              gpus_per_node=ctx.gpus_per_node)

    def _wait(self) -> None:
        now = time.monotonic()
        t = self.ctx.tunables
        timers = [self.next_periodic, now + self.house.due_in(now)]
        if self.runs:
            timers.append(self.next_kill_check)
        elif not self.ctx.persistent:
            timers.append(self.house.next_outstanding_check)
        if self.status.pending:
            timers.append(now + t.status_flush_seconds)
        if self.want_process:
            timers.append(self.next_process)
        if self.ctx.stop_at is not None:
            timers.append(self.ctx.stop_at)
        timeout = max(0.0, min(timers) - now)
        fds = [r.pidfd for r in self.runs.values() if r.pidfd is not None]
        if len(fds) < len(self.runs):
            timeout = min(timeout, POLL_SECONDS)
        if self.ctx.wakeup_fd is not None:
            fds.append(self.ctx.wakeup_fd)
        if self.ctx.db.wait(timeout, fds):
            self.want_claim = True
            self.want_process = self.ctx.processing

    # ---- reaping ----------------------------------------------------------------------------
    def _reap(self) -> None:
        for job_id, run in list(self.runs.items()):
            run.task.enforce_kill()
            rc = run.task.poll()
            if rc is None:
                continue
            self._free(job_id, run)
            if run.killed:
                self.status.release(job_id)
                self.ctx.log.info(f"job {job_id[:8]} killed by a user: stopped (exit code {rc})")
            elif run.stopped and rc != 0:
                self.status.timeout(job_id, STOP_MESSAGE_PREFIX + self.ctx.stop_reason)
            elif rc == 0:  # also a task that completed within the stop's grace: it is done
                self.status.done(job_id)
                self.ctx.log.info(f"job {job_id[:8]} done")
            elif procs.stopped_from_outside(rc):
                name = procs.stopped_from_outside(rc)
                self.status.timeout(job_id, f"terminated by {name} from outside the launcher "
                                            f"(exit code {rc}): the batch job ending?")
                self.ctx.log.info(f"job {job_id[:8]} terminated by {name} from outside")
            else:
                tail = procs.tail(run.task.output_path, self.ctx.tunables.output_tail_lines)
                self.status.error(job_id, f"exit code {rc}:\n{tail}")
                self.ctx.log.info(f"job {job_id[:8]} failed: exit code {rc}")

    def _free(self, job_id: str, run: Run) -> None:
        del self.runs[job_id]
        if run.killed or run.stopped:
            run.task.signal_group(signal.SIGKILL)  # whatever the leader left in its group
        if self.ctx.watchdog is not None:
            self.ctx.watchdog.remove(run.task.pgid)
        for i in run.nodes:
            self.node_job[i] = None
        if run.pidfd is not None:
            os.close(run.pidfd)
        self.want_claim = True

    # ---- the one transaction per iteration --------------------------------------------------
    def _cycle(self) -> bool:
        """One transaction if there is something to do; True if it claimed jobs that could
        start now (the next cycle starts them)."""
        ctx, t = self.ctx, self.ctx.tunables
        now = time.monotonic()
        if now >= self.next_periodic:
            self.next_periodic = now + t.idle_wait_seconds
            self.want_claim = True
            self.want_process = ctx.processing
        idle = [i for i, j in enumerate(self.node_job) if j is None]
        slots = t.max_concurrent_runs - len(self.runs)
        stopping = ctx.should_stop()
        starts, unfit = self._pick(idle, slots) if not stopping else ([], [])
        free = len(idle) - sum(s.num_nodes for s, _ in starts)
        want = min(t.claim_batch, ctx.alloc.num_nodes) - (len(self.queue) - len(starts) -
                                                          len(unfit))
        claim = self.want_claim and want > 0 and not stopping
        process = self.want_process and now >= self.next_process
        kill = bool(self.runs or self.queue) and now >= self.next_kill_check
        if starts and (process or kill) and not self.deferred:
            # Tasks wait for this transaction to launch: the pass and the kill check come in
            # the next one, right after the launches (deferred once, never starved).
            process = kill = False
            self.deferred = True
        else:
            self.deferred = False
        reconcile = ctx.db.reconnects != self.seen_reconnects
        write = self.status.pending and (self.status.due() or claim or process or kill or starts)
        if not (claim or process or kill or reconcile or write or starts or unfit):
            return False
        batch = self.status.take() if write else Batch()
        known = set(self.runs) | {s.job_id for s in self.queue} | self.status.pending_ids() | set(
            batch.done) | set(batch.errors) | set(batch.timeouts) | set(batch.release)
        try:
            killed, started, claimed, runnable, more = ctx.db.try_run(
                self._transaction, batch, process, kill, reconcile, known, starts, unfit,
                want if claim else 0, max(1, free), idle, slots)
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
        self.seen_reconnects = ctx.db.reconnects if reconcile else self.seen_reconnects
        if process:
            self.want_process = False
            self.next_process = now + (PROCESSING_MIN_INTERVAL if runnable or not self.runs
                                       else PROCESSING_BUSY_INTERVAL)
        if batch.done or batch.errors or batch.timeouts:
            self.want_process = ctx.processing
        gone = {s.job_id for s, _ in starts + more} | {s.job_id for s in unfit}
        self.queue = [s for s in self.queue + claimed if s.job_id not in gone]
        if claim:
            self.want_claim = len(claimed) >= want
        for spec, nodes in starts + more:
            if spec.job_id in started:
                self._launch(spec, nodes)
        if kill:
            self.next_kill_check = now + t.kill_check_seconds
            self._kill(killed)
        if runnable and not claim:
            self.want_claim = True
        return bool(claimed) and free > len(more) and len(self.runs) < t.max_concurrent_runs

    def _pick(self, idle: list[int], slots: int, queue: Optional[list[TaskSpec]] = None
              ) -> tuple[list[tuple[TaskSpec, list[int]]], list[TaskSpec]]:
        """(claimed jobs to start now on idle nodes -- largest first, as claimed, each where
        it fits --, claimed jobs that no longer fit in the time left: to release)."""
        starts: list[tuple[TaskSpec, list[int]]] = []
        unfit: list[TaskSpec] = []
        free = list(idle)
        max_wall = self.ctx.max_wall_minutes()
        for spec in self.queue if queue is None else queue:
            if max_wall is not None and spec.wall_time_minutes > max_wall:
                unfit.append(spec)
            elif len(starts) < slots and spec.num_nodes <= len(free):
                nodes, free = free[:spec.num_nodes], free[spec.num_nodes:]
                starts.append((spec, nodes))
        return starts, unfit

    def _transaction(self, cur: Cursor, batch: Batch, process: bool, kill: bool, reconcile: bool,
                     known: set[str], starts: list[tuple[TaskSpec, list[int]]],
                     unfit: list[TaskSpec], claim: int, max_nodes: int, idle: list[int],
                     slots: int) -> tuple[list[str], set[str], list[TaskSpec], bool,
                                          list[tuple[TaskSpec, list[int]]]]:
        """Write the ends, start ``starts`` (RUNNING before their launch) and claim up to
        ``claim`` more jobs in one statement (:func:`leases.cycle`); claimed jobs that fit
        nodes still idle are started at once (one more statement: an idle launcher starts a
        new job within one transaction); process, check kills and reconcile if asked. Returns
        (killed ids, ids started, specs claimed, whether processing made jobs runnable, the
        claimed jobs started and their nodes)."""
        ctx = self.ctx
        runnable = False
        if reconcile:
            lost, released = self.source.reconcile_in(cur, known)
            if lost or released:
                ctx.log.warning(f"after reconnecting: {lost} job(s) started in a lost commit "
                                f"recorded RUN_TIMEOUT, {released} claim(s) released")
        moves: list[tuple[str, State, str]] = [(j, State.RUN_DONE, "") for j in batch.done]
        moves += [(j, State.RUN_ERROR, m) for j, m in batch.errors.items()]
        moves += [(j, State.RUN_TIMEOUT, m) for j, m in batch.timeouts.items()]
        for spec, nodes in starts:
            hosts = ",".join(ctx.alloc.hosts[i] for i in nodes)
            moves.append((spec.job_id, State.RUNNING,
                          f"launcher session {ctx.session_id} on {hosts}"))
        rows: list[Row] = []
        started: set[str] = set()
        if moves or claim:
            moved, rows = leases.cycle(cur, ctx.session_id, moves, claim, serial=False,
                                       max_nodes=max_nodes, wf_filter=ctx.wf_filter,
                                       max_wall_minutes=ctx.max_wall_minutes(),
                                       tags=self.source.tags,
                                       gpus_per_node=self.source.alloc.gpus_per_node)
            started = {j for j, _, to in moved if to == State.RUNNING.value}
        claimed = self.source.specs_in(cur, rows, self._check)
        used = {i for _, nodes in starts for i in nodes}
        more, _ = self._pick([i for i in idle if i not in used], slots - len(starts), claimed)
        if more:
            messages = {s.job_id: f"launcher session {ctx.session_id} on "
                                  f"{','.join(ctx.alloc.hosts[i] for i in nodes)}"
                        for s, nodes in more}
            started.update(leases.start(cur, ctx.session_id, list(messages), messages))
        drop = batch.release + [s.job_id for s, _ in starts + more
                                if s.job_id not in started] + [s.job_id for s in unfit]
        if drop:  # killed by a user, changed meanwhile, or too long for the time left
            leases.release(cur, ctx.session_id, drop)
        if process:
            moved_kinds = transitions.advance(cur, ctx.wf_filter, ctx.tunables.processing_batch,
                                              ctx.tunables.retry_policy())
            runnable = bool(moved_kinds.get("ready") or moved_kinds.get("retry"))
            if any(moved_kinds.values()):
                ctx.log.info("processing: " + ", ".join(
                    f"{k} {v}" for k, v in moved_kinds.items() if v))
        killed = leases.killed(cur, ctx.session_id) if kill else []
        return killed, started, claimed, runnable, more

    # ---- tasks ------------------------------------------------------------------------------
    def _run_spec(self, spec: TaskSpec, hosts: list[str]) -> mpi.RunSpec:
        gpus = 0  # GPUs go to the whole job through CUDA_VISIBLE_DEVICES (see _launch)
        return mpi.RunSpec(argv=spec.app_argv, ranks=spec.num_nodes * spec.ranks_per_node,
                           ranks_per_node=spec.ranks_per_node, hosts=hosts,
                           threads_per_rank=spec.threads_per_rank,
                           threads_per_core=spec.threads_per_core,
                           cpu_affinity=spec.cpu_affinity, gpus_per_rank=gpus,
                           extra_flags=spec.mpi_flags)

    def _check(self, spec: TaskSpec) -> Optional[str]:
        """Why the flavour cannot launch ``spec`` (the job becomes FAILED), or None."""
        try:
            self.flavour.argv(self._run_spec(spec, list(self.ctx.alloc.hosts[:spec.num_nodes])),
                              self.ctx.mpi_executable)
        except mpi.RunSpecError as exc:
            return str(exc)
        return None

    def _launch(self, spec: TaskSpec, nodes: list[int]) -> None:
        ctx = self.ctx
        hosts = [ctx.alloc.hosts[i] for i in nodes]
        env = dict(spec.env)
        if ctx.gpus_per_node > 0:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(ctx.gpus_per_node))
        try:
            argv = self.flavour.argv(self._run_spec(spec, hosts), ctx.mpi_executable)
            argv = with_envscript(argv, spec.envscript)
            proc = procs.Task(spec.job_id, argv, env, spec.workdir, spec.output_path,
                              ignore_sigpipe=self.flavour.NAME == "mpich")
        except (OSError, mpi.RunSpecError) as exc:
            ctx.log.error(f"job {spec.job_id[:8]} could not start: {exc}")
            self.status.error(spec.job_id, f"could not start: {exc}")
            return
        self.runs[spec.job_id] = Run(spec, proc, nodes, pidfd_open(proc.proc.pid))
        if ctx.watchdog is not None:
            ctx.watchdog.add(proc.pgid)
        for i in nodes:
            self.node_job[i] = spec.job_id
        self.launched += 1
        ctx.log.info(f"job {spec.job_id[:8]} started on {','.join(hosts)}: {' '.join(argv)}")

    def _kill(self, killed: list[str]) -> None:
        pending = self.status.pending_ids()
        queued = {s.job_id for s in self.queue} & set(killed)
        if queued:  # claimed, not started: drop them (the release gives up the hold)
            self.queue = [s for s in self.queue if s.job_id not in queued]
        for job_id in killed:
            run = self.runs.get(job_id)
            if run is None:
                if job_id not in pending:
                    self.status.release(job_id)
            elif not run.killed:
                run.killed = True
                run.task.terminate(self.ctx.tunables.kill_grace_seconds)
                self.ctx.log.info(f"job {job_id[:8]} was killed by a user: terminating it")

    # ---- ending -----------------------------------------------------------------------------
    def _stop_all(self, grace: float, extra: float) -> None:
        self._reap()  # what already ended is recorded as it ended, not as stopped
        for run in self.runs.values():
            if not run.killed:
                run.stopped = True
            run.task.terminate(grace)
        end = time.monotonic() + grace + extra
        while self.runs and time.monotonic() < end:
            self._reap()
            fds = [r.pidfd for r in self.runs.values() if r.pidfd is not None]
            if self.runs:
                self.ctx.db.wait(POLL_SECONDS if len(fds) < len(self.runs) else 0.05, fds)

    def _shutdown(self) -> None:
        ctx = self.ctx
        if self.runs:
            ctx.log.info(f"stopping {len(self.runs)} task(s): {ctx.stop_reason}")
            self._stop_all(ctx.grace(), 2.0)
        if self.status.flush(before=time.monotonic() + SHUTDOWN_FLUSH_SECONDS) is None:
            ctx.log.error(f"could not record {self.status.pending} state change(s): the database "
                          "is unreachable (the session sweep will time these jobs out)")

    def _abandon(self) -> None:
        """The session is gone: kill everything at once, record nothing."""
        self.status.take()
        self._stop_all(0.0, 2.0)
        self.status.take()


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
        ctx.watchdog = Watchdog(ctx.tunables.kill_grace_seconds, log=ctx.log.error)
        return MPIMode(ctx).run()
