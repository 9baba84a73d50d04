"""Serial job mode: one MPI launch over the allocation runs every single-node, single-rank job.

Two sides:

* The launcher process (``balsam launcher --job-mode serial``) calls :func:`run_launcher`: it
  runs ONE MPI command (per scheduler: :mod:`balsam.platform.mpi.ensemble`), ``1 + nodes``
  ranks of ``python -m balsam.launcher.serial_ranks CONFIG`` (the master shares the first node
  with worker 1), waits for it, and forwards a stop (SIGTERM/SIGINT, the ``stop`` event) to it
  as SIGTERM, which the MPI launcher passes on to every rank (MPICH's Hydra does); if the
  launcher is killed outright, its watchdog does the same. The session is opened and closed by
  the caller: rank 0 only uses it (claims, heartbeats) through its id, so whatever happens to
  the ranks, the caller's ``close_session`` records any job still RUNNING as RUN_TIMEOUT -- once
  :func:`balsam.launcher.ensemble_watch.settle` knows the tasks are dead. While an ensemble
  started before the session boots, the launcher runs the first node's first tasks itself
  (:mod:`balsam.launcher.warm_start`) and serves them in the same wait.
* Inside the MPI job, :mod:`balsam.launcher.serial_ranks` is every rank's entry point: rank 0
  runs the :class:`balsam.launcher.serial_master.Master`, ranks 1..N a
  :class:`balsam.launcher.serial_worker.Worker` each. :class:`SerialConfig` is what passes
  from this side to that one.
"""
from __future__ import annotations

import json
import logging
import math
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from balsam.core import serial_reports
from balsam.core.retries import WALLTIME_STOP_REASON
from balsam.launcher.ensemble_stdin import Launched, abandon, hand_over, tell_ended
from balsam.launcher.fence import FORCE_KILL_AFTER_SECONDS as FORCE_KILL_AFTER_SECONDS
from balsam.platform.allocation import Allocation
from balsam.platform.process import drain_fd, pidfd_open
from balsam.platform.procgroup import signal_group

if TYPE_CHECKING:
    from balsam.launcher.context import Context
    from balsam.launcher.ensemble_stuck import StuckWatch
    from balsam.launcher.warm_start import WarmStart
    from balsam.platform.mpi.choice import LauncherChoice

START_PROCESSING_SECONDS = 2.0
"""The launcher starts its transition workers once the ensemble has changed jobs twice (its
master's first claim, then its first tasks recorded RUNNING), or this long after starting the
ensemble if that comes later (nothing runnable yet, or a loaded machine): their start-up
(imports, two connections, ~0.25 s of CPU) would otherwise compete with the first tasks'."""
START_PROCESSING_CHANGES = 2
"""Job-change notifications after which the transition workers start (the first is the claim)."""
EXIT_IDLE, EXIT_SESSION_LOST, EXIT_TIME_LIMIT, EXIT_STOPPED, EXIT_FINISHED = 0, 3, 4, 5, 6
EXIT_STATUSES = (EXIT_IDLE, EXIT_SESSION_LOST, EXIT_TIME_LIMIT, EXIT_STOPPED, EXIT_FINISHED)
"""The master's exit statuses (the MPI launch's status tells the launcher why it ended);
``EXIT_FINISHED``: its work is done and nothing could bring more (it did not idle). Here, not
in :mod:`balsam.launcher.serial_master`, so the launcher reads them without importing the
master (~60 ms of imports at exit)."""
EXIT_RANK_LOST = 8  # the master's MPI_Abort: a worker sent no heartbeat (rank_heartbeat.py)


