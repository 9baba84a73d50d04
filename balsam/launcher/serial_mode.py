"""Serial job mode: one MPI launch over the allocation runs every single-node, single-rank job.

Two sides:

* The launcher process (``balsam launcher --job-mode serial``) calls :func:`run_launcher`: it
  runs ONE MPI command (per scheduler: :mod:`balsam.platform.mpi.ensemble`), ``1 + nodes``
  ranks of ``python -m balsam.launcher.serial_mode CONFIG`` (the master shares the first node
  with worker 1), waits for it, and forwards a stop (SIGTERM/SIGINT, the ``stop`` event) to it
  as SIGTERM, which the MPI launcher passes on to every rank (MPICH's Hydra does); if the
  launcher is killed outright, its watchdog does the same. The session is opened and closed by
  the caller: rank 0 only uses it (claims, heartbeats) through its id, so whatever happens to
  the ranks, the caller's ``close_session`` records any job still RUNNING as RUN_TIMEOUT -- once
  :func:`balsam.launcher.ensemble_watch.settle` knows the tasks are dead.
* Inside the MPI job, :func:`main` dispatches by rank: rank 0 runs the
  :class:`balsam.launcher.serial_master.Master` (the only rank that touches the database),
  ranks 1..N run a :class:`balsam.launcher.serial_worker.Worker` each (rank i serves node i-1).
  Messages are pickled dicts sent with ``isend`` and received with matched probes
  (``improbe``): no rank ever blocks in MPI, so none spins at 100% CPU.

mpi4py is imported only inside :func:`main` (importing this module does no MPI work).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from balsam.core.retries import WALLTIME_STOP_REASON
from balsam.platform.allocation import Allocation
from balsam.platform.process import pidfd_open
from balsam.platform.procgroup import signal_group

if TYPE_CHECKING:
    from balsam.launcher.context import Context
    from balsam.platform.mpi.choice import LauncherChoice

ORDERS, REPORTS, SESSION = 11, 12, 13
"""MPI tags: master -> worker orders, worker -> master reports, master -> worker the session
id of an ensemble started before the session opened (0: exit at once)."""
FORCE_KILL_AFTER_SECONDS = 9.0
"""After forwarding a stop, the launcher SIGKILLs the MPI launch if it is still running after
the tasks' shutdown grace plus this long (all ranks are gone within 15 s of the signal)."""
LOG_FORMAT = "%(asctime)s|%(process)d|%(levelname)s|%(message)s"
EXIT_NO_SESSION = 7
"""Exit status of rank 0 of an early ensemble that got no session id (a failed launch)."""
SESSION_WAIT_SLACK_SECONDS = 30.0
"""Rank 0 of an early ensemble waits for the session id this long past the launcher's
``reconnect_max_seconds`` (its limit for opening the session), then exits."""
START_PROCESSING_SECONDS = 1.0
"""The launcher starts its transition workers when the ensemble first changes a job, or this
long after starting the ensemble if it changes none sooner (nothing runnable yet)."""


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
                   stop_grace=ctx.stop_grace, log_path=log_path, generation=ctx.ensembles)

    def allocation(self) -> Allocation:
        return Allocation(tuple(self.hosts), self.cores_per_node, self.gpus_per_node,
                          self.scheduler, self.scheduler_id, self.end_time)


def ensemble_argv(config: SerialConfig, task: LauncherChoice, path: str,
                  wheel: Optional[str]) -> tuple[list[str], str]:
    """(the MPI command running the ensemble: ``1 + len(config.hosts)`` ranks, the master and
    worker 1 on the first node, worker i on node i-1; why it starts that way). The bootstrap
    per scheduler is :mod:`balsam.platform.mpi.ensemble`'s; ``task`` is the tasks' launcher,
    ``wheel`` the mpich wheel's mpiexec (or None), ``path`` the PATH to search."""
    from balsam.platform.mpi.ensemble import ensemble_command  # not in the ranks: slow imports

    rank_argv = [sys.executable, "-m", "balsam.launcher.serial_mode", config.to_json()]
    return ensemble_command(config.scheduler, config.hosts, rank_argv, task, wheel, path)


