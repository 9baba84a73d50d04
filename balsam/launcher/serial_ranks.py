"""Serial job mode inside the MPI job: the entry point of every rank of the ensemble.

:mod:`balsam.launcher.serial_mode` (the launcher side) starts ``1 + nodes`` ranks of
``python -m balsam.launcher.serial_ranks CONFIG``; :func:`main` dispatches by rank: rank 0 runs
the :class:`balsam.launcher.serial_master.Master` (the only rank that touches the database),
ranks 1..N run a :class:`balsam.launcher.serial_worker.Worker` each (rank i serves node i-1).
Messages are pickled dicts sent with ``isend`` and received with matched probes (``improbe``):
no rank ever blocks in MPI, so none spins at 100% CPU (:mod:`balsam.launcher.serial_links`).

mpi4py is imported only inside :func:`main` (importing this module does no MPI work). Rank 0,
when the program that started the ensemble said so before MPI starts (``PMI_RANK`` 0 under
Hydra, ``SLURM_PROCID`` 0 under ``srun``..., only from this launch:
:mod:`balsam.platform.early_rank`), connects to the database and reads the session id
in a thread (:class:`balsam.launcher.rank_boot.MasterBoot`) while the main thread loads and
initialises MPI (~0.1-0.2 s, holding the GIL: only waits overlap, the connection's round trips
and authentication, the launcher opening its session), instead of after. With the session id
come the shares of node 1 that the launcher's own first tasks hold
(:mod:`balsam.launcher.warm_start`); the boot thread then reads their ends (``-JOBID`` lines)
for the master until end of file. A rank whose role returned ends with :func:`exit_rank`.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from balsam.launcher.ensemble_shm import mapped_segments
from balsam.launcher.rank_boot import (
    MasterBoot,
    boots_during_init,
    on_signals,
    rank_before_init,
    rank_logger,
    worker_watchdog,
)
from balsam.launcher.rank_usage import usage_summary
from balsam.launcher.serial_links import SESSION, MasterLink, WorkerLink, session_from_master
from balsam.launcher.serial_mode import EXIT_RANK_LOST, SerialConfig

if TYPE_CHECKING:
    from balsam.launcher.watchdog import Watchdog

EXIT_NO_SESSION = 7
"""Exit status of rank 0 of an early ensemble that got no session id (a failed launch)."""
EXIT_WRONG_WORLD = 10
"""Exit status of a rank whose MPI world is not the ensemble (:func:`_not_one_job`)."""


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_master(comm: Any, config: SerialConfig, boot: Optional[MasterBoot] = None) -> int:
    """Rank 0: rebuild the launcher's :class:`Context` (own connection, own signal handlers)
    and run the :class:`Master`. ``boot``: its set-up, started before MPI was (or None)."""
    from balsam.launcher.context import Context
    from balsam.launcher.ensemble_watch import start_message
    from balsam.launcher.job_source import JobSource
    from balsam.launcher.rank_heartbeat import mpi_silence
    from balsam.launcher.serial_master import Master
    from balsam.launcher.status_writers import close_status, open_status, writer_count

    early = boot is not None
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
    on_signals(lambda name: ctx.request_stop(f"the launcher received {name}"))
    link.launcher_ended = boot.launcher_ended
    source = JobSource(db, session_id, ctx.alloc, config.db_path, "serial",
                       config.wf_filter, base_env={}, tags=config.tags)
    status = open_status(db, session_id, flush_seconds=tunables.status_flush_seconds,
                         writers=writer_count(tunables.status_writers, ctx.alloc.num_nodes),
                         start_message=start_message(session_id), processing=config.processing)
    log.info(f"serial master on host {socket.gethostname()}: session {session_id}, "
             f"{comm.Get_size() - 1} worker(s); rank 0 "
             + (f"known before MPI_Init ({config.rank_evidence['rank']})" if early else
                "booted after MPI_Init"))
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


def run_worker(comm: Any, config: SerialConfig, watchdog: Optional[Watchdog] = None) -> int:
    """Ranks 1..N: serve node ``rank - 1`` until the master says exit. ``watchdog``: the
    rank's (:func:`balsam.launcher.rank_boot.worker_watchdog`), started before MPI and told
    the segments; None: one is started now."""
    stop = threading.Event()  # before the imports below: a SIGTERM meanwhile is a stop, too
    on_signals(lambda _name: stop.set())
    from balsam.core.tunables import Tunables
    from balsam.launcher.nodeslots import NodeSlots, node_cpus
    from balsam.launcher.rank_heartbeat import mpi_pulse
    from balsam.launcher.serial_worker import Worker

    t = Tunables.from_settings(config.settings["launcher"])
    link = WorkerLink(comm)
    # Before the wait for the session: MPI's /dev/shm file is removed if this rank dies in it
    watchdog = watchdog or worker_watchdog(config, comm.Get_rank(),
                                           mapped_segments([os.getpid()]))
    session_id = config.session_id or session_from_master(comm, stop)
    if not session_id:  # the launcher opened no session (or a stop came first)
        watchdog.close()
        return 0
    log = functools.cache(lambda: rank_logger(config, "balsam.serial.worker"))  # (one handler)
    watchdog.out.log = lambda message: log().warning(f"serial worker {comm.Get_rank()}: {message}")
    worker = Worker(link, NodeSlots(node_cpus(config.cores_per_node), config.gpus_per_node),
                    {k: v for k, v in os.environ.items() if k not in config.mpi_env},
                    kill_grace=t.kill_grace_seconds,
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
    log().info(
        f"serial worker {comm.Get_rank()} (node {config.hosts[comm.Get_rank() - 1]}, host "
        f"{socket.gethostname()}) exits: {worker.started} task(s) started, "
        f"{_cpu_seconds():.2f} s CPU, {worker.prepared} task(s) started in directories made "
        f"ahead; loop: {', '.join(f'{n} {k}' for k, n in worker.loops.items())}; "
        f"{usage_summary(worker.threads)}")
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
    rank = rank_before_init(os.environ, config)
    boot = MasterBoot(config).start() if rank == 0 and boots_during_init(config) else None
    # A worker's watchdog before MPI_Init makes its /dev/shm file: a kill from then on leaves none
    watchdog = worker_watchdog(config, rank) if rank else None
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_size() != len(config.hosts) + 1:  # (each rank would be rank 0: a master each)
        status = _not_one_job(config, comm.Get_size(), boot, watchdog)
        exit_rank(status)
        return status
    if watchdog is not None and rank:
        watchdog.segments(mapped_segments([os.getpid()]))
        if comm.Get_rank() != rank:  # the launcher's variable named another rank than MPI
            watchdog.close()
            watchdog = None
            _wrong_guess(config, rank, comm.Get_rank())
    if comm.Get_rank() == 0:
        status = run_master(comm, config, boot)
        exit_rank(status)  # (returns only while a thread of the master is alive)
        return status
    if boot is not None:  # the launcher's variable said 0 but MPI did not
        _drop_boot(boot)
        _wrong_guess(config, 0, comm.Get_rank())
    status = run_worker(comm, config, watchdog)
    exit_rank(status)
    return status


def _drop_boot(boot: MasterBoot) -> None:
    """Stop rank 0's early boot of a rank that is not rank 0 (its connection closed)."""
    boot.stop.set()
    boot.join()
    boot.db.close()