@dataclass
class SerialConfig:
    """What the ranks need to rebuild the launcher's :class:`Context`, passed as one JSON
    argument. ``deadline`` is an epoch time (ranks have their own monotonic clocks)."""

    db_path: str
    session_id: int
    settings: dict[str, Any]
    hosts: list[str]
    cores_per_node: int
    gpus_per_node: int
    scheduler: str = "local"
    scheduler_id: str = ""
    end_time: Optional[float] = None
    wf_filter: Optional[str] = None
    tags: dict[str, str] = field(default_factory=dict)
    persistent: bool = False
    processing: bool = True
    deadline: Optional[float] = None
    stop_grace: float = 5.0
    log_path: str = ""
    generation: int = 0
    """How many ensembles the session started before this one (names the watchdog reports)."""
    watch_dir: str = ""
    """Where the worker ranks' watchdogs report (:func:`watch_dir`; known before the session)."""
    rank_evidence: dict[str, str] = field(default_factory=dict)
    """What tells a rank its rank before MPI_Init (:func:`balsam.platform.mpi.ensemble.rank_evidence`)."""
    mpi_env: dict[str, str] = field(default_factory=dict)
    """Variables the launcher added for the ensemble's own MPI library
    (:func:`balsam.platform.mpi.ensemble.ensemble_mpi_environ`): kept from the tasks."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SerialConfig:
        return cls(**json.loads(text))

    @classmethod
    def from_context(cls, ctx: Context, log_path: str) -> SerialConfig:
        alloc = ctx.alloc
        left = ctx.seconds_left()
        return cls(db_path=ctx.db_path, session_id=ctx.session_id, settings=ctx.settings,
                   hosts=list(alloc.hosts), cores_per_node=alloc.cores_per_node,
                   gpus_per_node=ctx.gpus_per_node, scheduler=alloc.scheduler,
                   scheduler_id=alloc.scheduler_id, end_time=alloc.end_time,
                   wf_filter=ctx.wf_filter, tags=dict(ctx.tags), persistent=ctx.persistent,
                   processing=ctx.processing,
                   deadline=None if math.isinf(left) else time.time() + left,
                   stop_grace=ctx.stop_grace, log_path=log_path, generation=ctx.ensembles,
                   watch_dir=watch_dir(ctx.db_path))

    def allocation(self) -> Allocation:
        return Allocation(tuple(self.hosts), self.cores_per_node, self.gpus_per_node,
                          self.scheduler, self.scheduler_id, self.end_time)


def watch_dir(db_path: str) -> str:
    """Where this launcher's worker watchdogs report, a directory per ensemble in it
    (:mod:`balsam.launcher.ensemble_watch`): named by its host and pid, not its session, so
    that a worker of an ensemble started before the session has its watchdog (which removes
    its MPI shared-memory file if it dies) before it is handed the session id; and by this
    process's start (:func:`serial_reports.instance`: pid 1 in every container)."""
    return serial_reports.launcher_dir(db_path, socket.gethostname(), os.getpid(),
                                       serial_reports.instance())


def ensemble_argv(config: SerialConfig, task: LauncherChoice, path: str,
                  wheel: Optional[str]) -> tuple[list[str], str]:
    """(the MPI command running the ensemble: ``1 + len(config.hosts)`` ranks, the master and
    worker 1 on the first node, worker i on node i-1; why it starts that way). The bootstrap
    per scheduler is :mod:`balsam.platform.mpi.ensemble`'s; ``task`` is the tasks' launcher,
    ``wheel`` the mpich wheel's mpiexec (or None), ``path`` the PATH to search. Sets
    ``config.rank_evidence`` and ``config.mpi_env``: start the command with
    ``early_rank.ensemble_environ``."""
    from balsam.platform.mpi.ensemble import (  # (slow imports)
        ensemble_command,
        ensemble_mpi_environ,
        rank_evidence,
    )

    config.rank_evidence = rank_evidence(config.scheduler, task, wheel, path)
    config.mpi_env = ensemble_mpi_environ(config.scheduler, wheel, path, os.environ)
    rank_argv = [sys.executable, "-m", "balsam.launcher.serial_ranks", config.to_json()]
    return ensemble_command(config.scheduler, config.hosts, rank_argv, task, wheel, path)


