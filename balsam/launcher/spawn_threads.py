"""Starting a worker rank's tasks from threads pinned where the tasks will run.

``posix_spawn`` (glibc: ``clone(CLONE_VM | CLONE_VFORK)``) holds its caller until the child has
exec'd, and the caller, woken on the CPU where the new program now loads, often waits there
behind it for the whole of a short task (``perf sched timehist``: 0.7 ms of scheduling delay for
a ``true`` of 0.73 ms). A worker rank that started its tasks itself was blocked in the spawn
call ~60% of its time, unable to reap or start anything meanwhile: its tasks' slots stood empty
while cores were free (benchmarks/README.md, "Issue 16, session 15").

Here a :class:`SpawnThreads` starts each task from a thread of its own for the task's CPUs,
pinned to them (``sched_setaffinity`` of the thread): the child inherits the pinning (no
``sched_setaffinity`` of a running task, no migration after the start), a spawning thread waits
behind its own child on that task's CPU only, and the worker's loop thread never waits for a
child's ``exec``. Unpinned tasks are started from a thread with the worker's own affinity.
Each thread has its own spawn buffers and encoded environment
(:func:`balsam.launcher.libc_spawn.private`). A started task is handed over
(:meth:`SpawnThreads.collect`, on the loop thread, which does all the bookkeeping), then its
pidfd registered in the worker's ``epoll`` by the thread (so its exit ends the loop's wait; the
loop unregisters and closes a pidfd only after it was ready, hence registered). A start
asked for a job that is then killed or stopped is marked (:meth:`SpawnThreads.mark`): if its
thread had not yet begun it (it waited in the queue, or behind a directory made on a hung file
system), it is never made and comes back ``withdrawn``, as the native kernel's
(``Spawner.withdraw``); else it comes back with the mark, to be ended at once. A start not
begun when the threads are closed is never made either (:attr:`SpawnThreads.dropped`).

Threads are made on first need, one per CPU set, at most :data:`MAX_THREADS` (then a thread
serves several sets, re-pinning itself when the set changes). Where glibc's functions are
missing (:func:`usable` is False) the worker starts tasks itself, as before. Where the Cython
kernel is built, :mod:`balsam.launcher.spawn_native` makes the same starts from native threads
(no Python, no GIL): these Python threads are its fallback, with the same behaviour.
"""
from __future__ import annotations

import os
import queue
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Optional, Union

from balsam.launcher import libc_spawn, spawn
from balsam.platform.process import pidfd_open

MAX_THREADS = 16
"""Spawning threads per worker rank at most (one per CPU set in use below that)."""
SETTLE_SECONDS = 10.0
"""At ``exit`` or ``abort``, how long the loop waits for starts still in flight."""

_Item = tuple[str, list[str], str, str, bool, dict[str, str], tuple[int, ...]]


class Started(NamedTuple):
    """A start that completed: the task (None if it could not start: ``error`` says why), its
    pidfd (-1: none; registered in the epoll), and the mark set while it was in flight ("" none,
    "kill" or "stop", with the grace to stop it in). ``returned``: a chained start handed back
    unstarted (task and error None): the task it followed cannot be watched (native only)."""

    job_id: str
    task: Optional[spawn.SpawnedTask]
    fd: int
    error: Optional[OSError]
    why: str
    grace: float
    returned: bool = False
    withdrawn: bool = False
    """(with ``returned``) not made because its job was killed or stopped while it was in
    flight, before its ``posix_spawn`` (native only: :meth:`NativeSpawns.mark`)."""


def usable() -> bool:
    """Whether tasks can be started from threads here (glibc's spawn functions exist)."""
    return libc_spawn.private() is not None


