"""A serial worker loop's side of its spawning threads (:mod:`balsam.launcher.spawn_threads`, or
the native kernel's :mod:`balsam.launcher.spawn_native`): taking over the tasks they started,
putting back the chained starts they handed back, and undoing the watchdog's ``?JOBID`` line
of each start they dropped at the close. Moved out of :mod:`balsam.launcher.spawn_threads`
(its size) in session 21.
"""
from __future__ import annotations

import signal
from collections import deque
from collections.abc import Sequence
from typing import Any, Optional

from balsam.launcher import spawn_threads
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_warm import Running
from balsam.launcher.spawn_threads import SpawnThreads, Started
from balsam.launcher.watchdog import Watchdog


class ThreadedStarts:
    """The worker loop's side (:class:`balsam.launcher.serial_worker.Worker`, which sets these
    attributes up): taking over what its :class:`SpawnThreads` started."""

    _spawns: Optional[SpawnThreads]
    _aborting: bool
    """An ``abort`` came: what comes back started is SIGKILLed at once."""
    # The loop's, touched here.
    running: dict[str, Running]
    _by_fd: dict[int, str]
    node: NodeSlots
    watchdog: Optional[Watchdog]
    started: int
    _chained_work: dict[str, Any]
    """Chained starts not yet taken over (``serial_starts.Starts``)."""
    _unwatched: set[str]
    """Running tasks without a pidfd: their end is polled (``serial_starts.Starts``)."""
    queue: deque[Any]
    _chain_seq: dict[str, int]
    """The order in which chained starts were asked for (``serial_starts.Starts``)."""
    _doomed: set[str]
    """Chained starts in flight the kernel hands back (``serial_starts.Starts``)."""
    _requeued: frozenset[str] = frozenset()
    """Handed-back starts put at the queue's head, still waiting there."""

    def _note_all(self, key: str, values: Sequence[Any]) -> None:
        """Add to this iteration's report (provided by ``Worker``)."""
        raise NotImplementedError

    def _release(self, job_id: str) -> None:
        """Free ``job_id``'s place (provided by ``serial_starts.Starts``)."""
        raise NotImplementedError

    def _returned(self, s: Started, work: Any) -> Any:
        """A chained start handed back unstarted: its Work to queue again, or None (provided
        by ``serial_starts.Starts``)."""
        raise NotImplementedError

    def _close_spawns(self) -> None:
        """Stop the spawning threads. The starts they dropped were never made: their
        ``?JOBID`` lines (the loop's, or the kernel's) are undone (``^JOBID``), or the
        watchdog's report, without ``=``, would count runs that never were."""
        if self._spawns is None:
            return
        self._spawns.close()
        dropped, self._spawns.dropped = self._spawns.dropped, []  # (told once)
        if dropped and self.watchdog is not None:
            self.watchdog.out.deferred.extend(f"^{j}\n".encode() for j in dropped)
            self.watchdog.flush()

    def _in_flight(self) -> int:
        return 0 if self._spawns is None else self._spawns.in_flight

    def _collect(self, settle: bool = False) -> bool:
        """Take over the tasks the threads started, reported ``started`` now (and ``failed``
        if they could not start); with ``settle``, all those in flight (an ``exit`` or
        ``abort``). True if any came back."""
        if not self._in_flight() or self._spawns is None:
            return False
        done = self._spawns.settle(spawn_threads.SETTLE_SECONDS) if settle else self._spawns.collect()
        if not done:
            return False
        added: list[tuple[int, str]] = []
        back: list[Any] = []  # handed back unstarted: queued again at the head, in order
        self._note_all("started", [s.job_id for s in done if not s.returned])
        for s in done:
            if self._doomed:
                self._doomed.discard(s.job_id)
            work = self._chained_work.pop(s.job_id, None) if self._chained_work else None
            if work is not None and not s.returned:
                self._chain_seq.pop(s.job_id, None)
            if s.returned:
                again = self._returned(s, work)
                if again is not None:
                    back.append(again)
                continue
            if s.task is None:
                self._release(s.job_id)  # its place: to a start chained behind it, if any
                self._note_all("failed", [(s.job_id, -1, f"cannot start: {s.error}")])
                continue
            added.append((s.task.pgid, s.job_id))
            self.started += 1
            self.running[s.job_id] = r = Running(s.task, s.fd)
            if s.fd >= 0:
                self._by_fd[s.fd] = s.job_id
            else:  # pidfd_open failed: its end is polled
                self._unwatched.add(s.job_id)
            if self._aborting:
                s.task.signal_group(signal.SIGKILL)
            elif s.why:  # killed or stopped while it was starting
                r.why = s.why
                s.task.terminate(s.grace)
        if added and self.watchdog is not None:  # with this iteration's next write or flush
            self.watchdog.add_all(added, defer=True)
        if back:
            self._requeue(back)
        return bool(done)

    def _requeue(self, back: list[Any]) -> None:
        """Put handed-back Work at the queue's head, with what came back earlier and still
        waits there, in the order the starts were chained (the queue's): a chain comes back
        over several collects, and its starts, waiting in several spawning threads, in any
        order (a test saw f1, f3, f2)."""
        queue, head = self.queue, list(back)
        while queue and queue[0].job_id in self._requeued:
            head.append(queue.popleft())
        head.sort(key=lambda w: self._chain_seq.get(w.job_id, -1))
        queue.extendleft(reversed(head))
        self._requeued = frozenset(w.job_id for w in head)
        for job_id in [j for j in self._chain_seq  # (started from the queue since: forgotten)
                       if j not in self._requeued and j not in self._chained_work]:
            del self._chain_seq[job_id]
