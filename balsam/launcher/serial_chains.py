"""A serial worker's chains' bookkeeping (:class:`Chains`, a part of
:class:`balsam.launcher.serial_starts.Starts`, split from it): whose place a chained start
takes when the task it follows is reaped, withdrawing chained starts not begun (a kill, stop,
exit, abort or recall), and chained starts the kernel hands back unstarted (the task they
follow runs without a pidfd, or the task watchdog could not be told of them). See
:mod:`balsam.launcher.serial_starts` for what a chain is.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Optional

from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_warm import Running
from balsam.launcher.serial_work import Work
from balsam.launcher.spawn_threads import SpawnThreads, Started
from balsam.launcher.watchdog import Watchdog


class Chains:
    """Chain bookkeeping of the worker loop (:class:`balsam.launcher.serial_worker.Worker`
    sets these attributes up; :class:`balsam.launcher.serial_starts.Starts` documents them)."""

    _spawns: Optional[SpawnThreads]
    queue: deque[Work]
    running: dict[str, Running]
    node: NodeSlots
    stopping: bool
    finished: bool
    _follower: dict[str, str]
    _leader: dict[str, str]
    _chained_work: dict[str, Work]
    _chain_seq: dict[str, int]
    _doomed: set[str]
    _unwatched: set[str]
    watchdog: Optional[Watchdog]

    def _note_all(self, key: str, values: Sequence[Any]) -> None:
        """Add to this iteration's report (provided by ``Worker``)."""
        raise NotImplementedError

    def _holder(self, job_id: str) -> Optional[str]:
        """The task whose place ``job_id`` has or will have: itself once placed, else the
        first of the tasks it follows (ended, not yet reaped) that holds one."""
        while job_id not in self.node:
            leader = self._leader.get(job_id)
            if leader is None:
                return None
            job_id = leader
        return job_id

    def _release(self, job_id: str) -> None:
        """``job_id`` was reaped: the next task of its chain still to run or running takes its
        place (those that already ended are skipped); if there is none, its place is freed. A
        task without a place of its own (the task it followed is not reaped yet) leaves the
        chain: its follower follows that task instead."""
        if self._unwatched:
            self._unwatched.discard(job_id)
        follower = self._follower.pop(job_id, None)
        leader = self._leader.pop(job_id, None)
        if job_id not in self.node:
            if leader is not None:
                if follower is None:
                    self._follower.pop(leader, None)
                else:
                    self._follower[leader], self._leader[follower] = follower, leader
            elif follower is not None:  # no place anywhere up the chain (never: defensive)
                del self._leader[follower]
            return
        while follower is not None and not self._live(follower):
            del self._leader[follower]
            follower = self._follower.pop(follower, None)
        if follower is None:
            self.node.free(job_id)
        else:
            del self._leader[follower]
            self.node.hand_over(job_id, follower)

    def _live(self, job_id: str) -> bool:
        spawns = self._spawns
        return job_id in self.running or (spawns is not None and spawns.pending(job_id))

    def _unchain(self) -> bool:
        """Nothing queued and room on the node: the last start of a chain, not begun, whose
        task fits goes back to the queue's head, to run beside the others rather than after
        them (a chain takes work greedily; room frees when a chain of another shape ends).
        True if one did."""
        if self.node.full or self.stopping or not self._chained_work:
            return False
        for job_id, work in reversed(list(self._chained_work.items())):
            if job_id not in self._follower and self.node.fits(work.packing) \
                    and self._cancel_chained(job_id, ""):
                self.queue.appendleft(work)
                return True
        return False

    def _cancel_chained(self, job_id: str, key: str) -> bool:
        """Withdraw ``job_id``'s chained start if it has not begun, reported under ``key``
        ("": not reported, it goes back to the queue); False if it is none or has begun. A
        start chained behind it now follows what it followed (the kernel passes the wait on),
        or takes its place."""
        if self._spawns is None or not self._spawns.cancel(job_id):
            return False
        del self._chained_work[job_id]
        self._chain_seq.pop(job_id, None)
        self._doomed.discard(job_id)
        self._unlink(job_id)
        if key:
            self._note_all(key, [job_id])
        return True

    def _returned(self, s: Started, work: Optional[Work]) -> Optional[Work]:
        """``s``, a chained start, came back unstarted: the task it followed runs without a
        pidfd (the kernel cannot know when it exits), or a stuck task watchdog could not be
        told of it (``_spawner.UNNOTED``). Out of its chain (that task keeps its
        place until it is reaped); its Work to queue again at the head, or None: reported
        ``killed`` or ``returned`` as a queued task would be if a kill, stop, exit or abort
        came meanwhile. The starts chained behind it are handed back too (the kernel hands
        back what waits behind a hand-back): until they are back, nothing is chained behind
        them, or ``s`` queued again would wait behind a start it was ahead of (its own
        follower: a CI run saw f3 start before f2; a loop that collected one start at a time
        chained them behind each other for good)."""
        behind = self._follower.get(s.job_id)
        while behind is not None:
            self._doomed.add(behind)
            behind = self._follower.get(behind)
        self._unlink(s.job_id)
        if s.withdrawn and work is None and self.watchdog is not None:  # the loop's "?JOBID"
            self.watchdog.out.deferred.append(f"^{s.job_id}\n".encode())  # (a chained one's
            # note is the kernel's: undone there) undone: no start of it to count
        if s.why == "kill":
            self._note_all("killed", [s.job_id])
        elif s.why or work is None or self.stopping or self.finished:
            self._note_all("returned", [s.job_id])
        else:
            return work
        return None

    def _polled(self) -> list[str]:
        """The running tasks without a pidfd (``pidfd_open`` failed): the loop polls them each
        iteration, since no descriptor in its ``epoll`` says when they end (:meth:`_release`
        forgets them)."""
        return [job_id for job_id in self._unwatched if job_id in self.running]

    def _unlink(self, job_id: str) -> None:
        """Take ``job_id``, a chained start that will not begin, out of its chain."""
        leader = self._leader.pop(job_id, None)
        follower = self._follower.pop(job_id, None)
        if leader is not None:  # the task it followed keeps its place until it is reaped
            if follower is None:
                del self._follower[leader]
            else:
                self._follower[leader], self._leader[follower] = follower, leader
        elif follower is not None:  # it held the place already: its follower takes it
            del self._leader[follower]
            self.node.hand_over(job_id, follower)
        else:
            self.node.free(job_id)

    def _cancel_all_chained(self, key: str) -> None:
        """:meth:`_cancel_chained` every follow-on not begun (a stop, exit or abort)."""
        if self._spawns is not None:
            for job_id in self._spawns.chained_ids():
                self._cancel_chained(job_id, key)