class SpawnThreads:
    """The spawning threads of one worker (see the module docstring). ``env``: the task base
    environment; ``poller``: the worker's epoll (each started task's pidfd is added, EPOLLIN)."""

    def __init__(self, env: Mapping[str, str], poller: select.epoll) -> None:
        self._env = dict(env)
        self._poller = poller
        self._all = tuple(sorted(os.sched_getaffinity(0)))
        self._queues: dict[tuple[int, ...], queue.SimpleQueue[Optional[_Item]]] = {}
        self._threads: list[threading.Thread] = []
        self._done: deque[tuple[str, int, Union[spawn.SpawnedTask, OSError, None]]] = deque()
        self._flight: dict[str, tuple[str, float]] = {}  # job id -> (mark, grace)
        self._begun: set[str] = set()  # in flight, past the last check (:meth:`_begin`)
        self._lock = threading.Lock()  # :meth:`_begin` against :meth:`close`
        self._closed = False
        self._hang = ""  # (:meth:`hang_before_starts`)
        self.dropped: list[str] = []
        """After :meth:`close`: the starts asked for that were never made (dropped)."""

    chains = False
    """Whether :meth:`submit` takes ``after`` and ``after_job`` (a chained start: only the
    native kernel's, where pidfds work)."""

    def can_chain(self, cpus: Sequence[int]) -> bool:
        """Whether one more chained start may be asked for on ``cpus`` (never here)."""
        return False

    watched = False
    """Whether the starts' notes go to the task watchdog (:meth:`watch`: native only)."""

    def watch(self, fd: int) -> None:
        """Write the starts' notes to ``fd`` (the native kernel only: never called here)."""
        raise ValueError("the Python spawning threads write no notes")

    def can_follow(self, job_id: str) -> bool:
        """Whether a chained start may be asked for after ``job_id``'s start (never here)."""
        return False

    def cancel(self, job_id: str) -> bool:
        """Withdraw a chained start not begun (there are none here): False."""
        return False

    def chained_ids(self) -> list[str]:
        """The jobs whose chained start has not come back yet (none here)."""
        return []

    @property
    def in_flight(self) -> int:
        """Starts asked for and not yet collected."""
        return len(self._flight)

    def submit(self, job_id: str, argv: list[str], cwd: str, output_path: str, prepared: bool,
               extra: dict[str, str], cpus: Sequence[int], after: int = -1,
               after_job: str = "", note: bytes = b"") -> None:
        """Start ``argv`` for ``job_id`` (:class:`balsam.launcher.spawn.SpawnedTask`'s
        arguments), pinned to ``cpus`` (empty: not pinned). ``after``: no chained starts here
        (:attr:`chains` is False), so always -1, and ``after_job`` ""."""
        if after >= 0 or after_job:
            raise ValueError("the Python spawning threads make no chained starts")
        self._flight[job_id] = ("", 0.0)
        self._queue(tuple(cpus)).put((job_id, argv, cwd, output_path, prepared, extra,
                                      tuple(cpus)))

    def pending_ids(self) -> list[str]:
        """The jobs whose start is in flight."""
        return list(self._flight)

    def pending(self, job_id: str) -> bool:
        """Whether ``job_id``'s start is in flight (asked for, not yet collected)."""
        return job_id in self._flight

    def mark(self, job_id: str, why: str, grace: float) -> bool:
        """If ``job_id``'s start is in flight, note that it is to be ended (``why``: "kill" or
        "stop", a kill not overridden by a stop) once started; False if it is not in flight."""
        now = self._flight.get(job_id)
        if now is None:
            return False
        if now[0] != "kill":
            self._flight[job_id] = (why, grace)
        return True

    def mark_all(self, why: str, grace: float) -> None:
        """:meth:`mark` every start in flight."""
        for job_id in list(self._flight):
            self.mark(job_id, why, grace)

    def collect(self) -> list[Started]:
        """The starts completed since the last call (loop thread only)."""
        out: list[Started] = []
        while self._done:
            job_id, fd, started = self._done.popleft()
            why, grace = self._flight.pop(job_id, ("", 0.0))
            self._begun.discard(job_id)
            if started is None:  # withdrawn: never made
                out.append(Started(job_id, None, -1, None, why, grace, True, True))
            elif isinstance(started, OSError):
                out.append(Started(job_id, None, -1, started, why, grace))
            else:
                out.append(Started(job_id, started, fd, None, why, grace))
        return out

    def settle(self, timeout: float) -> list[Started]:
        """:meth:`collect` until nothing is in flight (at most ``timeout`` seconds)."""
        out = self.collect()
        end = time.monotonic() + timeout
        while self._flight and time.monotonic() < end:
            time.sleep(0.001)
            out += self.collect()
        return out

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads (each after the start it is making). The loop is gone: nothing
        takes a start over from now on, so those not begun, or that failed, are dropped
        (never made), and a task made and not collected (its thread was held past the
        loop's last wait: a hung file system) is killed (:func:`_late`). Waits at most
        ``timeout`` seconds: a thread held is left; it makes nothing once it goes on, and
        kills what it was making then."""
        with self._lock:
            self._closed = True
            made = [(fd, t) for _, fd, t in self._done if isinstance(t, spawn.SpawnedTask)]
            failed = {j for j, _, t in self._done if not isinstance(t, spawn.SpawnedTask)}
            self.dropped.extend(j for j in self._flight if j not in self._begun or j in failed)
            self._done.clear()
        for fd, task in made:
            _late(task, fd)
        for q in self._queues.values():
            try:
                while True:
                    q.get_nowait()
            except queue.Empty:
                q.put(None)
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))

    def _queue(self, cpus: tuple[int, ...]) -> queue.SimpleQueue[Optional[_Item]]:
        q = self._queues.get(cpus)
        if q is None:
            if len(self._threads) < MAX_THREADS:
                q = queue.SimpleQueue()
                thread = threading.Thread(target=self._serve, args=(q,), daemon=True,
                                          name=f"spawn-{len(self._threads)}")
                thread.start()
                self._threads.append(thread)
            else:  # a thread of an earlier set serves this one too
                q = list(self._queues.values())[hash(cpus) % MAX_THREADS]
            self._queues[cpus] = q
        return q

    def _serve(self, q: queue.SimpleQueue[Optional[_Item]]) -> None:
        lib = libc_spawn.private()
        env = libc_spawn.EncodedEnv(self._env)  # filled per start: one per thread
        pinned: tuple[int, ...] = ()  # this thread's affinity (): the worker's
        while True:
            item = q.get()
            if item is None:
                return
            job_id, argv, cwd, output_path, prepared, extra, cpus = item
            if (cpus or self._all) != (pinned or self._all):
                try:
                    os.sched_setaffinity(0, cpus or self._all)
                    pinned = cpus
                except OSError:  # not allowed here: the task is pinned after its start
                    pass
            try:
                if self._hang:  # (the test hook: a lookup on a hung file system)
                    os.close(os.open(self._hang, os.O_RDONLY))
                if not prepared:  # (where a hung file system holds the thread, before the
                    spawn.make_directory(cwd)  # check; made again at the start if removed)
                if not self._begin(job_id):
                    self._done.append((job_id, -1, None))
                    continue
                task = spawn.SpawnedTask(job_id, argv, env, cwd, output_path, True, extra, lib)
            except OSError as exc:
                self._done.append((job_id, -1, exc))
                continue
            if cpus and pinned != cpus:
                spawn.pin(task.pid, cpus)
            found = pidfd_open(task.pid)
            fd = -1 if found is None else found
            with self._lock:  # (a close meanwhile: nothing takes the task over, see _late)
                late = self._closed
                if not late:
                    self._done.append((job_id, fd, task))  # first: a ready pidfd is collected
                    if fd >= 0:  # (before close could see it: it closes the fd of a late one)
                        self._poller.register(fd, select.EPOLLIN)
            if late:
                _late(task, fd)

    def _begin(self, job_id: str) -> bool:
        """Whether the thread makes ``job_id``'s start now: not if a kill or stop marked it
        (withdrawn) or the threads were closed (dropped). Past this, the start is made."""
        with self._lock:
            if self._closed or self._flight.get(job_id, ("", 0.0))[0]:
                return False
            self._begun.add(job_id)
            return True

    def hang_before_starts(self, fifo: str) -> None:
        """Test hook: each start first opens ``fifo`` for reading, which blocks until it is
        opened for writing, as a directory lookup on a hung file system would (the native
        kernel's ``hang_dirs``)."""
        self._hang = fifo


def _late(task: spawn.SpawnedTask, fd: int) -> None:
    """``task`` was made after the loop's last wait for starts (its thread held in the start
    itself: an open on a hung file system) and :meth:`SpawnThreads.close` came: nothing would
    reap, report or stop it, so it is killed at once, as the native kernel kills a start made
    as its stop came (it ran, if only for a moment: its ``?JOBID`` stands)."""
    try:
        os.killpg(task.pid, signal.SIGKILL)  # (our child, unreaped: its id names its group)
    except ProcessLookupError:  # (not while it is unreaped: a zombie is still a member)
        pass
    if fd >= 0:
        os.close(fd)