@dataclass
class Launched:
    """An ensemble the launcher started: its MPI launch (process group leader), where its
    output goes, and whether rank 0 still waits for the session id on the launch's stdin."""

    proc: subprocess.Popen[Any]
    out_path: str
    early: bool = False


def launch(ctx: Context) -> Launched:
    """Start the ensemble for ``ctx`` (and register it with the launcher's watchdog).

    With ``ctx.session_id`` 0 (no session yet: :func:`early_start` said yes), it starts while
    the launcher opens its session -- the MPI start-up and the ranks' imports and database
    connection overlap the launcher's own -- and rank 0 waits for the id on the MPI launcher's
    stdin, which Hydra forwards to it: :func:`hand_over` writes it, :func:`abandon` gives up."""
    from balsam.platform.mpi.choice import LauncherChoice, wheel_mpiexec

    log_path = next((h.baseFilename for h in ctx.log.handlers
                     if isinstance(h, logging.FileHandler)), "")
    config = SerialConfig.from_context(ctx, log_path)
    early = not ctx.session_id
    argv, why = ensemble_argv(config, LauncherChoice(ctx.flavour, ctx.mpi_executable,
                                                     ctx.mpi_reason),
                              ctx.base_env.get("PATH", os.defpath), wheel_mpiexec())
    name = f"serial_{ctx.session_id}.out" if not early else f"serial_pid{os.getpid()}.out"
    out_path = os.path.join(ctx.db_path, "log", name)
    ctx.log.info(f"serial mode: 1 master + {ctx.alloc.num_nodes} worker rank(s) started by "
                 f"{' '.join(argv[:3])} ...{' (before the session opens)' if early else ''}: "
                 f"{why}")
    with open(out_path, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if early else subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _watch_ensemble(ctx, proc.pid)
    return Launched(proc, out_path, early)


def early_start(ctx: Context) -> bool:
    """Whether the ensemble of ``ctx`` can start before the session opens: when the mpich
    wheel's Hydra starts it (Hydra forwards its stdin to rank 0, whatever the bootstrap)."""
    from balsam.platform.mpi.choice import wheel_mpiexec
    from balsam.platform.mpi.ensemble import starts_with_hydra

    return starts_with_hydra(ctx.alloc.scheduler, wheel_mpiexec(),
                             ctx.base_env.get("PATH", os.defpath))


def hand_over(launched: Launched, session_id: int) -> None:
    """Give the early ensemble's rank 0 the session id (it then claims work)."""
    assert launched.proc.stdin is not None
    try:
        launched.proc.stdin.write(f"{session_id}\n".encode())
        launched.proc.stdin.close()
    except OSError:  # the launch died: the wait sees its status
        pass


def abandon(launched: Launched, ctx: Context, wait_seconds: float = 5.0) -> None:
    """The session could not be opened: rank 0 reads end-of-file instead of an id and tells
    the workers to exit (nothing was claimed, no task started); kill what remains after
    ``wait_seconds``."""
    with_stdin = launched.proc.stdin
    if with_stdin is not None:
        try:
            with_stdin.close()
        except OSError:
            pass
    try:
        launched.proc.wait(wait_seconds)
    except subprocess.TimeoutExpired:
        signal_group(launched.proc.pid, signal.SIGKILL)
        launched.proc.wait()
    if ctx.watchdog is not None:
        ctx.watchdog.remove(launched.proc.pid)


def run_launcher(args: Any, ctx: Context) -> int:
    """Run the serial-mode ensemble for the open session of ``ctx`` and wait for it; the
    launcher's exit status: 0 when it ended normally (idle: ``ctx.exit_reason`` says so;
    signalled or at the time limit: ``ctx.stop_reason`` does), 1 when the session was lost
    (``ctx.exit_reason`` is "session lost"), 2 when the MPI launch failed.

    Contract with :func:`balsam.launcher.main.run`: the session is open and is closed by the
    caller afterwards (unless lost); ``ctx.alloc`` is already sliced, ``ctx.gpus_per_node`` is
    the ``--gpus-per-node`` value; ``ctx.stop`` is set by the caller's SIGTERM/SIGINT handler
    (``ctx.wakeup_fd``, if set, becomes readable then). ``ctx.prestarted``, if set, is the
    ensemble the caller started with :func:`launch` before opening the session: it is handed
    the session id and run. ``args`` is not used: everything comes from ``ctx``. The ranks
    append to the launcher's log file; the MPI launcher's own output goes to
    ``<db>/log/serial_<session>.out`` (``serial_pid<launcher pid>.out`` when started early).
    """
    launched, ctx.prestarted = ctx.prestarted, None
    if launched is None:
        launched = launch(ctx)
    elif launched.early:
        hand_over(launched, ctx.session_id)
    proc, out_path = launched.proc, launched.out_path
    rc = _wait_ensemble(proc, ctx)
    from balsam.launcher import serial_master as sm
    from balsam.launcher.context import FINISHED_REASON
    from balsam.launcher.ensemble_watch import settle

    if rc != sm.EXIT_SESSION_LOST:  # tasks dead (or the session left to the sweep), starts kept
        settle(ctx)
    if ctx.watchdog is not None:
        ctx.watchdog.remove(proc.pid)

    if rc == sm.EXIT_IDLE:
        ctx.exit_reason = f"idle for {ctx.tunables.idle_exit_seconds:g} s with nothing to run"
    elif rc == sm.EXIT_FINISHED:
        ctx.exit_reason = FINISHED_REASON
    elif rc == sm.EXIT_TIME_LIMIT:
        ctx.stop_reason = ctx.stop_reason or WALLTIME_STOP_REASON
    elif rc == sm.EXIT_STOPPED:
        ctx.stop_reason = ctx.stop_reason or "the serial-mode ranks received a signal"
    elif rc == sm.EXIT_SESSION_LOST:
        ctx.exit_reason = "session lost"
        return 1
    else:
        ctx.log.error(f"the serial-mode ensemble failed with status {rc} (see {out_path})")
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


def _wait_ensemble(proc: subprocess.Popen[Any], ctx: Context) -> int:
    """Wait for the MPI launch; forward a signal-requested stop as one SIGTERM (the ranks see
    the time limit themselves); SIGKILL its process group if it outlives the stop too long.
    Runs ``ctx.started()`` (the transition workers) once a job changes -- the master recorded
    its first starts -- or :data:`START_PROCESSING_SECONDS` passed: their start-up (imports,
    two connections) would otherwise compete with the ranks' for the cores."""
    forwarded: Optional[float] = None
    give_up_at = None if ctx.stop_at is None else (
        ctx.stop_at + ctx.stop_grace + FORCE_KILL_AFTER_SECONDS)
    pidfd = pidfd_open(proc.pid)
    processing_at = None
    if ctx.after_start is not None:
        processing_at = time.monotonic() + START_PROCESSING_SECONDS
        _quietly(ctx.db.listen)  # on a broken connection they start after the delay
    while True:
        rc = proc.poll()
        if rc is not None:
            break
        now = time.monotonic()
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
        fds = [fd for fd in (pidfd, ctx.wakeup_fd) if fd is not None]
        if processing_at is not None:  # until a job changes: the ensemble is up
            if ctx.db.wait(max(0.0, min(0.5, processing_at - now)), fds) or (
                    time.monotonic() >= processing_at):
                processing_at = None
                _quietly(ctx.db.unlisten)  # nothing reads them from now on
                ctx.started()
            if ctx.wakeup_fd is not None:
                _drain(ctx.wakeup_fd)
        elif not fds:
            ctx.stop.wait(0.1)
        elif ctx.wakeup_fd in select.select(fds, [], [], 0.5)[0]:
            _drain(ctx.wakeup_fd)
    if processing_at is not None:
        _quietly(ctx.db.unlisten)
    if pidfd is not None:
        os.close(pidfd)
    return rc


def _quietly(call: Callable[[], None]) -> None:
    """``call()``, ignoring a failure of the launcher's connection (the next transaction
    reconnects)."""
    try:
        call()
    except Exception:  # noqa: BLE001 - psycopg2's errors of a broken connection
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, OSError):
        pass