def launch(ctx: Context, handover: bool = False) -> Launched:
    """Start the ensemble for ``ctx`` (and register it with the launcher's watchdog).

    With ``ctx.session_id`` 0 (no session yet: :func:`early_start` said yes; or ``handover``:
    the launcher's own tasks are handed to the new ensemble, :func:`hand_over`), it starts while
    the launcher opens its session -- the MPI start-up and the ranks' imports and database
    connection overlap the launcher's own -- and rank 0 waits for the id on the MPI launcher's
    stdin, which Hydra forwards to it: :func:`hand_over` writes it, :func:`abandon` gives up."""
    from balsam.platform.early_rank import ensemble_environ
    from balsam.platform.mpi.choice import LauncherChoice, wheel_mpiexec

    log_path = next((h.baseFilename for h in ctx.log.handlers
                     if isinstance(h, logging.FileHandler)), "")
    config = SerialConfig.from_context(ctx, log_path)
    early = not ctx.session_id or handover
    config.session_id = 0 if early else config.session_id  # rank 0 then reads it on stdin
    argv, why = ensemble_argv(config, LauncherChoice(ctx.flavour, ctx.mpi_executable,
                                                     ctx.mpi_reason),
                              ctx.base_env.get("PATH", os.defpath), wheel_mpiexec())
    name = f"serial_{ctx.session_id}.out" if ctx.session_id else f"serial_pid{os.getpid()}.out"
    out_path = os.path.join(ctx.db_path, "log", name)
    if not ctx.ensembles:  # (its own instance's: never another launcher's, see watch_dir)
        shutil.rmtree(config.watch_dir, ignore_errors=True)
    if ctx.session_id:  # before a task can start: the lease sweep trusts these reports then
        serial_reports.mark_session(config.watch_dir, ctx.session_id, database=ctx.db_path,
                                    since=ctx.ensemble_since, generation=ctx.ensembles)
    ctx.watch_dir = config.watch_dir
    ctx.log.info(f"serial mode: 1 master + {ctx.alloc.num_nodes} worker rank(s) started by "
                 f"{' '.join(argv[:3])} ...{' (before the session opens)' if not ctx.session_id else ''}: "
                 f"{why}")
    with open(out_path, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if early else subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=ensemble_environ(ctx.base_env, config.rank_evidence,
                                                     config.mpi_env))
    _watch_ensemble(ctx, proc.pid)
    return Launched(proc, out_path, early)


def early_start(ctx: Context) -> bool:
    """Whether the ensemble of ``ctx`` can start before the session opens: when the mpich
    wheel's Hydra starts it (Hydra forwards its stdin to rank 0, whatever the bootstrap)."""
    from balsam.platform.mpi.choice import wheel_mpiexec
    from balsam.platform.mpi.ensemble import starts_with_hydra

    return starts_with_hydra(ctx.alloc.scheduler, wheel_mpiexec(),
                             ctx.base_env.get("PATH", os.defpath))


class SerialMode:
    """Serial mode as a :class:`balsam.launcher.modes.LauncherMode`: the ensemble starts before
    the session opens when it can (:func:`early_start`), and :meth:`run` runs it (again after a
    rank died: :func:`balsam.launcher.ensemble_restart.run_serial`). It records RUNNING after a
    task started (the module docstring of :mod:`balsam.launcher.modes` says why)."""

    def prestart(self, ctx: Context) -> None:
        """Launch the ensemble now if rank 0 can be handed the session id later."""
        if early_start(ctx):
            ctx.prestarted = launch(ctx)

    def abandon(self, ctx: Context) -> None:
        """No session: the early ensemble, if any, exits without claiming anything."""
        launched, ctx.prestarted = ctx.prestarted, None
        if launched is not None:
            from balsam.launcher.ensemble_watch import SETTLE_SLACK_SECONDS, forget_reports

            abandon(launched, ctx)
            forget_reports(watch_dir(ctx.db_path), ctx.tunables.kill_grace_seconds
                           + SETTLE_SLACK_SECONDS)

    def run(self, ctx: Context) -> int:
        """Run ensembles for the open session until one ends normally (:func:`run_launcher`)."""
        from balsam.launcher.ensemble_restart import run_serial

        return run_serial(ctx, run_launcher)


