"""MPI mode: one MPI launch per job, on whole nodes of the allocation.

Nodes are slots addressed by index (idle or running one job). Claimed jobs wait in a short
queue (held, not RUNNING: at most as many as the allocation has nodes, single-node ones while
every node is busy) so that a node that frees up starts the next job at once. Each loop
iteration:

1. reap finished tasks (exit 0 -> RUN_DONE; non-zero -> RUN_ERROR with the output's tail;
   a task a user killed -> its claim is dropped, the job stays USER_KILLED; a task the
   launcher stopped -> RUN_TIMEOUT, unless it exited 0 within the grace: it completed, RUN_DONE)
   and free their nodes;
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
4. when its result lands, start the jobs it marked RUNNING (``mpiexec``-style argv from the
   configured flavour, wrapped to source the app's envscript; output to
   ``<workdir>/<name>.out``);
5. wait for a task to exit (pidfds), the transaction to land, a notification from another
   session (a job became runnable, a user killed a job), or the next timer -- never a fixed
   sleep.

**Ready ahead.** RUNNING is always committed before a task starts (so a launcher that dies
never leaves a started job unrecorded), but a commit waits for the WAL flush: with short tasks
a node would idle for it at every start. So while the recent runs are short (an average under
:data:`READY_AHEAD_MAX_RUN_SECONDS`) and no multi-node job waits in the queue (it needs
nodes idle at once), up to :data:`READY_AHEAD_PER_NODE` single-node jobs per node
(:data:`READY_AHEAD_MAX` in all) are recorded RUNNING before a node is free ("launcher session
N, ready ahead of a free node"), refilled when half are left, and start the moment one frees.
Such a job shows RUNNING for about one short run (at most that many launches) before its
process starts; if the launcher dies meanwhile the sweep records it RUN_TIMEOUT (retried,
like a launcher dying between a commit and its launch); if it stops (signal, time
limit) the job is recorded RUN_TIMEOUT with the stop's message saying it did not start; one a
user kills is dropped at the next kill check, or, if a node freed first, started and stopped
like any running job. With long runs nothing is ready ahead: a commit is nothing beside them.

At steady state that is at most one statement per task start (and end), fewer when ends
arrive during a commit or jobs are ready ahead, plus a processing pass a second, the kill
check and the heartbeat.

Stopping (signal, time limit, idle exit) terminates running tasks' process groups (SIGTERM,
grace, SIGKILL), records them RUN_TIMEOUT and flushes; :mod:`balsam.launcher.main` then closes
the session, releasing every claim.
"""
from __future__ import annotations

import os
import queue
import select
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

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
READY_AHEAD_MAX_RUN_SECONDS = 1.0
"""Jobs are recorded RUNNING ahead of a free node only while runs last less than this on
average (then a commit before each start would idle nodes; longer runs do not notice it)."""
READY_AHEAD_PER_NODE = 2
"""Single-node jobs recorded RUNNING ahead of a free node, per node of the allocation (refilled
when half are left, so that a commit records several)..."""
READY_AHEAD_MAX = 32
"""...and at most this many in all: enough to cover the starts of one commit's time, and a job
waits for at most this many launches (a large allocation does not show thousands RUNNING)."""
RUN_SECONDS_WEIGHT = 0.2
"""Weight of the latest run in the running average of run durations."""
NOT_STARTED = " (before its start: it did not run)"
"""Appended to the stop message of a job ready ahead that the stop kept from starting."""


@dataclass
class Run:
    """A job running on ``nodes`` (indexes into the allocation's hosts)."""

    spec: TaskSpec
    task: procs.Task
    nodes: list[int]
    pidfd: Optional[int]
    killed: bool = False
    stopped: bool = False