def _not_one_job(config: SerialConfig, size: int, boot: Optional[MasterBoot],
                 watchdog: Optional[Watchdog]) -> int:
    """A rank whose MPI world has ``size`` ranks, not the ensemble's: the ranks did not start
    as one MPI job (each ``MPI_Init`` made a world of one when mpi4py's MPI does not speak the
    process manager of the program that started them). MPI says rank 0 to each: it takes no
    role (a master each: as many database connections), stops what it began before
    ``MPI_Init``, says why; returns :data:`EXIT_WRONG_WORLD`."""
    if watchdog is not None:
        watchdog.close()
    if boot is not None:
        _drop_boot(boot)
    rank_logger(config, "balsam.serial.rank").error(
        f"this rank's MPI world has {size} rank(s), not one MPI job of {len(config.hosts) + 1} "
        "ranks: mpi4py's MPI library does not serve the program that started the ranks "
        f"({config.rank_evidence.get('rank') or 'no rank variable'}); the rank exits")
    return EXIT_WRONG_WORLD


def _wrong_guess(config: SerialConfig, guess: int, rank: int) -> None:
    """Log that the rank variable named ``guess`` but MPI says ``rank`` (the rank took the role
    MPI gives; not expected: only the starting program sets the variable for this launch)."""
    rank_logger(config, "balsam.serial.rank").warning(
        f"rank {rank}: {config.rank_evidence.get('rank')} said rank {guess} before MPI_Init; "
        "MPI's rank decides")