def run_launcher(ctx: Context) -> int:
    """Run the serial-mode ensemble for the open session of ``ctx`` and wait for it; the
    launcher's exit status: 0 when it ended normally (idle: ``ctx.exit_reason`` says so;
    signalled or at the time limit: ``ctx.stop_reason`` does), 1 when the session was lost
    (``ctx.exit_reason`` is "session lost"), 2 when the MPI launch failed.

    Contract with :func:`balsam.launcher.main.run`: the session is open and is closed by the
    caller afterwards (unless lost); ``ctx.alloc`` is already sliced, ``ctx.gpus_per_node`` is
    the ``--gpus-per-node`` value; ``ctx.stop`` is set by the caller's SIGTERM/SIGINT handler
    (``ctx.wakeup_fd``, if set, becomes readable then). ``ctx.prestarted``, if set, is the
    ensemble the caller started with :func:`launch` before opening the session: it is handed
    the session id and run; ``ctx.carried``, the launcher's own tasks that outlived the last
    ensemble (failed), are handed to this one. The ranks append to the launcher's log file; the
    MPI launcher's output goes to ``<db>/log/serial_<session>.out`` (``serial_pid<pid>.out``).
    """
    from balsam.launcher.ensemble_stuck import StuckWatch

    launched, ctx.prestarted = ctx.prestarted, None
    warm, ctx.carried = ctx.carried, None
    fresh, carry = launched is None, ""
    if launched is None:
        carry = "" if warm is None else warm.carry_line()
        launched = launch(ctx, handover=bool(carry))
    # Fenced (ensemble_stuck.py) before the first task can start: the warm start's, the master's.
    watch, stuck_before = StuckWatch(ctx, pgid=launched.proc.pid), ctx.stuck_ensembles
    try:
        if carry:  # rank 0 reads the session id and these shares of node 1 on its stdin
            hand_over(launched, ctx.session_id, carry)
        elif not fresh and launched.early:
            from balsam.launcher.warm_start import WarmStart

            serial_reports.mark_session(ctx.watch_dir, ctx.session_id, database=ctx.db_path,
                                        since=ctx.ensemble_since)  # (see launch)
            warm = WarmStart.begin(ctx)
            hand_over(launched, ctx.session_id, warm.handover_line() if warm is not None else "")
        proc, out_path = launched.proc, launched.out_path
        rc = _wait_ensemble(launched, ctx, watch, warm)
    finally:
        watch.close()  # (the ensemble was reaped: nothing for it to do)
    if warm is not None:  # the launcher's own tasks outlived the ensemble: wait, or carry them
        ctx.carried = warm.outlived(lost=rc == EXIT_SESSION_LOST, failed=rc not in EXIT_STATUSES)
        tell_ended(launched, [], last=True)
    from balsam.launcher.context import FINISHED_REASON
    from balsam.launcher.ensemble_watch import settle

    if rc != EXIT_SESSION_LOST:  # tasks dead (or the session left to the sweep), starts kept
        settle(ctx)
    if ctx.watchdog is not None:
        ctx.watchdog.remove(proc.pid)

    stuck = ctx.stuck_ensembles > stuck_before  # (killed by the launcher: not the stop's end)
    if rc not in EXIT_STATUSES and ctx.stop.is_set() and not stuck:  # stopped while starting
        ctx.log.info(f"the serial-mode ensemble, still starting, ended with status {rc} on the "
                     "forwarded stop")
        rc = EXIT_STOPPED
    if rc == EXIT_IDLE:
        ctx.exit_reason = f"idle for {ctx.tunables.idle_exit_seconds:g} s with nothing to run"
    elif rc == EXIT_FINISHED:
        ctx.exit_reason = FINISHED_REASON
    elif rc == EXIT_TIME_LIMIT:
        ctx.stop_reason = ctx.stop_reason or WALLTIME_STOP_REASON
    elif rc == EXIT_STOPPED:
        ctx.stop_reason = ctx.stop_reason or "the serial-mode ranks received a signal"
    elif rc == EXIT_SESSION_LOST:
        ctx.exit_reason = "session lost"
        return 1
    else:
        why = (" (its master aborted it: a worker rank went silent)" if rc == EXIT_RANK_LOST
               else " (killed by the launcher: stuck)" if stuck else "")
        ctx.log.error(f"the serial-mode ensemble failed with status {rc}{why} (see {out_path})")
        return 2
    return 0


def _watch_ensemble(ctx: Context, pgid: int) -> None:
    """If this process is killed (SIGKILL), its watchdog stops the ensemble as a signal would:
    SIGTERM (the master stops the tasks and records them), SIGKILL if it outlives the grace."""
    from balsam.launcher.watchdog import Watchdog

    if ctx.watchdog is None:  # closed by the caller, :func:`balsam.launcher.main.run`
        ctx.watchdog = Watchdog(ctx.tunables.shutdown_grace_seconds + FORCE_KILL_AFTER_SECONDS,
                                log=ctx.log.error)
    ctx.watchdog.add(pgid)


