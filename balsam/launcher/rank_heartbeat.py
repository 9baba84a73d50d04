"""Serial mode: a worker rank that stops answering is lost, even while its master is alive.

The launcher replaces an ensemble whose master stops renewing the lease
(:mod:`balsam.launcher.ensemble_stuck`) and one that lost a rank (MPI takes the whole ensemble
down; :mod:`balsam.launcher.ensemble_restart`). A worker rank that is frozen (SIGSTOP), stuck in
a system call or deadlocked while its process lives was neither: its tasks ran on and ended
with nobody reporting it, and the master went on queueing work there, so its jobs stayed
RUNNING and held until the time limit.

Now every worker rank sends the master a heartbeat every ``heartbeat_seconds``
(:class:`Pulse`; on a tag of its own, :data:`HEARTBEAT_TAG`, so the reports' path is untouched:
the worker's cost is one comparison per loop iteration, the master's nothing per report). The
master drains those heartbeats every ``kill_check_seconds`` (:class:`RankWatch`); a worker unheard
for :func:`silence_limit` -- at least :data:`SILENT_BEATS` heartbeats and the stuck-master limit
(:func:`balsam.launcher.fence.stuck_after`, 50 s with the default tunables) -- is lost.
The master then writes the state changes it has (the ends reported so far) and aborts the MPI
job (``MPI_Abort``, status :data:`balsam.launcher.serial_mode.EXIT_RANK_LOST`): MPICH's Hydra
SIGKILLs every rank, the frozen one too, and from there it is the path of a lost rank -- each
rank's watchdog stops its tasks and reports, the launcher records the starts never recorded,
times out the jobs that were RUNNING, releases the other claims and starts a new ensemble in
the same session (:func:`balsam.launcher.ensemble_restart.run_serial`).

Heartbeats queue while the master itself is busy (a database reconnection, a long pass): it
drains them before it judges, so a slow master never declares a live worker lost. A gap in the
master's own checks longer than its ``stall`` (half the limit, at least three check intervals)
means the master did not run either -- the whole job was suspended (``scontrol suspend``, gang
scheduling, a paused VM) and its workers with it: that gap is not counted against any worker.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional

from balsam.core.tunables import Tunables
from balsam.launcher.fence import stuck_after

if TYPE_CHECKING:
    from balsam.launcher.context import Context

HEARTBEAT_TAG = 14
"""MPI tag of the workers' heartbeats (worker -> master; the reports are tag 12)."""
SILENT_BEATS = 3
"""A worker is lost only once at least this many heartbeats in a row did not come."""
FLUSH_SECONDS = 3.0
"""Longest the master tries to write its pending state changes before it aborts."""
BEAT_MISSES = 2
"""Heartbeats are drained until this many probes in a row find none: with MPICH ch4 a probe
that finds nothing brings in one waiting message (as the reports'
``serial_master.RECEIVE_MISSES``): stopping at the first miss took one heartbeat per drain."""


def take_beats(probe: Callable[[], Optional[int]], misses: int = BEAT_MISSES) -> list[int]:
    """The ranks of the waiting heartbeats: ``probe()`` (one heartbeat's sender, or None) is
    called until ``misses`` calls in a row find none (see :data:`BEAT_MISSES`)."""
    heard: list[int] = []
    missed = 0
    while missed < misses:
        rank = probe()
        if rank is None:
            missed += 1
        else:
            heard.append(rank)
            missed = 0
    return heard


def silence_limit(heartbeat_seconds: float, stuck_seconds: float) -> float:
    """Seconds a worker may be unheard before it is lost: ``SILENT_BEATS`` heartbeats, and no
    less than the limit after which a master is stuck (``stuck_seconds``): a worker blocked
    that long on its node (a file system that hangs) is as good as lost."""
    return max(SILENT_BEATS * heartbeat_seconds, stuck_seconds)


class Pulse:
    """A worker rank's heartbeat: ``send()`` (one small message to the master) at most every
    ``period`` seconds. The loop calls :meth:`beat` when ``now >= self.due``."""

    def __init__(self, send: Callable[[], None], period: float,
                 now: Optional[float] = None) -> None:
        self.send = send
        self.period = period
        self.due = (time.monotonic() if now is None else now) + period
        self.sent = 0
        """Heartbeats sent so far: the worker's last report (``bye``) says it as ``beats``."""

    def beat(self, now: float) -> None:
        """Send a heartbeat; the next is due one period later."""
        self.send()
        self.sent += 1
        self.due = now + self.period


