"""Serial mode's warm start: the launcher runs the first tasks itself while its ensemble boots.

The serial ensemble (``mpiexec``, two interpreters, MPI's initialisation, the master's imports,
its connection) needs ~0.3-0.4 s on a quiet machine before its master claims; the launcher has
its connection and its session ~0.15 s after it started. So when the ensemble was started
before the session (:func:`balsam.launcher.serial_mode.early_start`: rank 0 reads the session id
on its stdin) and the launcher runs on the ensemble's first node, the launcher claims up to a
node's worth of jobs, starts them (:class:`balsam.launcher.procs.Task`: own session, pinned,
one GPU each, as a worker rank does), records them RUNNING through a
:class:`balsam.launcher.status.StatusBuffer` exactly as the master does (after the start; a
start refused because a user killed the job is stopped, its run still recorded:
:mod:`balsam.core.killed_starts`), and hands rank 0 the session id
together with what these tasks hold on node 1 (``SID [[job id, packing count, cores, process
group], ...]``).
The master counts them as running on worker 1, and worker 1 places them first on its empty
node (:class:`balsam.launcher.nodeslots.NodeSlots` is deterministic), so the node is never
over-filled, however long they run.

The launcher stays their runner: it reaps them (their pidfds are in the loop that waits for the
ensemble), records their ends (RUN_DONE, RUN_ERROR with the output's tail, RUN_TIMEOUT when
stopped) and then tells rank 0 (a ``-JOBID`` line; end of file once none is left), and the
master gives worker 1 the share back. Like every task they are registered with the launcher's
watchdog (stopped if the launcher dies; the lease sweep then times their jobs out); stopped with
the grace on SIGTERM/SIGINT or at the time limit (RUN_TIMEOUT unless they exit 0 in the grace);
stopped, and nothing more recorded, when a user kills their job (checked every
``kill_check_seconds``); SIGKILLed and not recorded when the session was lost. If the launcher
itself dies (its stdin closes with tasks left), its watchdog stops them and the master, stopped by
the same watchdog, records RUN_TIMEOUT for each whose process group is gone. If the ensemble
ends first, the launcher waits for them (renewing the lease) before it exits -- but not before
it restarts a failed ensemble (:func:`balsam.launcher.ensemble_restart.run_serial`): they run
on, and the new ensemble is started for a hand-over too (:meth:`WarmStart.carry_line`: the
shares of those still running, each with its CPUs and GPU, which the new worker 1 takes first
with :meth:`balsam.launcher.nodeslots.NodeSlots.place_at`), so the other nodes work meanwhile
and node 1 is never over-filled. Function tasks (warm workers run them) and jobs that do not
fit are released before the hand-over. From the ensemble's end until they ended or a new
ensemble's fence took over, they have a lease fence of their own
(:func:`balsam.launcher.fence.start_own_tasks_fence`).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from balsam.core import killed_starts, leases, serial_reports
from balsam.core.retries import STOP_MESSAGE_PREFIX, WALLTIME_STOP_REASON
from balsam.errors import DatabaseUnavailable
from balsam.launcher import procs, task
from balsam.launcher.ensemble_watch import start_message
from balsam.launcher.fence import LeaseFence, start_own_tasks_fence
from balsam.launcher.job_source import JobSource
from balsam.launcher.nodeslots import NodeSlots, Placement, node_cpus
from balsam.launcher.spawn import pinned_cpus
from balsam.launcher.status import StatusBuffer
from balsam.launcher.warm_pool import is_runner_argv
from balsam.platform.process import drain_fd, pidfd_open, start_time

if TYPE_CHECKING:
    from balsam.launcher.context import Context

RELEASE_SECONDS = 3.0
"""Longest the launcher tries to give back a claim it cannot start (before the hand-over)."""


@dataclass
class _Warm:
    task: procs.Task
    fd: int
    why: str = ""  # "" running normally, "kill" (user kill), "stop" (launcher stopping)


def on_first_node(hosts: tuple[str, ...]) -> bool:
    """Whether this process runs on the first node of the allocation (worker 1's)."""
    me = socket.gethostname().split(".")[0]
    return bool(hosts) and hosts[0].split(".")[0] == me


class WarmStart:
    """The launcher's own first tasks (see the module docstring). :meth:`begin` claims and
    starts them; :meth:`serve` reaps, records and stops them; :meth:`drain` waits for them."""

    def __init__(self, ctx: Context, status: StatusBuffer, node: NodeSlots) -> None:
        self.ctx, self.status, self.node = ctx, status, node
        self.running: dict[str, _Warm] = {}
        self.holds: list[list[Any]] = []
        """[job id, packing count, cores, process group] of what started, in placement
        order (process group 0: it could not start)."""
        self.ended: list[str] = []
        """Ended and recorded, not yet told to rank 0 (:meth:`take_ended`)."""
        self.placed: dict[str, Placement] = {}
        """Where each started task runs on node 1 (a new ensemble's worker 1 places it there)."""
        self.node_dropped = False
        """Node 1 left the allocation (a restart after its rank was lost): the tasks run on,
        on it, and no new ensemble is handed their shares (:meth:`carry_line`)."""
        self._stop_message = ""
        self._noted: list[str] = []  # serial_reports.note_own_starts: cleared once written
        self._fence: Optional[LeaseFence] = None
        self._next_kill_check = time.monotonic() + ctx.tunables.kill_check_seconds

    @classmethod
    def begin(cls, ctx: Context) -> Optional[WarmStart]:
        """Claim and start up to a node's worth of jobs for the open session of ``ctx``;
        None if the launcher is not on the first node or nothing started."""
        if not on_first_node(ctx.alloc.hosts) or ctx.should_stop():
            return None
        node = NodeSlots(node_cpus(ctx.alloc.cores_per_node), ctx.gpus_per_node)
        source = JobSource(ctx.db, ctx.session_id, ctx.alloc, ctx.db_path, "serial",
                           ctx.wf_filter, base_env=ctx.base_env, tags=ctx.tags)
        status = StatusBuffer(ctx.db, ctx.session_id, ctx.tunables.status_flush_seconds,
                              start_message=start_message(ctx.session_id))
        warm = cls(ctx, status, node)
        try:
            specs = source.claim(len(node.cpus), serial=True, max_nodes=1,
                                 max_wall_minutes=ctx.max_wall_minutes())
        except DatabaseUnavailable as exc:  # its commit may have happened: give it back
            ctx.log.warning(f"warm start: no claim ({exc})")
            warm._release(None)
            return None
        warm._note([s.job_id for s in specs  # before they start (not function tasks)
                    if s.envscript is not None or not is_runner_argv(s.app_argv)])
        others = [s.job_id for s in specs if not warm._start(s)]
        if others:
            warm._release(others)
        warm._note(list(warm.running))  # those that started (none: the note goes)
        warm._flush(before=time.monotonic() + RELEASE_SECONDS)
        if not warm.holds:
            return None
        ctx.log.info(f"warm start: {len(warm.running)} task(s) started by the launcher "
                     "while the ensemble starts")
        return warm

    def handover_line(self) -> str:
        """What follows the session id on rank 0's stdin: the shares held on node 1."""
        return json.dumps(self.holds, separators=(",", ":"))

    def _start(self, spec: task.TaskSpec) -> bool:
        """Start ``spec`` if it is a command that fits the node now; False: give it back."""
        if spec.envscript is None and is_runner_argv(spec.app_argv):
            return False  # a function task: the warm workers of the ranks run those
        placement = self.node.place(spec.job_id, spec.node_packing_count, spec.required_cores)
        if placement is None:
            return False
        env = dict(spec.env)  # the launcher's environment (cleaned) and the job's variables
        if placement.gpu is not None:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
            env["CUDA_VISIBLE_DEVICES"] = str(placement.gpu)
        self.status.started([spec.job_id])
        hold: list[Any] = [spec.job_id, spec.node_packing_count, spec.required_cores, 0]
        self.holds.append(hold)
        if self.ctx.watchdog is not None:  # it finds the task by its job id if we die now
            self.ctx.watchdog.expect(spec.job_id)
        try:
            started = procs.Task(spec.job_id, task.with_envscript(spec.app_argv, spec.envscript),
                                 env, os.path.abspath(spec.workdir),
                                 os.path.abspath(spec.output_path))
        except OSError as exc:
            if self.ctx.watchdog is not None:
                self.ctx.watchdog.forget([spec.job_id])
            self.node.free(spec.job_id)
            self.status.error(spec.job_id, f"cannot start: {exc}")
            self.ended.append(spec.job_id)
            return True
        hold[3] = started.pgid  # if the launcher dies, the master records the run's end
        self.placed[spec.job_id] = placement
        if self.ctx.watchdog is not None:
            self.ctx.watchdog.add(started.pgid, spec.job_id)
        cpus = pinned_cpus(placement.cpus, len(self.node.cpus),
                           self.ctx.tunables.pin_single_core_tasks)  # as a worker rank does
        if cpus:
            try:
                os.sched_setaffinity(started.proc.pid, cpus)
            except OSError:  # already gone: nothing to pin
                pass
        fd = pidfd_open(started.proc.pid)
        self.running[spec.job_id] = _Warm(started, -1 if fd is None else fd)
        return True

    def carry_line(self) -> str:
        """For a new ensemble after a failed one, what follows the session id on its rank 0's
        stdin: the shares of the tasks still running, each with its CPUs and GPU (worker 1
        places them exactly there; :meth:`balsam.launcher.nodeslots.NodeSlots.place_at`); ""
        if none runs or the launcher's node is no longer the first (``node_dropped``: by
        position, as emulated nodes share one host name). Ends not yet told went with the old
        ensemble. Their own fence ends here: the new ensemble's, armed at its start
        (:func:`balsam.launcher.fence.start_serial_fence`), stops them too."""
        self._disarm()
        self.ended = []
        holds = [[*h, list(self.placed[h[0]].cpus), self.placed[h[0]].gpu]
                 for h in self.holds if h[0] in self.running]
        if not holds or self.node_dropped or not on_first_node(self.ctx.alloc.hosts):
            return ""
        return json.dumps(holds, separators=(",", ":"))

    def outlived(self, lost: bool, failed: bool) -> Optional[WarmStart]:
        """The ensemble ended: abort the tasks if the session was ``lost``; if it ``failed``
        and no stop was asked for, return self (they run on while a new ensemble starts:
        :func:`balsam.launcher.ensemble_restart.run_serial`); else wait for them (None).
        From here until a new ensemble starts (:meth:`carry_line`) or :meth:`drain` ended,
        they are fenced (:func:`balsam.launcher.fence.start_own_tasks_fence`)."""
        if lost:
            self.abort()
            return None
        self._arm()
        if failed and self.running and not self.ctx.should_stop():
            return self
        self.drain()
        return None

    def renewed(self, sent: float) -> None:
        """A renewal of the lease sent at ``sent`` (``time.monotonic()``) was confirmed."""
        self.ctx.lease_since = max(self.ctx.lease_since, sent)
        if self._fence is not None:
            self._fence.renewed(sent)

    def fds(self) -> list[int]:
        """The pidfds of the running tasks (readable once one exits)."""
        return [w.fd for w in self.running.values() if w.fd >= 0]

    def serve(self) -> None:
        """Reap what exited and record it (with any refused start: stopped), stop tasks at the
        time limit or when their job was killed, enforce kill deadlines."""
        ctx = self.ctx
        now = time.monotonic()
        if ctx.stop.is_set():
            self.stop(ctx.grace(), ctx.stop_reason or "the launcher is stopping")
        elif ctx.stop_at is not None and now >= ctx.stop_at:
            self.stop(ctx.stop_grace, WALLTIME_STOP_REASON)
        if now >= self._next_kill_check and self.running:
            self._next_kill_check = now + ctx.tunables.kill_check_seconds
            self._check_kills()
        for job_id, warm in list(self.running.items()):
            warm.task.enforce_kill()
            rc = warm.task.poll()
            if rc is not None:
                self._ended(job_id, warm, rc)
        if self.status.pending:
            self._flush()

    def take_ended(self) -> list[str]:
        """The tasks that ended and were recorded since the last call (rank 0 is told)."""
        if self.status.pending:
            return []  # their ends are not durable yet: the master may look
        ended, self.ended = self.ended, []
        return ended

    def stop(self, grace: float, reason: str) -> None:
        """Stop every task: SIGTERM, SIGKILL after ``grace``; recorded RUN_TIMEOUT with
        ``reason`` unless it exits 0 within the grace."""
        if not self._stop_message:
            self._stop_message = STOP_MESSAGE_PREFIX + reason
        for warm in self.running.values():
            if not warm.why:
                warm.why = "stop"
            warm.task.terminate(grace)

    def abort(self) -> None:
        """The session was lost: SIGKILL every task, record nothing."""
        for job_id, warm in list(self.running.items()):
            warm.task.signal_group(signal.SIGKILL)
            warm.task.proc.wait()
            self._forget(job_id, warm)
        self.status.take()

    def drain(self, heartbeat: bool = True) -> None:
        """After the ensemble ended: wait for the tasks (stops and kills honoured), renewing the
        lease meanwhile (nobody else does now), fenced (:func:`start_own_tasks_fence`: killed,
        and the launcher ended, before the lease could expire unrenewed); aborts them if the
        session was swept."""
        ctx = self.ctx
        if heartbeat:
            self._arm()
        try:
            self._drain(heartbeat)
        finally:
            self._disarm()
        if self.status.pending:  # the database may be away: the session's close is the net
            self._flush(before=time.monotonic() + ctx.tunables.reconnect_max_seconds)

    def _drain(self, heartbeat: bool) -> None:
        ctx = self.ctx
        next_beat = 0.0
        while self.running:
            if heartbeat and time.monotonic() >= next_beat:
                sent = time.monotonic()
                next_beat = sent + ctx.tunables.heartbeat_seconds
                try:
                    alive = ctx.db.try_run(leases.heartbeat, ctx.session_id)
                except DatabaseUnavailable:
                    alive = None
                if alive is False:
                    ctx.log.error(f"session {ctx.session_id} was swept: killing the warm start's "
                                  "tasks, recording nothing")
                    self.abort()
                    return
                if alive:
                    self.renewed(sent)
            self.serve()
            wait = self.fds() + ([ctx.wakeup_fd] if ctx.wakeup_fd is not None else [])
            ctx.db.wait(0.5 if self.running else 0.05, wait)
            if ctx.wakeup_fd is not None:
                drain_fd(ctx.wakeup_fd)
            self.take_ended()

    # ---- internals --------------------------------------------------------------------------
    def _arm(self) -> None:
        if self._fence is None and self.running:  # our unreaped children: their ids name them
            self._fence = start_own_tasks_fence(self.ctx, {w.task.pgid: start_time(w.task.pgid)
                                                           for w in self.running.values()})

    def _disarm(self) -> None:
        fence, self._fence = self._fence, None
        if fence is not None:
            fence.close()

    def _note(self, job_ids: list[str]) -> None:
        """:func:`serial_reports.note_own_starts` (before the starts: one that does not come
        may be counted as a run, a run is never left out); an empty list removes the note."""
        if job_ids and sorted(job_ids) != sorted(self._noted):
            serial_reports.note_own_starts(self.ctx.watch_dir, job_ids)
        elif not job_ids and self._noted:
            serial_reports.clear_own_starts(self.ctx.watch_dir)
        self._noted = job_ids

    def _flush(self, before: Optional[float] = None) -> None:
        written = self.status.flush(before=before)
        for job_id in written.not_started if written is not None else ():
            self._kill(job_id)  # a user killed (or changed) the job before its start was recorded
        if self._noted and written is not None:  # (the starts are the first moves written)
            self._noted = []
            serial_reports.clear_own_starts(self.ctx.watch_dir)

    def _ended(self, job_id: str, warm: _Warm, rc: int) -> None:
        if self.status.follow is None and self.ctx.processing:
            self.status.follow = _follow()  # imported once there is an end to write
        self._forget(job_id, warm)
        if warm.why:
            warm.task.signal_group(signal.SIGKILL)  # what the leader left behind goes too
        if warm.why == "kill":
            self.status.release(job_id)
        elif warm.why == "stop" and rc != 0:
            self.status.timeout(job_id, self._stop_message)
        elif rc == 0:
            self.status.done(job_id)
        elif procs.stopped_from_outside(rc):
            name = procs.stopped_from_outside(rc)
            self.status.timeout(job_id, f"terminated by {name} from outside the launcher (exit "
                                        f"code {rc}): the batch job ending?")
        else:
            tail = procs.tail(warm.task.output_path, self.ctx.tunables.output_tail_lines)
            self.status.error(job_id, f"exit code {rc}:\n{tail}")
        self.ended.append(job_id)

    def _forget(self, job_id: str, warm: _Warm) -> None:
        del self.running[job_id]
        self.node.free(job_id)
        if warm.fd >= 0:
            os.close(warm.fd)
        if self.ctx.watchdog is not None:
            self.ctx.watchdog.remove(warm.task.pgid)

    def _kill(self, job_id: str) -> None:
        warm = self.running.get(job_id)
        if warm is not None and warm.why != "kill":
            warm.why = "kill"
            warm.task.terminate(self.ctx.tunables.kill_grace_seconds)
            self.ctx.log.info(f"job {job_id[:8]} was killed by a user: stopping its task "
                              "(warm start)")

    def _check_kills(self) -> None:
        ids = list(self.running)
        try:
            killed = self.ctx.db.try_run(killed_starts.killed_among, ids)
        except DatabaseUnavailable:
            return
        for job_id in killed:
            self._kill(job_id)

    def _release(self, ids: Optional[list[str]]) -> None:
        """Give back claims (None: every one the session holds outside RUNNING: nothing else
        claims for it before the hand-over)."""
        ctx = self.ctx
        try:
            ctx.db.run_before(time.monotonic() + RELEASE_SECONDS, leases.release,
                              ctx.session_id, ids)
        except DatabaseUnavailable as exc:
            ctx.log.warning(f"warm start: claims not given back ({exc}); the session's close "
                            "will")


def _follow() -> Any:
    """RUN_DONE -> JOB_FINISHED as it is recorded (the launcher runs processing), as the
    master's writes do (:func:`balsam.launcher.status_writers.open_status`)."""
    from balsam.processing import transitions

    return transitions.FINISH_ON_RECORD