# ---- inside the MPI job ---------------------------------------------------------------------

class WorkerLink:
    """A worker's channel to rank 0 (:class:`balsam.launcher.serial_worker.Channel`)."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self._sends: list[Any] = []

    def send(self, message: dict[str, Any]) -> None:
        self._sends = [r for r in self._sends if not r.Test()]
        self._sends.append(self.comm.isend(message, dest=0, tag=REPORTS))

    def receive(self) -> Optional[dict[str, Any]]:
        matched = self.comm.improbe(source=0, tag=ORDERS)
        return None if matched is None else matched.recv()

    def flush(self, timeout: float) -> None:
        _complete(self._sends, timeout)


class MasterLink:
    """Rank 0's channels to workers 1..N (:class:`balsam.launcher.serial_master.MasterChannel`)."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        self.comm = comm
        self.workers: Sequence[int] = range(1, comm.Get_size())
        self._any = MPI.ANY_SOURCE
        self._status = MPI.Status()
        self._sends: list[Any] = []

    def send(self, worker: int, message: dict[str, Any]) -> None:
        self.send_tagged(worker, message, ORDERS)

    def send_tagged(self, worker: int, message: Any, tag: int) -> None:
        if len(self._sends) > 64:
            self._sends = [r for r in self._sends if not r.Test()]
        self._sends.append(self.comm.isend(message, dest=worker, tag=tag))

    def receive(self) -> Optional[tuple[int, dict[str, Any]]]:
        matched = self.comm.improbe(source=self._any, tag=REPORTS, status=self._status)
        if matched is None:
            return None
        return self._status.Get_source(), matched.recv()

    def flush(self, timeout: float) -> None:
        _complete(self._sends, timeout)


