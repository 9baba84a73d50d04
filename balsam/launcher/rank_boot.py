"""Rank 0's start-up that needs no MPI, and what every rank sets up before its role.

:class:`MasterBoot` connects rank 0 to the database and reads the session id (and the shares of
node 1 that the launcher's own first tasks hold, :mod:`balsam.launcher.warm_start`) that the
launcher writes on the MPI launcher's stdin, in a thread, while the main thread loads and
initialises MPI (:mod:`balsam.launcher.serial_ranks`); then it reads the ends of those tasks
(``-JOBID`` lines) for the master until end of file. Also the ranks' logger and signal handlers.
Moved out of :mod:`balsam.launcher.serial_ranks` (its size).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional

from balsam.core.tunables import Tunables
from balsam.db.dbapi import Cursor
from balsam.launcher.serial_mode import SerialConfig
from balsam.platform.early_rank import rank_announced

if TYPE_CHECKING:
    from balsam.launcher.watchdog import Watchdog

LOG_FORMAT = "%(asctime)s|%(process)d|%(levelname)s|%(message)s"
SESSION_WAIT_SLACK_SECONDS = 30.0
"""Rank 0 of an early ensemble waits for the session id this long past the launcher's
``reconnect_max_seconds`` (its limit for opening the session), then exits."""

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


def rank_logger(config: SerialConfig, name: str) -> logging.Logger:
    """The logger ``name`` of a rank: INFO and up, appended to the launcher's log file (to
    stderr without one)."""
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    handler: logging.Handler = (logging.FileHandler(config.log_path) if config.log_path
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    log.addHandler(handler)
    return log


def on_signals(notify: Callable[[str], None]) -> None:
    """SIGTERM and SIGINT call ``notify(signal name)``."""
    def handler(signum: int, _frame: Any) -> None:
        notify(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


class MasterBoot:
    """Rank 0's set-up that needs no MPI: its logger, tunables and database connection, and the
    session id of an ensemble started before the session (:func:`session_from_launcher`).
    :meth:`start` runs :meth:`run` in a thread (while MPI initialises), :meth:`join` waits."""

    def __init__(self, config: SerialConfig) -> None:
        from balsam.launcher.metered import MeteredDatabase

        self.config = config
        self.log = rank_logger(config, "balsam.serial.master")
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
            on_signals(lambda _name: self.stop.set())

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


BOOT_DURING_INIT = frozenset({"PMI_RANK"})
"""The rank variables (so: the programs starting the ensemble) under which rank 0's boot thread
runs while ``MPI_Init`` does: Hydra's, whose ranks run the MPICH this is tested with (the wheel's,
here and on the real test Slurm). Under ``srun``, ``aprun``, ``jsrun``, Open MPI or PALS the
ranks may run a site's MPI, which can install memory hooks or progress threads in ``MPI_Init``
(requested with thread level "single"); a second thread doing socket I/O meanwhile is untested
there, so rank 0 boots after ``MPI_Init`` as before (a worker's watchdog, a process of its own,
still starts before)."""


def boots_during_init(config: SerialConfig) -> bool:
    """Whether rank 0, knowing its rank before ``MPI_Init``, boots in a thread meanwhile."""
    return config.rank_evidence.get("rank") in BOOT_DURING_INIT


def rank_before_init(environ: Mapping[str, str], config: SerialConfig) -> Optional[int]:
    """This process's rank as the program that started the ensemble announced it before MPI
    starts (``PMI_RANK`` under Hydra, ``SLURM_PROCID`` under ``srun``...: the one variable
    ``config.rank_evidence`` names), or None when it did not, or not provably for this launch
    (:func:`balsam.platform.early_rank.rank_announced`: then MPI tells the rank)."""
    return rank_announced(environ, config.rank_evidence, len(config.hosts) + 1)


def worker_watchdog(config: SerialConfig, rank: int,
                    segments: Optional[Mapping[str, tuple[int, int]]] = None) -> Watchdog:
    """The task watchdog of worker rank ``rank`` (:mod:`balsam.launcher.watchdog`), reporting
    to :func:`balsam.launcher.ensemble_watch.report_path`. Started before ``MPI_Init`` (then
    ``segments`` is None, the rank tells them with :meth:`Watchdog.segments` after it): if the
    rank dies first, the watchdog removes this user's MPICH segment files made since, once no
    live process maps them (:func:`balsam.launcher.ensemble_shm.unlink_orphans`)."""
    # (here, not at the top: rank 0 imports this module before its boot thread starts, and
    # ensemble_watch brings the lease code, ~5-8 ms, which rank 0 imports after MPI_Init)
    from balsam.launcher.ensemble_watch import report_path
    from balsam.launcher.watchdog import Watchdog

    grace = Tunables.from_settings(config.settings["launcher"]).kill_grace_seconds
    return Watchdog(grace, segments=segments, since=None if segments is not None else time.time(),
                    report=report_path(config.watch_dir, rank, config.generation))

