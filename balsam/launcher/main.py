"""``balsam launcher``: the composition root of a launcher.

:func:`run` reads the DB's settings, detects the allocation (sliced by ``--offset-nodes`` /
``--limit-nodes``), chooses the MPI launcher (:mod:`balsam.platform.mpi.choice`; the first
log line says which and why), opens the database connection and the launcher
session (label = job mode and workflow filter, with the scheduler's job id), installs the
SIGTERM/SIGINT handlers (they set the one stop event of the :class:`Context`), starts the
transition workers when the mode says its tasks can start (:meth:`Context.started`; serial
mode: once its ensemble is launched, so they do not slow its start-up), runs the mode chosen by
``--job-mode`` (:func:`choose_mode`; every mode has the shape of
:class:`balsam.launcher.modes.LauncherMode`, whose docstring also says where each records
RUNNING) and closes the session in ``finally`` -- whatever still shows RUNNING becomes
RUN_TIMEOUT and every claim is released -- unless the session was lost to a sweep, or the mode
cannot tell that its tasks are dead (``ctx.release_session``): then the lease sweep closes it.

A lease too short for a killed launcher's tasks to die within it is raised to the floor
(:func:`balsam.launcher.fence.effective_lease`, one log line).

Time: tasks are stopped at ``min(--time-limit-minutes, allocation end)`` minus the walltime
margin (``launcher.walltime_margin_seconds``, at most a quarter of the whole time, so a short
test limit still runs jobs), with a grace that fits in the margin. Logs go to
``<db>/log/launcher_<timestamp>_<pid>.log`` (``time|pid|level|message``); one line goes to
stdout at start.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

from balsam import defaults
from balsam.core.tunables import Tunables
from balsam.db import dbsettings, serverinfo
from balsam.db.database import Database
from balsam.errors import BalsamError, DatabaseUnavailable
from balsam.launcher.context import Context
from balsam.launcher.fence import effective_lease
from balsam.launcher.modes import LauncherMode
from balsam.logfile import open_log
from balsam.platform import allocation, outer_launch
from balsam.platform.mpi import choice

if TYPE_CHECKING:
    from balsam.processing.worker import TransitionPool

CLOSE_SECONDS = 5.0
"""Longest the launcher tries to close its session at exit (the lease sweep is the fallback)."""


def remaining_limit(time_limit_minutes: float, alloc_end: Optional[float], now_epoch: float,
                    margin_seconds: float) -> tuple[Optional[float], float]:
    """(seconds from now until tasks must stop or None, the margin used) for a limit in
    minutes (0: none) and an allocation end time (epoch seconds or None)."""
    limits = []
    if time_limit_minutes > 0:
        limits.append(time_limit_minutes * 60.0)
    if alloc_end is not None:
        limits.append(max(0.0, alloc_end - now_epoch))
    if not limits:
        return None, 0.0
    total = min(limits)
    margin = min(margin_seconds, total / 4.0)
    return total - margin, margin


def refuse_shared_launch(environ: Mapping[str, str]) -> None:
    """Raise BalsamError when the launcher is one of several processes of an enclosing launch
    (``srun -n 4 balsam launcher``): each would run tasks on every node of the allocation."""
    shared = outer_launch.outer_tasks(environ)
    if shared:
        tasks, name = shared
        raise BalsamError(f"this launcher is one of {tasks} processes of an enclosing launch "
                          f"({name}={tasks}); start one launcher per allocation (srun -n 1, "
                          "mpiexec -n 1)")


def run(args: argparse.Namespace) -> int:
    """Run a launcher as the CLI arguments say; the exit status (0 after a normal stop, 1 if
    the session was lost). Raises BalsamError for bad settings or an unreachable database."""
    db_path = serverinfo.active_db_path()
    refuse_shared_launch(os.environ)
    settings = dbsettings.load(db_path)
    tunables, raised = effective_lease(Tunables.from_settings(settings["launcher"]), args.job_mode)
    if raised:  # the serial ranks read their tunables from the settings
        settings = dict(settings, launcher=dict(settings["launcher"],
                                                lease_seconds=tunables.lease_seconds))
    gpus = args.gpus_per_node if args.gpus_per_node is not None else int(settings["gpus_per_node"])
    alloc = allocation.detect(os.environ, cores_per_node=int(settings["cores_per_node"]),
                              gpus_per_node=gpus, local_nodes=int(settings["local_nodes"]))
    alloc = alloc.sliced(args.offset_nodes or 0, args.limit_nodes)
    launcher = choice.choose(str(settings["mpi"]), str(settings["machine"]),
                             str(settings["mpi_executable"]), os.environ.get("PATH", os.defpath),
                             choice.wheel_mpiexec())
    mode = choose_mode(args.job_mode)
    wf_filter = None if args.consume_all else args.wf_filter
    tags = dict(getattr(args, "tag", None) or [])
    threads = (defaults.LAUNCHER_TRANSITION_THREADS if args.num_transition_threads is None
               else args.num_transition_threads)

    left, margin = remaining_limit(args.time_limit_minutes or 0.0, alloc.end_time, time.time(),
                                   tunables.walltime_margin_seconds)
    log, handler, log_path = open_log(db_path, "launcher")
    if raised:
        log.warning(raised)
    step = outer_launch.slurm_step(os.environ)
    if step:
        log.info(f"running inside Slurm step {step}: the steps it starts get SLURM_OVERLAP=1 "
                 "and none of that step's SLURM_* variables")
    stop = threading.Event()
    db = Database(db_path, "balsam-launcher", stop=stop,
                  reconnect_max_seconds=tunables.reconnect_max_seconds, log=log.warning)
    label = f"{args.job_mode} " + (f"--wf-filter {wf_filter}" if wf_filter else "--consume-all")
    label += "".join(f" --tag {k}={v}" for k, v in sorted(tags.items()))
    ctx = Context(
        db_path=db_path, settings=settings, tunables=tunables, alloc=alloc, db=db,
        session_id=0, job_mode=args.job_mode, wf_filter=wf_filter,
        persistent=bool(args.persistent), processing=threads > 0, gpus_per_node=gpus, stop=stop,
        log=log, base_env=outer_launch.inner_environ(os.environ), flavour=launcher.flavour,
        mpi_executable=launcher.executable, mpi_reason=launcher.reason,
        stop_at=None if left is None else time.monotonic() + left,
        stop_grace=min(tunables.shutdown_grace_seconds, margin / 2.0) if left is not None
        else tunables.shutdown_grace_seconds, tags=tags)
    mode.prestart(ctx)  # serial: the MPI start-up overlaps opening the session
    from balsam.core import leases  # after the ensemble's launch: ~40 ms of imports
    ctx.opened_at = time.monotonic()  # (retries only make the lease start later)
    try:
        session_id = db.run_before(
            time.monotonic() + tunables.reconnect_max_seconds, leases.open_session,
            hostname=socket.gethostname(), pid=os.getpid(), job_mode=args.job_mode,
            num_nodes=alloc.num_nodes, lease_seconds=tunables.lease_seconds,
            scheduler_id=alloc.scheduler_id, label=label)
    except BaseException:  # DatabaseUnavailable, a signal: no session, nothing claimed
        mode.abandon(ctx)
        if ctx.watchdog is not None:
            ctx.watchdog.close()
        log.removeHandler(handler)
        handler.close()
        raise
    ctx.session_id = session_id
    limit = "no time limit" if left is None else f"tasks stop in {left:.0f} s"
    print(f"Balsam launcher: {args.job_mode} mode, {alloc.num_nodes} node(s) "
          f"({alloc.scheduler}), session {session_id}, {limit}, log {log_path}", flush=True)
    log.info(f"started: {label}, nodes {','.join(alloc.hosts)}, session {session_id}, "
             f"MPI {launcher.describe()}, processing "
             f"{'on' if ctx.processing else 'off'}, persistent {ctx.persistent}, {limit}")
    restore = _install_signals(ctx)
    pools: list[Optional[TransitionPool]] = []
    # Serial mode starts the transition workers once its ensemble is launched (start-up first).
    ctx.after_start = lambda: pools.append(_transition_pool(ctx, threads))
    status, lost = 1, False
    try:
        status = mode.run(ctx)
        lost = ctx.exit_reason == "session lost"
    except BaseException:
        log.exception("launcher failed")
        raise
    finally:
        restore()
        _wind_down(ctx, [pool for pool in pools if pool is not None], lost)
        log.info(f"exit status {status}: {ctx.stop_reason or ctx.exit_reason or 'done'}; "
                 f"{db.statements} statements in {db.transactions} transactions")
        db.close()
        log.removeHandler(handler)
        handler.close()
    return status


def _wind_down(ctx: Context, pools: list[TransitionPool], lost: bool) -> None:
    """The launcher's end, its parts overlapped: the transition workers told to stop (each
    closes its session and connection), the watchdog told to exit, and the session closed
    (unless ``lost``, or ``ctx.release_session`` says its tasks are not known dead) while they
    do, then both waited for. Only a watchdog with nothing registered is waited for after the
    session's close: one still holding a task's group must have stopped it before its jobs
    are released (before, each part waited for the one before it: 10-40 ms of every exit)."""
    for pool in pools:
        pool.begin_stop()
    watchdog = ctx.watchdog
    if watchdog is not None:
        watchdog.hang_up()
        if watchdog.registered:
            watchdog.reap()
    if not lost and ctx.release_session:
        _close(ctx)
    elif not lost:
        ctx.log.error(f"session {ctx.session_id} stays open until its lease expires: its "
                      "tasks are not known to be dead")
    if watchdog is not None:
        watchdog.reap()
    for pool in pools:
        pool.stop()


def choose_mode(job_mode: str) -> LauncherMode:
    """The mode of ``--job-mode`` (``serial`` or ``mpi``); only its module is imported."""
    if job_mode == "serial":
        from balsam.launcher.serial_mode import SerialMode

        return SerialMode()
    from balsam.launcher.mpi_mode import MPILauncherMode

    return MPILauncherMode()


def _transition_pool(ctx: Context, threads: int) -> Optional[TransitionPool]:
    """The launcher's ``threads`` transition workers, built like the service's
    (:func:`balsam.processing.pools.start_transition_pool`); None for 0 threads."""
    if threads <= 0:
        return None
    # Imported only now: serial mode starts them once its ensemble is launched.
    from balsam.processing.pools import start_transition_pool

    return start_transition_pool(threads, ctx.db_path, ctx.tunables, wf_filter=ctx.wf_filter,
                                 base_env=ctx.base_env, log=ctx.log, draining=ctx.stop)


def _close(ctx: Context) -> None:
    from balsam.core import leases

    reason = ctx.stop_reason or ctx.exit_reason or "launcher exited"
    try:
        timed_out = ctx.db.run_before(time.monotonic() + CLOSE_SECONDS, leases.close_session,
                                      ctx.session_id, reason)
    except DatabaseUnavailable as exc:
        ctx.log.error(f"could not close session {ctx.session_id} ({exc}): the lease sweep will "
                      "release its jobs")
        return
    if timed_out:
        ctx.log.warning(f"closing the session recorded {timed_out} job(s) RUN_TIMEOUT")


def _install_signals(ctx: Context) -> Any:
    """SIGTERM/SIGINT -> ``ctx.request_stop``; a wakeup pipe makes waits return at once.
    Returns a function restoring the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    os.set_blocking(read_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    ctx.wakeup_fd = read_fd

    def handler(signum: int, _frame: Any) -> None:
        ctx.request_stop(f"the launcher received {signal.Signals(signum).name}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, previous in old.items():
            signal.signal(sig, previous)
        signal.set_wakeup_fd(previous_fd)
        ctx.wakeup_fd = None
        os.close(read_fd)
        os.close(write_fd)

    return restore

