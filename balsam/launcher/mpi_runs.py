"""MPI mode's task side: the ``mpiexec``-style runs on the allocation's nodes.

:class:`MPIRuns` (a base of :class:`balsam.launcher.mpi_mode.MPIMode`, which owns the loop, its
transaction -- :mod:`balsam.launcher.mpi_cycle` -- and what is ready ahead) starts the jobs the
loop recorded RUNNING on idle nodes (those ready ahead on the first that frees), each on whole
nodes (the configured flavour's argv, wrapped to source the app's envscript; output to
``<workdir>/<name>.out``; started with ``posix_spawn``: :mod:`balsam.launcher.mpi_spawn`),
reaps runs as they exit (exit 0 -> RUN_DONE; non-zero -> RUN_ERROR with the output's tail; a
run a user killed -> its claim is dropped, the job stays USER_KILLED; a run the launcher
stopped -> RUN_TIMEOUT, unless it exited 0 within the grace: it completed, RUN_DONE), frees
their nodes, terminates the runs a user killed and, when the launcher stops, all of them
(SIGTERM to the process group, grace, SIGKILL; jobs ready ahead that did not start are recorded
RUN_TIMEOUT, saying so) and flushes what is left to record. Ends go to the
:class:`balsam.launcher.status.StatusBuffer`, which the loop's transaction writes.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Optional

from balsam.core.retries import NOT_STARTED_SUFFIX, STOP_MESSAGE_PREFIX
from balsam.launcher import procs, spawn
from balsam.launcher.context import Context
from balsam.launcher.mpi_spawn import RunTask
from balsam.launcher.status import StatusBuffer
from balsam.launcher.task import TaskSpec, with_envscript
from balsam.platform import mpi
from balsam.platform.process import pidfd_open

POLL_SECONDS = 0.01
"""Task polling period where pidfds are not available."""
RUN_SECONDS_WEIGHT = 0.2
"""Weight of the latest run in the running average of run durations."""
SHUTDOWN_FLUSH_SECONDS = 5.0
"""How long a stopping launcher tries to record its last state changes."""
NOT_STARTED = NOT_STARTED_SUFFIX
"""Appended to the stop message of a job ready ahead that the stop kept from starting (such a
stop uses up no retry: :data:`balsam.core.retries.NOT_STARTED_SUFFIX`)."""


@dataclass
class Run:
    """A job running on ``nodes`` (indexes into the allocation's hosts)."""

    spec: TaskSpec
    task: procs.Task
    nodes: list[int]
    pidfd: Optional[int]
    killed: bool = False
    stopped: bool = False


class MPIRuns:
    """The runs of one MPI-mode launcher on its nodes (see the module docstring); the loop
    (:class:`balsam.launcher.mpi_mode.MPIMode`) sets these attributes up."""

    ctx: Context
    status: StatusBuffer
    flavour: mpi.Flavour
    node_job: list[Optional[str]]
    """The job running on each node of the allocation (by index), or None: idle."""
    runs: dict[str, Run]
    run_seconds: Optional[float]
    """Running average of the durations of the runs reaped so far."""
    launched: int
    # The loop's, touched here: a freed node asks it to claim; a kill drops queued and ready jobs.
    want_claim: bool
    queue: list[TaskSpec]
    ready: list[tuple[TaskSpec, list[int]]]
    prep: Optional[spawn.Preparer] = None
    """Makes the directories and output files of jobs ready ahead while they wait for a node
    (a thread: the node's next start is only the spawn); None: each start makes its own."""

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
                self.status.done(job_id)  # (its RUN_DONE event says so: no log line, ~50 us)
                self.ctx.log.debug(f"job {job_id[:8]} done")
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
        if self.ctx.watchdog is not None:  # sent with the next start's line, or at the wait
            self.ctx.watchdog.remove(run.task.pgid, defer=True)
        for i in run.nodes:
            self.node_job[i] = None
        if run.pidfd is not None:
            os.close(run.pidfd)
        self.want_claim = True

    # ---- tasks ------------------------------------------------------------------------------
    def _add_ready(self, entries: list[tuple[TaskSpec, list[int]]]) -> None:
        """Jobs just recorded RUNNING: start them (:meth:`_launch_ready`); those ready ahead of
        a free node ([] nodes) get their directory and output file made meanwhile."""
        self.ready += entries
        if self.prep is not None:
            for spec, nodes in entries:
                if not nodes:
                    self.prep.ahead(spec.workdir, spec.output_path)

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
            if not self.launched:  # posix_spawn keeps what is inheritable: nothing must be
                spawn.forbid_inheritance()
            prepared = self.prep is not None and self.prep.take(spec.output_path)
            if ctx.watchdog is not None:  # before the launch: its report then lists the job
                ctx.watchdog.expect(spec.job_id)  # (:mod:`balsam.core.launch_reports`)
            proc = RunTask(spec.job_id, argv, env, spec.workdir, spec.output_path,
                           ignore_sigpipe=self.flavour.NAME == "mpich", prepared=prepared)
        except (OSError, mpi.RunSpecError) as exc:
            ctx.log.error(f"job {spec.job_id[:8]} could not start: {exc}")
            self.status.error(spec.job_id, f"could not start: {exc}")
            return
        self.runs[spec.job_id] = Run(spec, proc, nodes, pidfd_open(proc.pid))
        if ctx.watchdog is not None:
            ctx.watchdog.add(proc.pgid, spec.job_id, defer=True)  # (one write a launch)
        for i in nodes:
            self.node_job[i] = spec.job_id
        self.launched += 1
        ctx.log.info(f"job {spec.job_id[:8]} started on {','.join(hosts)}: {' '.join(argv)}")

    def _kill(self, killed: list[str]) -> None:
        pending = self.status.pending_ids()
        queued = {s.job_id for s in self.queue} & set(killed)
        if queued:  # claimed, not started: drop them (the release gives up the hold)
            self.queue = [s for s in self.queue if s.job_id not in queued]
        unlaunched = {s.job_id for s, _ in self.ready} & set(killed)
        if unlaunched:  # RUNNING, not started: likewise, their RUNNING marked as no run
            for spec, _ in self.ready:
                if spec.job_id in unlaunched and self.prep is not None:
                    self.prep.take(spec.output_path)  # (forget it)
            self.ready = [(s, n) for s, n in self.ready if s.job_id not in unlaunched]
        for job_id in killed:
            run = self.runs.get(job_id)
            if run is None:
                if job_id in unlaunched:
                    self.status.unlaunched(job_id)
                elif job_id not in pending:
                    self.status.release(job_id)
            elif not run.killed:
                run.killed = True
                run.task.terminate(self.ctx.tunables.kill_grace_seconds)
                self.ctx.log.info(f"job {job_id[:8]} was killed by a user: terminating it")

    # ---- ending -----------------------------------------------------------------------------
    def _shutdown(self) -> None:
        ctx = self.ctx
        for spec, _ in self.ready:  # (one a user killed meanwhile: its RUNNING is no run)
            self.status.timeout(spec.job_id, STOP_MESSAGE_PREFIX + ctx.stop_reason + NOT_STARTED)
            self.status.unlaunched(spec.job_id)
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
        if self.ctx.watchdog is not None:
            self.ctx.watchdog.flush()