def _readable(fds: list[int], timeout: float) -> bool:
    """Wait until one of ``fds`` is readable (True) or ``timeout`` seconds pass (poll(2): no
    FD_SETSIZE limit on the pidfds of a thousand tasks)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000 + 0.999))))


class _Flight:
    """Runs the loop's transactions on one helper thread, one at a time; ``fd`` is readable
    when the one in flight is done. While :attr:`busy`, the database connection belongs to
    the thread: the loop must not use it."""

    def __init__(self) -> None:
        self.fd, self._done_fd = os.pipe()
        self.busy = False
        self._requests: queue.SimpleQueue[Optional[tuple[Callable[..., Any], tuple[Any, ...]]]]
        self._requests = queue.SimpleQueue()
        self._result: tuple[Any, Optional[BaseException]] = (None, None)
        self._thread = threading.Thread(target=self._serve, name="balsam-mpi-cycle", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            self._call(*request)

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._result = (fn(*args), None)
        except BaseException as exc:  # noqa: BLE001 - raised again in the loop by land()
            self._result = (None, exc)
        os.write(self._done_fd, b"x")

    def submit(self, fn: Callable[..., Any], *args: Any, inline: bool = False) -> None:
        """Run ``fn(*args)`` on the thread (nothing may be in flight); ``inline``: here and
        now (nothing to overlap it with: two thread switches saved)."""
        assert not self.busy
        self.busy = True
        if inline:
            self._call(fn, args)
        else:
            self._requests.put((fn, args))

    def done(self) -> bool:
        """Whether the transaction in flight has finished (its result can land at once)."""
        return self.busy and _readable([self.fd], 0.0)

    def land(self) -> Any:
        """Wait for the transaction in flight; its result, or raise what it raised."""
        os.read(self.fd, 1)
        self.busy = False
        (result, exc), self._result = self._result, (None, None)
        if exc is not None:
            raise exc
        return result

    def close(self) -> None:
        """Stop the thread (after landing what is in flight) and close the pipe."""
        if self.busy:
            try:
                self.land()
            except BaseException:  # noqa: BLE001 - closing: the caller already failed or stopped
                pass
        self._requests.put(None)
        self._thread.join()
        os.close(self.fd)
        os.close(self._done_fd)


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
        self.ready: list[tuple[TaskSpec, list[int]]] = []
        """Jobs recorded RUNNING, not started yet: on the nodes given, or ([]) the first free."""
        self.run_seconds: Optional[float] = None
        """Running average of the durations of the runs reaped so far."""
        self.flight: Optional[_Flight] = None
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
        self.seen_reconnects = ctx.db.reconnects
        self.launched = 0
        self.deferred = False
        self.db_down = False

    # ---- loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped or idle; 0, or 1 if the session was lost."""
        ctx = self.ctx
        ctx.db.listen()
        flight = self.flight = _Flight()
        try:
            while not ctx.should_stop():
                self._reap()
                if flight.done():
                    self._land()
                self._launch_ready()
                if not flight.busy:  # (after landing: a busy launcher has one in flight often)
                    self.house.beat()
                while not flight.busy and self._cycle():
                    if self.runs:  # tasks run: it commits while they do, lands when done
                        break
                    again = self._land()  # idle: claim and start in one go, as soon as can be
                    self._launch_ready()
                    if not again:
                        break
                if self.runs or self.queue or self.ready:
                    self.house.busy()
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
            _readable(fds + [self.flight.fd], timeout)
        elif self.ctx.db.wait(timeout, fds):
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
            took = time.time() - run.task.started
            self.run_seconds = took if self.run_seconds is None else (
                RUN_SECONDS_WEIGHT * took + (1 - RUN_SECONDS_WEIGHT) * self.run_seconds)
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
        """Submit one transaction if there is something to do (nothing may be in flight);
        whether it did. :meth:`_land` takes its result."""
        ctx, t = self.ctx, self.ctx.tunables
        now = time.monotonic()
        self.again = False
        if now >= self.next_periodic:
            self.next_periodic = now + t.idle_wait_seconds
            self.want_claim = True
            self.want_process = ctx.processing
        idle = [i for i, j in enumerate(self.node_job) if j is None]
        slots = t.max_concurrent_runs - len(self.runs) - len(self.ready)
        stopping = ctx.should_stop()
        starts, unfit = self._pick(idle, slots) if not stopping else ([], [])
        if not stopping:
            starts += self._ahead(starts, unfit, slots)
        free = len(idle) - sum(s.num_nodes for s, _ in starts)
        want = max(min(t.claim_batch, ctx.alloc.num_nodes), self._ahead_target()) - (
            len(self.queue) - len(starts) - len(unfit))
        claim = self.want_claim and want > 0 and not stopping
        process = self.want_process and now >= self.next_process
        kill = bool(self.runs or self.queue or self.ready) and now >= self.next_kill_check
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
        known = set(self.runs) | {s.job_id for s in self.queue} | {
            s.job_id for s, _ in self.ready} | self.status.pending_ids() | set(
            batch.done) | set(batch.errors) | set(batch.timeouts) | set(batch.release)
        assert self.flight is not None
        self.flight.submit(ctx.db.try_run, self._transaction, batch, process, kill, reconcile,
                           known, starts, unfit, want if claim else 0, max(1, free), idle, slots,
                           inline=not self.runs)
        self.landing = (now, batch, process, kill, reconcile, claim, want, starts, unfit, free)
        return True

    def _land(self) -> bool:
        """Take the result of the transaction in flight (waiting for it): the jobs it marked
        RUNNING become ready (started by :meth:`_launch_ready`), claims join the queue, kills
        are acted on. True if it claimed jobs while nodes stay idle (cycle again at once)."""
        ctx, t = self.ctx, self.ctx.tunables
        assert self.flight is not None and self.landing is not None
        now, batch, process, kill, reconcile, claim, want, starts, unfit, free = self.landing
        self.landing = None
        try:
            killed, started, claimed, runnable, more = self.flight.land()
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
        self.ready += [(spec, nodes) for spec, nodes in starts + more if spec.job_id in started]
        if kill:
            self.next_kill_check = now + t.kill_check_seconds
            self._kill(killed)
        if runnable and not claim:
            self.want_claim = True
        self.again = bool(claimed) and free > len(more) and len(self.runs) < t.max_concurrent_runs
        return self.again

    def _ahead_target(self) -> int:
        """How many jobs to keep ready ahead of a free node (see the module docstring)."""
        if self.run_seconds is None or self.run_seconds >= READY_AHEAD_MAX_RUN_SECONDS:
            return 0
        return min(READY_AHEAD_PER_NODE * self.ctx.alloc.num_nodes, READY_AHEAD_MAX)

    def _ahead(self, starts: list[tuple[TaskSpec, list[int]]], unfit: list[TaskSpec],
               slots: int) -> list[tuple[TaskSpec, list[int]]]:
        """Queued single-node jobs to record RUNNING ahead of a free node, in claim order;
        jobs shown RUNNING stay within ``max_concurrent_runs`` (``slots`` left of it)."""
        target = self._ahead_target()
        if len(self.ready) > target // 2:  # refilled in batches: fewer, larger commits
            return []
        count = min(target - len(self.ready), slots) - len(starts)
        if count <= 0:
            return []
        taken = {s.job_id for s, _ in starts} | {s.job_id for s in unfit}
        waiting = [s for s in self.queue if s.job_id not in taken]
        if any(s.num_nodes > 1 for s in waiting):  # it needs nodes idle at once: no one
            return []                                # may grab each node as it frees
        ahead: list[tuple[TaskSpec, list[int]]] = [(s, []) for s in waiting]
        return ahead[:count]

    def _launch_ready(self) -> None:
        """Start the jobs recorded RUNNING: on their own nodes if still idle, else (and jobs
        ready ahead) on the first idle nodes where they fit, in order."""
        if not self.ready:
            return
        rest = []
        cap = self.ctx.tunables.max_concurrent_runs
        idle = [i for i, j in enumerate(self.node_job) if j is None]
        for spec, planned in self.ready:
            free = set(idle)
            nodes = planned if planned and free.issuperset(planned) else idle[:spec.num_nodes]
            if len(nodes) == spec.num_nodes and len(self.runs) < cap:
                self._launch(spec, nodes)
                idle = [i for i in idle if self.node_job[i] is None]
            else:
                rest.append((spec, planned))
        self.ready = rest

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
                          f"launcher session {ctx.session_id} on {hosts}" if nodes else
                          f"launcher session {ctx.session_id}, ready ahead of a free node"))
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
        if self.ready:  # RUNNING, not started: likewise
            self.ready = [(s, n) for s, n in self.ready if s.job_id not in killed]
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
        for spec, _ in self.ready:
            self.status.timeout(spec.job_id, STOP_MESSAGE_PREFIX + ctx.stop_reason + NOT_STARTED)
        self.ready = []
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
