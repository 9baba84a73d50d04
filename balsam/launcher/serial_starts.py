"""A serial worker's task starts (:class:`Starts`, a part of
:class:`balsam.launcher.serial_worker.Worker`): queued tasks placed on free slots and started
(shell tasks by the spawning threads, function tasks in warm Python workers), and *chained*
starts: the next task of a slot queued behind the task running there, started by the native
spawning thread the moment that task exits, without waiting for the worker's Python loop
(issue 16; benchmarks/README.md, "Issue 16, session 17 (branch s17-chain)").

While work is queued and a slot's task runs, :meth:`Starts._chain_behind` takes the
queue's head if it would take exactly that task's place (same share, as many CPUs:
:meth:`balsam.launcher.nodeslots.NodeSlots.placement_for`) and asks the spawning threads for a
start after it (:meth:`balsam.launcher.spawn_native.NativeSpawns.submit` with ``after``: a dup
of the running task's pidfd). One follow-on per running task; a task is followed only while it
runs normally (not killed or stopped), is a shell task (a function task's successor waits in
its warm process instead: :mod:`balsam.launcher.serial_warm`) and holds its place itself.

Accounting: the follow-on holds the share of the task it follows from the moment it is asked
for (nothing else is placed there), and takes it over when that task is reaped
(:meth:`Starts._release`: ``hand_over``), or the task's share is freed if the follow-on
already ended, failed or was withdrawn. A kill, stop, exit or abort withdraws a follow-on that
has not begun (:meth:`Starts._cancel_chained`): it never starts, and is reported as a
queued task would be (``killed`` for a kill, ``returned`` otherwise); one that has begun comes
back started, with the mark of the order, as any start in flight
(:class:`balsam.launcher.spawn_threads.SpawnThreads`). Where the spawning threads cannot chain
(the pure-Python ones) nothing is chained: the worker behaves as before.

Nothing is chained behind a task without a pidfd (``pidfd_open`` failed: EMFILE, ENOSYS), and a
start chained behind a start in flight whose task then gets none comes back *returned*
(:meth:`Starts._returned`), with every start chained behind it: never started beside that
task, it goes back to the queue's head and starts once that task is reaped (polled:
:meth:`Starts._polled`), as without chains.
"""
from __future__ import annotations

import os
import select
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Optional, Union

from balsam.launcher import libc_spawn, spawn, task
from balsam.launcher.nodeslots import NodeSlots, Placement
from balsam.launcher.serial_warm import Running
from balsam.launcher.serial_work import Work, task_env
from balsam.launcher.spawn_threads import SpawnThreads, Started
from balsam.launcher.warm_pool import WarmPool, WarmTask, is_runner_argv
from balsam.launcher.watchdog import Watchdog
from balsam.platform.process import pidfd_open

CHAIN_AHEAD = 4
"""Starts in flight (asked for, not yet taken over by the loop) in one chain at most."""
PACE_SECONDS = 0.002
"""How long the loop sleeps while every chain has starts in flight (:meth:`Starts._paced`):
ends are reaped, and starts taken over and reported, in batches."""


def is_shell(work: Work) -> bool:
    """Whether ``work`` is started as a process of its own (not in a warm Python worker)."""
    return work.envscript is not None or not is_runner_argv(work.argv)