def _nothing(_cur: Any) -> None:
    """A transaction that only makes sure the connection is open."""


def session_from_launcher(stop: threading.Event, timeout: float, fd: int = 0) -> int:
    """Rank 0 of an ensemble started before the session: the session id the launcher writes on
    the MPI launcher's stdin (:func:`hand_over`); 0 on end-of-file, a stop, or nothing within
    ``timeout`` seconds (the launcher gives up on the database sooner). ``fd``: stdin."""
    data = b""
    end = time.monotonic() + timeout
    while b"\n" not in data and not stop.is_set() and time.monotonic() < end:
        if not select.select([fd], [], [], 0.2)[0]:
            continue
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    text = data.split(b"\n")[0].strip()
    return int(text) if text.isdigit() else 0


def _session_from_master(comm: Any, stop: threading.Event) -> int:
    """A worker of an ensemble started before the session: the id rank 0 sends (0: exit)."""
    while not stop.is_set():
        matched = comm.improbe(source=0, tag=SESSION)
        if matched is not None:
            return int(matched.recv())
        time.sleep(0.002)
    return 0


def _complete(requests: list[Any], timeout: float) -> None:
    """Wait (without spinning hard) until ``requests`` complete or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while requests and time.monotonic() < end:
        requests[:] = [r for r in requests if not r.Test()]
        if requests:
            time.sleep(0.002)


def _logger(config: SerialConfig, name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    handler: logging.Handler = (logging.FileHandler(config.log_path) if config.log_path
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    log.addHandler(handler)
    return log


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _on_signals(notify: Callable[[str], None]) -> None:
    def handler(signum: int, _frame: Any) -> None:
        notify(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def run_master(comm: Any, config: SerialConfig) -> int:
    """Rank 0: rebuild the launcher's :class:`Context` (own connection, own signal handlers)
    and run the :class:`Master`."""
    from balsam.errors import DatabaseUnavailable
    from balsam.launcher.context import Context, Tunables
    from balsam.launcher.ensemble_watch import start_message
    from balsam.launcher.job_source import JobSource
    from balsam.launcher.metered import MeteredDatabase
    from balsam.launcher.serial_master import Master
    from balsam.launcher.status_writers import close_status, open_status, writer_count

    log = _logger(config, "balsam.serial.master")
    tunables = Tunables.from_settings(config.settings["launcher"])
    stop = threading.Event()
    db = MeteredDatabase(config.db_path, "balsam-serial-master", stop=stop,
                  reconnect_max_seconds=tunables.reconnect_max_seconds, log=log.warning)
    session_id = config.session_id
    link = MasterLink(comm)
    if not session_id:  # started before the session: connect meanwhile, then read its id
        _on_signals(lambda _name: stop.set())
        with contextlib.suppress(DatabaseUnavailable):  # the claim retries as usual
            db.run_before(time.monotonic() + tunables.reconnect_max_seconds, _nothing)
        session_id = session_from_launcher(
            stop, tunables.reconnect_max_seconds + SESSION_WAIT_SLACK_SECONDS)
        for worker in link.workers:
            link.send_tagged(worker, session_id, SESSION)
        if not session_id:
            link.flush(5.0)
            log.info("serial master exits: the launcher opened no session")
            db.close()
            return EXIT_NO_SESSION
    left = None if config.deadline is None else config.deadline - time.time()
    ctx = Context(db_path=config.db_path, settings=config.settings, tunables=tunables,
                  alloc=config.allocation(), db=db, session_id=session_id,
                  job_mode="serial", wf_filter=config.wf_filter, persistent=config.persistent,
                  processing=config.processing, gpus_per_node=config.gpus_per_node, stop=stop,
                  log=log, base_env={}, flavour=str(config.settings.get("mpi", "")),
                  mpi_executable=None,
                  stop_at=None if left is None else time.monotonic() + left,
                  stop_grace=config.stop_grace, tags=dict(config.tags))
    _on_signals(lambda name: ctx.request_stop(f"the launcher received {name}"))
    source = JobSource(db, session_id, ctx.alloc, config.db_path, "serial",
                       config.wf_filter, base_env={}, tags=config.tags)
    status = open_status(db, session_id, flush_seconds=tunables.status_flush_seconds,
                         writers=writer_count(tunables.status_writers, ctx.alloc.num_nodes),
                         start_message=start_message(session_id), processing=config.processing)
    log.info(f"serial master on host {socket.gethostname()}: session {session_id}, "
             f"{comm.Get_size() - 1} worker(s)")
    try:
        return Master(ctx, source, status, link).run()
    except BaseException:
        log.exception("the serial master failed")
        raise
    finally:
        close_status(status)
        log.info(f"serial master exits: {db.statements} statements in {db.transactions} "
                 f"transactions, {_cpu_seconds():.2f} s CPU ({db.summary()})")
        db.close()


def run_worker(comm: Any, config: SerialConfig) -> int:
    """Ranks 1..N: serve node ``rank - 1`` until the master says exit. The rank's watchdog
    reports to :func:`balsam.launcher.ensemble_watch.report_path`."""
    from balsam.launcher.context import Tunables
    from balsam.launcher.ensemble_watch import report_path
    from balsam.launcher.nodeslots import NodeSlots
    from balsam.launcher.serial_worker import Worker, node_cpus
    from balsam.launcher.watchdog import Watchdog

    stop = threading.Event()
    _on_signals(lambda _name: stop.set())
    t = Tunables.from_settings(config.settings["launcher"])
    link = WorkerLink(comm)
    session_id = config.session_id or _session_from_master(comm, stop)
    if not session_id:  # the launcher opened no session (or a stop came first)
        return 0
    watchdog = Watchdog(t.kill_grace_seconds,
                        report=report_path(config.db_path, session_id, comm.Get_rank(),
                                           config.generation))
    worker = Worker(link, NodeSlots(node_cpus(config.cores_per_node), config.gpus_per_node),
                    os.environ, kill_grace=t.kill_grace_seconds,
                    shutdown_grace=t.shutdown_grace_seconds, tail_lines=t.output_tail_lines,
                    signalled=stop, watchdog=watchdog)
    try:
        worker.run()
        link.flush(5.0)
        if worker.recorded:
            watchdog.all_recorded()
    finally:
        watchdog.close()
    _logger(config, "balsam.serial.worker").info(
        f"serial worker {comm.Get_rank()} (node {config.hosts[comm.Get_rank() - 1]}, host "
        f"{socket.gethostname()}) exits: {worker.started} task(s) started, "
        f"{_cpu_seconds():.2f} s CPU")
    return 0


def main(argv: Sequence[str]) -> int:
    """Entry point of every rank: ``python -m balsam.launcher.serial_mode CONFIG_JSON``."""
    import mpi4py

    mpi4py.rc.thread_level = "single"
    from mpi4py import MPI

    config = SerialConfig.from_json(argv[0])
    comm = MPI.COMM_WORLD
    if comm.Get_rank() == 0:
        return run_master(comm, config)
    return run_worker(comm, config)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