def exit_rank(status: int) -> None:
    """End this rank with ``status`` once its role returned: its ``atexit`` handlers run (a
    user's, a function task's module's: a normal exit would run them; before ``MPI_Finalize``,
    as that one may still use MPI), the buffers of Python file objects left open flushed
    (:func:`flush_open_files`), logs flushed, MPI finalized, then
    the C library's ``exit``, without the interpreter's teardown (freeing every module the
    rank imported: 40-90 ms of every ensemble's end under load; the launcher waits for it). Not
    ``os._exit``: MPICH's exit handlers must run, or Hydra kills the ranks still exiting
    (status 9) and reports that (measured, benchmarks/README.md, session 16). Returns, leaving
    the exit to the interpreter, while a non-daemon thread is alive."""
    import atexit
    import ctypes

    from mpi4py import MPI

    here = threading.current_thread()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not here):
        return
    atexit._run_exitfuncs()  # (prints a handler's exception and goes on, as at a normal exit)
    logging.shutdown()  # (first: it closes the log files, which flush_open_files then skips)
    flush_open_files()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to flush
            stream.flush()
    if MPI.Is_initialized() and not MPI.Is_finalized():
        with contextlib.suppress(MPI.Exception):  # (e.g. an unmatched message) exit anyway
            MPI.Finalize()
    ctypes.PyDLL(None).exit(status)  # (holding the GIL: no Python thread runs meanwhile)


def flush_open_files() -> int:
    """Flush every open, writable file object of this process (``open()``'s text and binary
    writers), text wrappers before their buffers; returns how many. The teardown that
    :func:`exit_rank` skips would close them (``IOBase`` finalizers): without this, what a
    user's module wrote to a file it never closed stayed in its buffer. They are found by one
    walk of the collector's objects (~19,000 in a rank: 1-3 ms quiet, 7-9 ms at load 8, against
    the teardown's 60-80 ms), done only when the process holds a descriptor of a file outside
    ``/dev`` and ``/proc`` (:func:`_files_open`, ~0.2 ms; a rank holds none once its logs are
    closed). Only writers on regular files are flushed: never a writer left open on a pipe,
    socket or device (a reader that never reads would block the flush, and the rank's exit,
    for good), nor other finalizers (a ``GzipFile``'s trailer, a database's commit). Errors (a
    closed or broken descriptor) are ignored, as the finalizers ignore them.
    benchmarks/bench_rank_exit.py measures it."""
    import gc
    import io
    import stat

    if not _files_open():
        return 0
    texts: list[Any] = []
    buffers: list[Any] = []
    for obj in gc.get_objects():
        kind = type(obj)
        if kind is io.TextIOWrapper:
            texts.append(obj)
        elif kind is io.BufferedWriter or kind is io.BufferedRandom:
            buffers.append(obj)
    flushed = 0
    for stream in texts + buffers:
        with contextlib.suppress(Exception):
            if (not stream.closed and stream.writable()
                    and stat.S_ISREG(os.fstat(stream.fileno()).st_mode)):
                stream.flush()
                flushed += 1
    return flushed


def _files_open() -> bool:
    """Whether this process holds a descriptor of a file (not a pipe, socket, device,
    ``/dev/shm`` segment or ``/proc`` entry); True when it cannot tell."""
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return True
    for fd in descriptors:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # (the listing's own descriptor, closed meanwhile)
            continue
        if target.startswith("/") and not target.startswith(("/dev/", "/proc/")):
            return True
    return False


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