class Starts:
    """The worker loop's task starts (:class:`balsam.launcher.serial_worker.Worker` sets these
    attributes up; see the module docstring)."""

    _spawns: Optional[SpawnThreads]
    queue: deque[Work]
    running: dict[str, Running]
    node: NodeSlots
    stopping: bool
    watchdog: Optional[Watchdog]
    pin_single_core: bool
    started: int
    prepared: int
    warm: WarmPool
    _prep: spawn.Preparer
    _env: libc_spawn.EncodedEnv
    _tails: dict[str, WarmTask]
    _by_fd: dict[int, str]
    _poller: select.epoll
    _follower: dict[str, str]
    """A running task's job id -> its follow-on's (not yet handed its place)."""
    _leader: dict[str, str]
    """The reverse of ``_follower``."""
    _chained_work: dict[str, Work]
    _chain_seq: dict[str, int]
    _chain_ticket: Iterator[int]
    """Chained starts' places in the queue's order (the first ticket each got: a start handed
    back and chained again keeps it), while chained or handed back and queued again."""
    _doomed: set[str]
    """Chained starts in flight that the kernel hands back (they wait behind a start that came
    back handed back): nothing is chained behind them (:meth:`_followable`)."""
    _unwatched: set[str]
    """Running tasks without a pidfd (their end is polled: :meth:`_polled`)."""
    finished: bool
    chained = 0
    """Chained starts asked for so far (the benchmark's breakdown, tests)."""

    def _note_all(self, key: str, values: Sequence[Any]) -> None:
        """Add to this iteration's report (provided by ``Worker``)."""
        raise NotImplementedError

    def _queue_behind(self) -> bool:
        """Queue function tasks in warm processes (provided by ``WarmQueueing``)."""
        raise NotImplementedError

    def _start_fitting(self) -> bool:
        """Start every queued task that fits. The watchdog hears of the whole batch in two
        writes: the job ids before the first start (a task started by a rank that dies before
        the second write is found by its ``BALSAM_JOB_ID``), the process groups after the last
        (of tasks started by the spawning threads: when they come back, :meth:`_collect`)."""
        batch: list[tuple[Work, Placement]] = []
        while (self.queue or self._unchain()) and not self.stopping:
            work = self.queue[0]
            placement = self.node.place(work.job_id, work.packing, work.required_cores)
            if placement is None:
                break
            self.queue.popleft()
            if self._chain_seq:  # handed back once, started from the queue now: forgotten
                self._chain_seq.pop(work.job_id, None)
            batch.append((work, placement))
        if not batch:
            return self._chain_behind() or self._queue_behind()
        cold = [(w, p, is_shell(w)) for w, p in batch]
        threads = self._spawns  # started tasks are noted when they come back (_collect)
        self._note_all("started", [w.job_id for w, _, cold_ in cold if not (cold_ and threads)])
        if self.watchdog is not None:
            self.watchdog.expect_all([w.job_id for w, _, spawned in cold if spawned])
        added: list[tuple[int, str]] = []
        try:
            for work, placement, spawned in cold:
                self._start(work, placement, spawned, added)
        finally:
            if added and self.watchdog is not None:  # none on the spawning threads' path
                self.watchdog.add_all(added)
        self._chain_behind() or self._queue_behind()
        return True

    def _start(self, work: Work, placement: Placement, spawned: bool,
               added: list[tuple[int, str]]) -> None:
        if spawned and self._spawns is not None:  # taken over when it comes back: _collect
            return self._submit(work, placement)
        env = task_env(work, placement.gpu)
        prepared = spawned and self._prep.take(work.output_path)
        self.prepared += prepared
        cpus = spawn.pinned_cpus(placement.cpus, len(self.node.cpus), self.pin_single_core)
        argv = task.with_envscript(work.argv, work.envscript)
        try:
            t: Union[WarmTask, spawn.SpawnedTask] = (spawn.SpawnedTask(
                work.job_id, argv, self._env, work.workdir, work.output_path, prepared, env)
                if spawned
                else self.warm.start(work.job_id, env, work.workdir, work.output_path,
                                     placement.cpus, work.row,
                                     (work.packing, work.required_cores)))
        except OSError as exc:
            self.node.free(work.job_id)
            self._note_all("failed", [(work.job_id, -1, f"cannot start: {exc}")])
            return
        if isinstance(t, WarmTask):  # pinned by the pool; its reply (or death) ends the wait
            fd = t.fd
            self._tails[work.job_id] = t
        else:
            added.append((t.pgid, work.job_id))
            if cpus:
                spawn.pin(t.pid, cpus)
            found = pidfd_open(t.pid)
            fd = -1 if found is None else found
            if fd < 0:
                self._unwatched.add(work.job_id)
        self.started += 1
        self.running[work.job_id] = Running(t, fd)
        if fd >= 0:
            self._by_fd[fd] = work.job_id
            self._poller.register(fd, select.EPOLLIN)

    def _submit(self, work: Work, placement: Placement, after: int = -1,
                after_job: str = "", note: bytes = b"") -> None:
        """Ask the spawning threads for ``work``'s start at ``placement`` (a chained start:
        ``after``, a pidfd the request owns, or ``after_job``, a start in flight)."""
        assert self._spawns is not None
        env = task_env(work, placement.gpu)
        prepared = self._prep.take(work.output_path)
        self.prepared += prepared
        cpus = spawn.pinned_cpus(placement.cpus, len(self.node.cpus), self.pin_single_core)
        self._spawns.submit(work.job_id, task.with_envscript(work.argv, work.envscript),
                            work.workdir, work.output_path, prepared, env, cpus, after,
                            after_job, note)

    def _chain_behind(self) -> bool:
        """Queue the head of the queue behind each running task, or start in flight, it can
        follow (see the module docstring); True if any was. One whose running task's pidfd
        cannot be dup'ed (EMFILE) stays queued, as does each after it, in order."""
        spawns = self._spawns
        if spawns is None or not self._can_chain(spawns) or self.stopping or not self.queue \
                or self.node.fits(self.queue[0].packing):  # it starts now, beside the others
            return False
        chained: list[tuple[Work, Placement, int, str]] = []
        for job_id in [*self.running, *spawns.pending_ids()]:
            work = self.queue[0]
            if job_id in self._follower or not self._followable(job_id, spawns):
                continue
            holder = self._holder(job_id)  # itself, or the ended task whose place it takes
            placement = None if holder is None else self.node.placement_for(
                holder, work.packing, work.required_cores)
            if placement is None or not is_shell(work) or not spawns.can_chain(placement.cpus):
                continue
            self.queue.popleft()
            self._follower[job_id], self._leader[work.job_id] = work.job_id, job_id
            self._chained_work[work.job_id] = work
            if work.job_id not in self._chain_seq:  # handed back before: its place is kept
                self._chain_seq[work.job_id] = next(self._chain_ticket)
            r = self.running.get(job_id)
            chained.append((work, placement, -1 if r is None else r.fd, job_id))
            if not self.queue:
                break
        back: list[Work] = []  # not chained after all: back to the queue's head, in order
        for work, placement, fd, leader in chained:  # the watchdog hears of each as it starts
            note = f"?{work.job_id}\n".encode() if self.watchdog is not None else b""
            if fd < 0 and not back:
                self._submit(work, placement, after_job=leader, note=note)
                continue
            try:
                after = -1 if back else os.dup(fd)
            except OSError:  # no descriptor to spare (EMFILE)
                after = -1
            if after < 0:  # it waits in the queue, and so does each after it: none overtakes
                del self._chained_work[work.job_id]
                self._chain_seq.pop(work.job_id, None)
                self._unlink(work.job_id)
                back.append(work)
                continue
            self._submit(work, placement, after, note=note)
        self.queue.extendleft(reversed(back))
        self.chained += len(chained) - len(back)
        return len(chained) > len(back)

    def _can_chain(self, spawns: SpawnThreads) -> bool:
        """Whether starts may be chained: the spawning threads can, and the task watchdog (if
        any) hears of each chained start from the kernel, just before it (``?JOBID``: found by
        its job id if this process dies before the loop registers it; a start that never began
        is never counted started)."""
        if not spawns.chains:
            return False
        if self.watchdog is None or spawns.watched:
            return True
        fd = self.watchdog._fd  # its pipe's write end (-1: it died); watchdog.py is full
        if fd >= 0:
            spawns.watch(fd)
        return spawns.watched

    def _followable(self, job_id: str, spawns: SpawnThreads) -> bool:
        """Whether a start may be chained behind ``job_id``: a shell task running normally, or
        a start in flight (unmarked) that is not itself behind another start in flight."""
        r = self.running.get(job_id)
        if r is not None:
            return not r.why and r.fd >= 0 and not isinstance(r.task, WarmTask)
        if not spawns.can_follow(job_id) or job_id in self._doomed:
            return False
        ahead = 1
        while ahead < CHAIN_AHEAD and job_id in self._leader:
            job_id = self._leader[job_id]
            if not spawns.pending(job_id):
                break
            ahead += 1
        return ahead < CHAIN_AHEAD

    def pace(self) -> None:
        """The loop's wait while :meth:`_paced`: a sleep, unwoken by task ends."""
        time.sleep(PACE_SECONDS)

    def _paced(self) -> bool:
        """Whether the loop may sleep :data:`PACE_SECONDS` (ends unseen): every chain on the
        node has at least two starts in flight behind its running task, no function task runs."""
        return (self._spawns is not None and self._spawns.chains
                and len(self._leader) >= 2 * len(self.node) > 0
                and not any(isinstance(r.task, WarmTask) for r in self.running.values()))

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