def _wait_ensemble(launched: Launched, ctx: Context, watch: StuckWatch,
                   warm: Optional[WarmStart] = None) -> int:
    """Wait for the MPI launch; forward a signal-requested stop as one SIGTERM (the ranks see
    the time limit themselves); SIGKILL its process group if it outlives the stop too long.
    Runs ``ctx.started()`` (the transition workers) once jobs changed
    :data:`START_PROCESSING_CHANGES` times -- the master claimed, then recorded its first
    starts -- or :data:`START_PROCESSING_SECONDS` passed: their start-up (imports, two
    connections) would otherwise compete with the ranks' for the cores. ``warm``: the launcher's
    own first tasks, served meanwhile. Kills the launch if ``watch`` finds its master stopped
    renewing the lease (:mod:`.ensemble_stuck`); removes the /dev/shm files its ranks left
    (:mod:`.ensemble_shm`)."""
    from balsam.launcher.ensemble_shm import Segments

    proc = launched.proc
    segments = Segments(proc.pid)
    forwarded: Optional[float] = None
    give_up_at = None if ctx.stop_at is None else (
        ctx.stop_at + ctx.stop_grace + FORCE_KILL_AFTER_SECONDS)
    pidfd = pidfd_open(proc.pid)
    processing_at = None
    changes = 0
    if ctx.after_start is not None:
        processing_at = time.monotonic() + START_PROCESSING_SECONDS
        _quietly(ctx.db.listen)  # on a broken connection they start after the delay
    while True:
        if warm is not None and (warm.running or warm.ended or warm.status.pending):
            warm.serve()
            ended = warm.take_ended()
            tell_ended(launched, ended, last=not (warm.running or warm.ended or
                                                   warm.status.pending))
        rc = proc.poll()
        if rc is not None:
            break
        now = time.monotonic()
        segments.look(now, before_stop=forwarded is None and ctx.stop.is_set())
        if forwarded is None and ctx.stop.is_set():
            ctx.log.info(f"forwarding the stop to the serial-mode ensemble ({ctx.stop_reason})")
            proc.send_signal(signal.SIGTERM)
            forwarded = now
            give_up_at = now + ctx.tunables.shutdown_grace_seconds + FORCE_KILL_AFTER_SECONDS
        if give_up_at is not None and now > give_up_at:
            ctx.log.error("the serial-mode ensemble did not stop in time: killing it")
            signal_group(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            break
        why = None if forwarded is not None else watch.stuck(now)
        if why is not None:
            ctx.log.error(f"the serial-mode ensemble is stuck ({why}): killing it")
            ctx.stuck_ensembles += 1
            signal_group(proc.pid, signal.SIGKILL)
            rc = proc.wait()
            break
        fds = [fd for fd in (pidfd, ctx.wakeup_fd) if fd is not None]
        if warm is not None:
            fds += warm.fds()
        if processing_at is not None:  # until jobs changed: the ensemble is up
            changes += ctx.db.wait(max(0.0, min(0.5, processing_at - now)), fds)
            if changes >= START_PROCESSING_CHANGES or time.monotonic() >= processing_at:
                processing_at = None
                _quietly(ctx.db.unlisten)  # nothing reads them from now on
                ctx.started()
            if ctx.wakeup_fd is not None:
                drain_fd(ctx.wakeup_fd)
        elif not fds:
            ctx.stop.wait(0.1)
        elif ctx.wakeup_fd in select.select(fds, [], [], 0.5)[0]:
            drain_fd(ctx.wakeup_fd)
    segments.remove(ctx.log.warning)
    if processing_at is not None:
        _quietly(ctx.db.unlisten)
    if pidfd is not None:
        os.close(pidfd)
    return rc


def _quietly(call: Callable[[], None]) -> None:
    """``call()``, ignoring a failure of the launcher's connection (the next transaction reconnects)."""
    try:
        call()
    except Exception:  # noqa: BLE001 - psycopg2's errors of a broken connection
        pass