class Silence:
    """The master's view of its workers' heartbeats. ``beats()`` returns the ranks of the
    heartbeats that arrived since it was last called (it drains them); :meth:`lost` names the
    workers unheard for ``limit`` seconds. ``abort()`` ends the whole ensemble (``MPI_Abort``:
    Hydra SIGKILLs every rank; MPICH's call returns meanwhile) and gives the master's exit
    status."""

    def __init__(self, workers: Iterable[int], limit: float,
                 beats: Callable[[], Iterable[int]], abort: Callable[[], int],
                 now: Optional[float] = None, stall: Optional[float] = None) -> None:
        start = time.monotonic() if now is None else now
        self.heard = {w: start for w in workers}
        self.received = {w: 0 for w in self.heard}
        self.expected: dict[int, int] = {}
        """Heartbeats each worker said it sent, in its last report (``beats``)."""
        self.limit = limit
        self.stall = limit / 2 if stall is None else stall
        self.checked = start
        self.beats = beats
        self.abort = abort

    def _drain(self, now: float) -> None:
        for worker in self.beats():
            self.heard[worker] = now
            self.received[worker] = self.received.get(worker, 0) + 1

    def settle(self, deadline: float) -> bool:
        """Receive every heartbeat the workers that said bye sent (``expected``), until
        ``deadline`` (``time.monotonic()``); False if some never came. A message left
        unreceived would hold its sender in ``MPI_Finalize`` for good (MPICH, ranks on other
        nodes: seen under Slurm), so the master takes them all before the MPI job ends."""
        while True:
            self._drain(time.monotonic())
            if all(self.received.get(w, 0) >= n for w, n in self.expected.items()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)

    def lost(self, now: float) -> Optional[str]:
        """Why the ensemble lost a worker (those unheard for ``limit`` once the heartbeats
        that arrived are drained), or None. A gap since the last call longer than ``stall``
        (the master itself did not run: the job was suspended) is not counted."""
        gap, self.checked = now - self.checked, now
        if gap > self.stall:
            self.heard = {w: t + gap for w, t in self.heard.items()}
        self._drain(now)
        silent = {w: now - t for w, t in self.heard.items() if now - t > self.limit}
        if not silent:
            return None
        names = ", ".join(f"{w} ({s:.0f} s)" for w, s in sorted(silent.items()))
        return (f"worker rank(s) {names} sent no heartbeat for longer than {self.limit:g} s "
                "(frozen, blocked or deadlocked): aborting the ensemble so that it restarts "
                "without them")


class RankWatch:
    """The master's side (a base of :class:`balsam.launcher.serial_master.Master`, which
    provides ``ctx`` and ``_flush``); ``silence`` is set by the MPI entry point
    (:func:`balsam.launcher.serial_ranks.run_master`), None in tests without MPI."""

    silence: Optional[Silence] = None
    ctx: Context

    def _flush(self, before: Optional[float] = None) -> None:
        """Write the pending state changes (provided by ``Master``)."""
        raise NotImplementedError

    def _said_bye(self, worker: int, report: Mapping[str, Any]) -> None:
        """Note how many heartbeats ``worker`` sent, from its last report."""
        if self.silence is not None:
            self.silence.expected[worker] = int(report.get("beats", 0))

    def _settle_beats(self, deadline: float) -> None:
        """Receive the heartbeats still on their way (see :meth:`Silence.settle`)."""
        if self.silence is not None and not self.silence.settle(deadline):
            self.ctx.log.warning("some worker heartbeats never arrived: the MPI job may not end")

    def _ranks_lost(self, now: float) -> bool:
        """Whether a worker is lost (see the module docstring): then the state changes the
        master has are written and the ensemble is aborted (the master then returns
        :data:`balsam.launcher.serial_mode.EXIT_RANK_LOST` unless Hydra killed it first)."""
        silence = self.silence
        why = None if silence is None else silence.lost(now)
        if silence is None or why is None:
            return False
        self.ctx.log.error(why)
        self._flush(before=time.monotonic() + FLUSH_SECONDS)
        silence.abort()
        return True


def mpi_pulse(comm: Any, tunables: Tunables) -> Pulse:
    """A worker rank's :class:`Pulse` over mpi4py: ``isend`` to rank 0 every
    ``heartbeat_seconds`` (completed requests are dropped at the next beat)."""
    requests: list[Any] = []

    def send() -> None:
        requests[:] = [r for r in requests if not r.Test()]
        requests.append(comm.isend(None, dest=0, tag=HEARTBEAT_TAG))

    return Pulse(send, tunables.heartbeat_seconds)


def mpi_silence(comm: Any, tunables: Tunables, status: int) -> Silence:
    """The master's :class:`Silence` over mpi4py: heartbeats drained with matched probes (no
    blocking call) until two in a row find none (:func:`take_beats`); ``abort`` is
    ``MPI_Abort(comm, status)``."""
    from mpi4py import MPI  # the master rank has loaded it already

    probe_status = MPI.Status()

    def probe() -> Optional[int]:
        matched = comm.improbe(source=MPI.ANY_SOURCE, tag=HEARTBEAT_TAG, status=probe_status)
        if matched is None:
            return None
        matched.recv()
        return int(probe_status.Get_source())

    def beats() -> list[int]:
        return take_beats(probe)

    def abort() -> int:
        comm.Abort(status)
        return status

    limit = silence_limit(tunables.heartbeat_seconds, stuck_after(tunables))
    stall = max(limit / 2, 3 * tunables.kill_check_seconds)
    return Silence(range(1, comm.Get_size()), limit, beats, abort, stall=stall)
