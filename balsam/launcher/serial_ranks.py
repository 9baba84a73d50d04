"""Serial job mode inside the MPI job: the entry point of every rank of the ensemble.

:mod:`balsam.launcher.serial_mode` (the launcher side) starts ``1 + nodes`` ranks of
``python -m balsam.launcher.serial_ranks CONFIG``; :func:`main` dispatches by rank: rank 0 runs
the :class:`balsam.launcher.serial_master.Master` (the only rank that touches the database),
ranks 1..N run a :class:`balsam.launcher.serial_worker.Worker` each (rank i serves node i-1).
Messages are pickled dicts sent with ``isend`` and received with matched probes (``improbe``):
no rank ever blocks in MPI, so none spins at 100% CPU.

mpi4py is imported only inside :func:`main` (importing this module does no MPI work). Rank 0
under Hydra (``PMI_RANK`` 0 before MPI starts) connects to the database and reads the session id
in a thread (:class:`MasterBoot`) while the main thread loads and initialises MPI (~0.1-0.2 s,
holding the GIL: only waits overlap, the connection's round trips and authentication, the
launcher opening its session), instead of after. With the session id come the shares of node 1
that the launcher's own first tasks hold (:mod:`balsam.launcher.warm_start`); the boot thread
then reads their ends (``-JOBID`` lines) for the master until end of file.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from balsam.db.dbapi import Cursor
from balsam.launcher.serial_mode import EXIT_RANK_LOST, SerialConfig

ORDERS, REPORTS, SESSION = 11, 12, 13
"""MPI tags: master -> worker orders, worker -> master reports, master -> worker the session
id of an ensemble started before the session opened (0: exit at once)."""
LOG_FORMAT = "%(asctime)s|%(process)d|%(levelname)s|%(message)s"
EXIT_NO_SESSION = 7
"""Exit status of rank 0 of an early ensemble that got no session id (a failed launch)."""
SESSION_WAIT_SLACK_SECONDS = 30.0
"""Rank 0 of an early ensemble waits for the session id this long past the launcher's
``reconnect_max_seconds`` (its limit for opening the session), then exits."""


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
        self.launcher_ended: deque[str] = deque()
        """Job ids of the launcher's own tasks on worker 1's node that ended (filled by
        :func:`ended_from_launcher`): given to the master as worker 1's ``unheld`` report."""

    def send(self, worker: int, message: dict[str, Any]) -> None:
        self.send_tagged(worker, message, ORDERS)

    def send_tagged(self, worker: int, message: Any, tag: int) -> None:
        if len(self._sends) > 64:
            self._sends = [r for r in self._sends if not r.Test()]
        self._sends.append(self.comm.isend(message, dest=worker, tag=tag))

    def receive(self) -> Optional[tuple[int, dict[str, Any]]]:
        if self.launcher_ended:
            ended = [self.launcher_ended.popleft() for _ in range(len(self.launcher_ended))]
            report: dict[str, Any] = {"unheld": [j for j in ended if j]}
            if "" in ended:  # its stdin closed
                report["launcher_gone"] = True
            return self.workers[0], report
        matched = self.comm.improbe(source=self._any, tag=REPORTS, status=self._status)
        if matched is None:
            return None
        return self._status.Get_source(), matched.recv()

    def flush(self, timeout: float) -> None:
        _complete(self._sends, timeout)


def _nothing(_cur: Cursor) -> None:
    """A transaction that only makes sure the connection is open."""


def session_from_launcher(stop: threading.Event, timeout: float, fd: int = 0) -> int:
    """Rank 0 of an ensemble started before the session: the session id the launcher writes on
    the MPI launcher's stdin (:func:`balsam.launcher.ensemble_stdin.hand_over`); 0 on end-of-file,
    a stop, or nothing within ``timeout`` seconds (the launcher gives up on the database
    sooner). ``fd``: stdin."""
    return read_handover(stop, timeout, fd)[0]


