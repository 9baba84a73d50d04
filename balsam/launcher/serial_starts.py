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
from balsam.launcher.serial_chains import Chains
from balsam.launcher.serial_warm import Running
from balsam.launcher.serial_work import Work, task_env
from balsam.launcher.spawn_threads import SpawnThreads
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


class Starts(Chains):
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
        (of tasks started by the spawning threads: when they come back, :meth:`_collect`).
        Those writes never wait (:meth:`balsam.launcher.watchdog.Watchdog.never_wait`): a task
        the watchdog could not be told of waits in the queue (:meth:`_told`)."""
        if self.watchdog is not None and not self.watchdog.out.ready():
            return False  # a full pipe: lines it refused go first, nothing starts meanwhile
        batch: list[tuple[Work, Placement]] = []
        while (self.queue or self._unchain()) and not self.stopping:
            work = self.queue[0]
            placement = self.node.place(work.job_id, work.packing, work.required_cores)
            if placement is None:
                break
            self.queue.popleft()
            batch.append((work, placement))
        if not batch:
            return self._chain_behind() or self._queue_behind()
        cold = [(w, p, is_shell(w)) for w, p in self._told(batch)]
        if not cold:
            return False
        if self._chain_seq:  # handed back once, started from the queue now: forgotten
            for work, _, _ in cold:
                self._chain_seq.pop(work.job_id, None)
        threads = self._spawns  # started tasks are noted when they come back (_collect)
        self._note_all("started", [w.job_id for w, _, cold_ in cold if not (cold_ and threads)])
        added: list[tuple[int, str]] = []
        try:
            for work, placement, spawned in cold:
                self._start(work, placement, spawned, added)
        finally:
            if added and self.watchdog is not None:  # none on the spawning threads' path
                self.watchdog.add_all(added)
        self._chain_behind() or self._queue_behind()
        return True

    def _told(self, batch: list[tuple[Work, Placement]]) -> list[tuple[Work, Placement]]:
        """The tasks of ``batch`` (placed, in queue order) the task watchdog was told of: the
        shell tasks' ``?JOBID`` lines, one write that never waits. If the pipe refused some
        (the watchdog stopped or stuck: its pipe full), the first task not told, the first
        function task (its ``+PGID JOBID`` line, written after its start, would be held
        back) and every task after it go back to the queue's head, their places freed: a
        task the watchdog was not told of is never started (if this rank then died, nothing
        would stop it or count its start). The next iteration tries again; the pipe's writer
        says once in the rank's log that the watchdog reads nothing. A shell task sent back
        whose line went in (behind the function task) has it undone (``^JOBID``, ahead of
        its next ``?JOBID``): otherwise the watchdog's report would count a start more."""
        dog = self.watchdog
        if dog is None:
            return batch
        shells = [w.job_id for w, _ in batch if is_shell(w)]
        told = dog.expect_all(shells)
        if told == len(shells):
            return batch
        cut = next(i for i, (w, _) in enumerate(batch)
                   if not is_shell(w) or w.job_id not in shells[:told])
        told_ids = set(shells[:told])
        for work, _ in batch[cut:]:
            self.node.free(work.job_id)
            if work.job_id in told_ids:  # its "?JOBID" went in (behind a function task):
                dog.out.deferred.append(f"^{work.job_id}\n".encode())  # undone, or counted
        self.queue.extendleft(reversed([w for w, _ in batch[cut:]]))
        return batch[:cut]

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
        if not spawns.chains or (self.watchdog is not None and self.watchdog.out.refusing):
            return False  # (a stuck watchdog: each note would wait a second, then come back)
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