def read_handover(stop: threading.Event, timeout: float, fd: int = 0
                  ) -> tuple[int, list[list[Any]], bytes]:
    """(the session id, the shares the launcher's own first tasks hold on node 1 -- [job id,
    packing count, cores] each, :mod:`balsam.launcher.warm_start` --, what followed the line)
    from the hand-over line ``SID [JSON]`` on ``fd``; (0, [], b"") as for
    :func:`session_from_launcher`."""
    data = b""
    end = time.monotonic() + timeout
    while b"\n" not in data and not stop.is_set() and time.monotonic() < end:
        if not select.select([fd], [], [], 0.2)[0]:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    text, _, holds = line.strip().partition(b" ")
    if not text.isdigit():
        return 0, [], b""
    return int(text), (json.loads(holds) if holds.strip() else []), rest


def ended_from_launcher(stop: threading.Event, fd: int, rest: bytes,
                        ended: deque[str]) -> None:
    """Rank 0: append the job ids of the launcher's ``-JOBID`` lines (its own tasks that
    ended and are recorded) to ``ended`` until ``stop`` or end-of-file, which appends ``""``
    (the launcher closes stdin after its last task; before: it died)."""
    data = rest
    while True:
        *lines, data = data.split(b"\n")
        ended.extend(line[1:].decode() for line in lines if line[:1] == b"-")
        if stop.is_set():
            return
        if not select.select([fd], [], [], 0.2)[0]:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            ended.append("")
            return
        data += chunk


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


class MasterBoot:
    """Rank 0's set-up that needs no MPI: its logger, tunables and database connection, and the
    session id of an ensemble started before the session (:func:`session_from_launcher`).
    :meth:`start` runs :meth:`run` in a thread (while MPI initialises), :meth:`join` waits."""

    def __init__(self, config: SerialConfig) -> None:
        from balsam.core.tunables import Tunables
        from balsam.launcher.metered import MeteredDatabase

        self.config = config
        self.log = _logger(config, "balsam.serial.master")
        self.tunables = Tunables.from_settings(config.settings["launcher"])
        self.stop = threading.Event()
        self.db = MeteredDatabase(config.db_path, "balsam-serial-master", stop=self.stop,
                                  reconnect_max_seconds=self.tunables.reconnect_max_seconds,
                                  log=self.log.warning)
        self.session_id = config.session_id
        self.holds: list[list[Any]] = []
        """What the launcher's own first tasks hold on node 1 (its warm start)."""
        self.launcher_ended: deque[str] = deque()
        """Those of them that ended (:func:`ended_from_launcher`, after the hand-over)."""
        self.fd = 0  # where the launcher writes the session id (stdin)
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        if not self.session_id:  # a signal before the id came: give up waiting for it
            _on_signals(lambda _name: self.stop.set())

    def run(self) -> None:
        """Connect (a failure is left to the claim, which retries as usual); read the session
        id if the launcher hands it over."""
        from balsam.errors import DatabaseUnavailable

        try:
            with contextlib.suppress(DatabaseUnavailable):
                self.db.run_before(time.monotonic() + self.tunables.reconnect_max_seconds,
                                   _nothing)
            if self.session_id:
                return
            self.session_id, self.holds, rest = read_handover(
                self.stop, self.tunables.reconnect_max_seconds + SESSION_WAIT_SLACK_SECONDS,
                self.fd)
        finally:
            self._ready.set()
        if self.holds:  # the launcher says when they end; it closes stdin after the last
            ended_from_launcher(self.stop, self.fd, rest, self.launcher_ended)

    def start(self) -> MasterBoot:
        self._thread = threading.Thread(target=self.run, name="master-boot", daemon=True)
        self._thread.start()
        return self

    def join(self) -> None:
        """Wait until the set-up is done (run it here if it was not started); the thread
        goes on reading the launcher's ``-JOBID`` lines if its tasks hold a share of node 1."""
        if self._thread is None:
            self.start()
        self._ready.wait()


def rank_before_init(environ: Mapping[str, str]) -> Optional[int]:
    """This process's rank as the MPI launcher announced it before MPI starts (Hydra's
    ``PMI_RANK``), or None if it did not."""
    value = environ.get("PMI_RANK", "")
    return int(value) if value.isdigit() else None


def run_master(comm: Any, config: SerialConfig, boot: Optional[MasterBoot] = None) -> int:
    """Rank 0: rebuild the launcher's :class:`Context` (own connection, own signal handlers)
    and run the :class:`Master`. ``boot``: its set-up, started before MPI was (or None)."""
    from balsam.launcher.context import Context
    from balsam.launcher.ensemble_watch import start_message
    from balsam.launcher.job_source import JobSource
    from balsam.launcher.rank_heartbeat import mpi_silence
    from balsam.launcher.serial_master import Master
    from balsam.launcher.status_writers import close_status, open_status, writer_count

    boot = boot or MasterBoot(config)
    boot.join()
    log, tunables, stop, db = boot.log, boot.tunables, boot.stop, boot.db
    session_id = boot.session_id
    link = MasterLink(comm)
    if not config.session_id:  # started before the session: tell the workers its id
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
    link.launcher_ended = boot.launcher_ended
    source = JobSource(db, session_id, ctx.alloc, config.db_path, "serial",
                       config.wf_filter, base_env={}, tags=config.tags)
    status = open_status(db, session_id, flush_seconds=tunables.status_flush_seconds,
                         writers=writer_count(tunables.status_writers, ctx.alloc.num_nodes),
                         start_message=start_message(session_id), processing=config.processing)
    log.info(f"serial master on host {socket.gethostname()}: session {session_id}, "
             f"{comm.Get_size() - 1} worker(s)")
    try:
        master = Master(ctx, source, status, link)
        master.hold(link.workers[0], boot.holds)
        master.silence = mpi_silence(comm, tunables, EXIT_RANK_LOST)  # workers' heartbeats
        return master.run()
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
    from balsam.core.tunables import Tunables
    from balsam.launcher.ensemble_shm import mapped_segments
    from balsam.launcher.ensemble_watch import report_path
    from balsam.launcher.nodeslots import NodeSlots, node_cpus
    from balsam.launcher.rank_heartbeat import mpi_pulse
    from balsam.launcher.serial_worker import Worker
    from balsam.launcher.watchdog import Watchdog

    stop = threading.Event()
    _on_signals(lambda _name: stop.set())
    t = Tunables.from_settings(config.settings["launcher"])
    link = WorkerLink(comm)
    # Before the wait for the session: MPI's /dev/shm file is removed if this rank dies in it
    watchdog = Watchdog(t.kill_grace_seconds, segments=mapped_segments([os.getpid()]),
                        report=report_path(config.watch_dir, comm.Get_rank(), config.generation))
    session_id = config.session_id or _session_from_master(comm, stop)
    if not session_id:  # the launcher opened no session (or a stop came first)
        watchdog.close()
        return 0
    worker = Worker(link, NodeSlots(node_cpus(config.cores_per_node), config.gpus_per_node),
                    os.environ, kill_grace=t.kill_grace_seconds,
                    shutdown_grace=t.shutdown_grace_seconds, tail_lines=t.output_tail_lines,
                    signalled=stop, watchdog=watchdog, pulse=mpi_pulse(comm, t),
                    pin_single_core=t.pin_single_core_tasks)
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
        f"{_cpu_seconds():.2f} s CPU, {worker.prepared} task(s) started in directories made "
        "ahead")
    return 0


def main(argv: Sequence[str]) -> int:
    """Entry point of every rank: ``python -m balsam.launcher.serial_ranks CONFIG_JSON``."""
    import ctypes  # noqa: F401 - before the boot thread: see below

    import mpi4py

    mpi4py.rc.thread_level = "single"  # rank 0's boot thread makes no MPI call
    # mpi4py's finder for ``mpi4py.MPI`` imports ctypes (and struct) while holding the global
    # import lock; a boot thread importing struct meanwhile (psycopg2 -> ssl -> base64) held
    # struct's module lock and waited for the global one: both threads hung for good (seen
    # under load). ctypes imported here first, the finder imports nothing.
    config = SerialConfig.from_json(argv[0])
    boot = MasterBoot(config).start() if rank_before_init(os.environ) == 0 else None
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_rank() == 0:
        return run_master(comm, config, boot)
    if boot is not None:  # PMI_RANK said 0 but MPI did not: not ours
        boot.stop.set()
        boot.join()
        boot.db.close()
    return run_worker(comm, config)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
