"""A worker rank's task starts with no Python in the spawning threads: the Cython kernel
``balsam.launcher._spawner`` (native POSIX threads, one per CPU set, that never take the GIL).

:class:`NativeSpawns` is a :class:`balsam.launcher.spawn_threads.SpawnThreads` (same methods,
same marks for a kill, stop or abort that comes while a start is in flight, same
:class:`~balsam.launcher.spawn_threads.Started` records) whose starts are made in C: a thread
pins itself to the task's CPUs, makes the working directory unless the
:class:`~balsam.launcher.spawn.Preparer` did, calls ``posix_spawn`` with the file actions and
attributes of :mod:`balsam.launcher.libc_spawn`, opens the child's pidfd, notes the start for
the loop and adds the pidfd to the loop's ``epoll``. The pure-Python path woke a Python thread
from a queue and made it wait for the GIL for every start (~7 ``futex`` calls and ~50 us of
its CPU: benchmarks/README.md, "Issue 16, session 15 (branch s15-worker2)"); here the loop
pays ~15 us per start instead (~3.5 us of Python to build the request, under the GIL it holds
anyway, and the wake of the native thread) and learns of the start at its next iteration,
woken by the task's end (or by the kernel's event fd, written only for a start without a
pidfd: one that failed).

What is checked in Python is checked here before the request, with the messages of the Python
path: the program on the task's PATH (:func:`balsam.launcher.spawn.resolve`), NUL bytes and bad
variable names (EINVAL); a failed start's error names what failed
(:func:`balsam.launcher.libc_spawn.failure`). :data:`KERNEL` says whether the kernel is
built (``"cython"``) or not (``"python"``: :func:`make` returns the pure-Python threads).
"""
from __future__ import annotations

import importlib
import os
import select
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from balsam.launcher import libc_spawn, spawn, spawn_threads
from balsam.launcher.spawn_threads import SpawnThreads, Started
from balsam.platform.process import pidfd_open


def _load_kernel() -> tuple[str, Any, Optional[str]]:
    try:
        kernel = importlib.import_module("balsam.launcher._spawner")
    except ImportError as exc:
        return "python", None, str(exc)
    return "cython", kernel, None


KERNEL, _kernel, KERNEL_ERROR = _load_kernel()
"""``"cython"`` when ``balsam.launcher._spawner`` is importable (``KERNEL_ERROR``: why not)."""
_ARGV_CACHE = 256
"""Encoded command lines kept (cleared when full), as :mod:`libc_spawn` keeps its arrays."""
PROC_FDS = "/proc/self/fd"
"""Where this process's descriptors can be opened anew (tests point it at an empty directory:
a container without ``/proc``)."""
CHAINED_PER_THREAD = 64
"""Chained starts waiting on one native thread at most (the kernel polls that many pidfds)."""


class StartedTask(spawn.SpawnedTask):
    """A task the kernel started: a :class:`balsam.launcher.spawn.SpawnedTask` made from its pid
    (``started``: when the kernel started it, wall clock)."""

    def __init__(self, job_id: str, output_path: str, pid: int, started: float) -> None:
        self.job_id = job_id
        self.output_path = output_path
        self.started = started
        self.kill_deadline: Optional[float] = None
        self._returncode: Optional[int] = None
        self.pid = self.pgid = pid


class NativeSpawns(SpawnThreads):
    """:class:`SpawnThreads` with the starts made by the Cython kernel (see the module
    docstring); only where :data:`KERNEL` is ``"cython"``."""

    def __init__(self, env: Mapping[str, str], poller: select.epoll) -> None:
        super().__init__(env, poller)
        libc_spawn.check_names(self._env)
        self._slots = {key: i for i, key in enumerate(self._env)}
        self._spawner = _kernel.Spawner(
            [libc_spawn.entry(k, v) for k, v in self._env.items()], poller.fileno(),
            spawn_threads.MAX_THREADS)
        self._which: dict[tuple[int, ...], int] = {}
        self._argv: dict[tuple[str, ...], list[bytes]] = {}
        self._asked: dict[int, tuple[str, str, str, str]] = {}  # token -> the start
        self._tokens: dict[str, tuple[int, int]] = {}  # job id -> (thread, token) not back yet
        self._chained: set[str] = set()  # of those, the chained starts
        self.chains = pidfds_work()
        self.watched = False
        self.stuck = 0
        """Native threads :meth:`close` left running (stuck in a system call)."""
        self._token = 0
        poller.register(self._spawner.eventfd, select.EPOLLIN)

    def submit(self, job_id: str, argv: list[str], cwd: str, output_path: str, prepared: bool,
               extra: dict[str, str], cpus: Sequence[int], after: int = -1,
               after_job: str = "", note: bytes = b"") -> None:
        """As :meth:`SpawnThreads.submit`; a start that cannot be asked for (a program not on
        the task's PATH, a NUL byte, a bad variable name; no thread, or no room to wait in the
        kernel) comes back failed, as there.
        A chained start, made by the kernel as soon as the task it follows has exited:
        ``after`` >= 0, that task's pidfd (the call owns the descriptor: a dup made for it), or
        ``after_job``, a start on the same CPUs still in flight (:meth:`can_follow`). It can
        be withdrawn with :meth:`cancel` until it begins. ``note``: a line the kernel writes
        to the watch fd (:meth:`watch`) just before the start."""
        self._flight[job_id] = ("", 0.0)
        try:
            program = spawn.resolve(argv[0], extra.get("PATH", self._env.get("PATH")))
            libc_spawn.check_names(extra)
            variables = [(self._slots.get(k, -1), libc_spawn.entry(k, v)) for k, v in extra.items()]
            which = self._thread(tuple(cpus))
            request = (os.fsencode(program), self._encoded(argv), variables, os.fsencode(cwd),
                       os.fsencode(output_path), prepared, tuple(cpus), which)
        except OSError as exc:
            if after >= 0:
                os.close(after)
            self._done.append((job_id, -1, exc))
            return
        self._token += 1
        self._asked[self._token] = (job_id, program, cwd, output_path)
        after_token = self._tokens[after_job][1] if after_job else 0
        self._tokens[job_id] = (which, self._token)
        if after >= 0 or after_token:
            self._chained.add(job_id)
        try:  # (the kernel closed ``after``)
            self._spawner.submit(self._token, *request, after, after_token, self.chains, note)
        except OSError as exc:  # no thread, or no room to wait: failed, as above, not raised
            self._chained.discard(job_id)
            del self._asked[self._tokens.pop(job_id)[1]]
            self._done.append((job_id, -1, exc))

    def watch(self, fd: int) -> None:
        """The kernel writes the starts' notes to ``fd`` (the task watchdog's pipe, written in
        whole lines by both: :mod:`balsam.launcher.pipe_lines`) without blocking, so that a
        stuck watchdog never holds a spawning thread (a start it cannot announce comes back
        returned: :attr:`unnoted`): through a dup if ``fd`` is non-blocking already (the
        worker loop's: :meth:`balsam.launcher.watchdog.Watchdog.never_wait`; no ``/proc``
        needed), else an open of its own (:data:`PROC_FDS`: a dup would make the loop's
        writes non-blocking too). If neither can be made (no ``/proc``, or the watchdog is
        gone), nothing is watched and nothing is chained from then on."""
        try:
            own = (os.dup(fd) if not os.get_blocking(fd) else
                   os.open(f"{PROC_FDS}/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError:
            self.chains = False
            return
        self._spawner.watch(own)
        self.watched = True

    @property
    def unnoted(self) -> int:
        """Chained starts handed back because the watchdog could not be told of them."""
        return int(self._spawner.unnoted)

    def mark(self, job_id: str, why: str, grace: float) -> bool:
        """As :meth:`SpawnThreads.mark`; the kernel also withdraws the start: if its
        ``posix_spawn`` has not begun (its thread stuck in a directory's lookup on a hung file
        system, a note's wait, a queue), it is never made and comes back ``withdrawn``."""
        if not super().mark(job_id, why, grace):
            return False
        token = self._tokens.get(job_id)
        if token is not None:
            self._spawner.withdraw(*token)
        return True

    def can_follow(self, job_id: str) -> bool:
        """Whether a chained start may be asked for after ``job_id``'s start, in flight (the
        kernel has it, unmarked by a kill or stop)."""
        return job_id in self._tokens and not self._flight[job_id][0]

    def can_chain(self, cpus: Sequence[int]) -> bool:
        """Whether one more chained start may wait on the thread of ``cpus`` (at most
        :data:`CHAINED_PER_THREAD`)."""
        which = self._thread(tuple(cpus))
        return sum(self._tokens[j][0] == which for j in self._chained) < CHAINED_PER_THREAD

    def cancel(self, job_id: str) -> bool:
        """Withdraw ``job_id``'s chained start if it has not begun: True if so (it never
        starts and never comes back), False if it is no chained start or has begun."""
        if job_id not in self._chained or not self._spawner.cancel(*self._tokens[job_id]):
            return False
        self._chained.discard(job_id)
        del self._asked[self._tokens.pop(job_id)[1]], self._flight[job_id]
        return True

    def chained_ids(self) -> list[str]:
        """The jobs whose chained start has not come back yet."""
        return list(self._chained)

    def collect(self) -> list[Started]:
        """As :meth:`SpawnThreads.collect` (loop thread only); a task's ``started`` is the
        time the kernel started it. A chained start whose predecessor runs without a pidfd
        comes back ``returned`` (never started; nor are those chained behind it)."""
        out = super().collect() if self._done else []  # those that could not be asked for
        flight, asked, chained, tokens = self._flight, self._asked, self._chained, self._tokens
        for token, pid, fd, err, when in self._spawner.collect():
            job_id, program, cwd, output_path = asked.pop(token)
            why, grace = flight.pop(job_id, ("", 0.0))
            del tokens[job_id]
            if chained:
                chained.discard(job_id)
            if err in (_kernel.RETURNED, _kernel.UNNOTED, _kernel.WITHDRAWN):  # beside a task
                # nothing watches, a stuck watchdog would not have known it, or withdrawn
                out.append(Started(job_id, None, -1, None, why, grace, True,
                                   err == _kernel.WITHDRAWN))
            elif err:
                out.append(Started(job_id, None, -1, libc_spawn.failure(err, program, cwd,
                                                                        output_path), why, grace))
            else:
                out.append(Started(job_id, StartedTask(job_id, output_path, pid, when), fd, None,
                                   why, grace))
        return out

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads (starts not made yet are dropped), close the event fd and the
        pidfds of starts not collected. Waits at most ``timeout`` seconds: a thread stuck in
        a system call (a ``mkdir`` on a hung file system) is left (:attr:`stuck`), starts
        nothing once it returns, and ends with the process. :attr:`dropped`: the starts not
        collected whose ``posix_spawn`` never began (the kernel says which began)."""
        self.stuck = self._spawner.close(timeout)
        late = set(self._spawner.late)  # begun: they may have run (their notes stand)
        for token in [t for t in self._asked if t not in late]:  # never to come back
            self.dropped.append(self._asked.pop(token)[0])

    @property
    def threads(self) -> int:
        """Native threads made so far."""
        return int(self._spawner.threads)

    def _thread(self, cpus: tuple[int, ...]) -> int:
        which = self._which.get(cpus)
        if which is None:
            made, most = len(set(self._which.values())), self._spawner.max_threads
            which = self._which[cpus] = made if made < most else hash(cpus) % most
        return which

    def _encoded(self, argv: Sequence[str]) -> list[bytes]:
        key = tuple(argv)
        encoded = self._argv.get(key)
        if encoded is None:
            encoded = libc_spawn.encoded_argv(key)
            if len(self._argv) >= _ARGV_CACHE:
                self._argv.clear()
            self._argv[key] = encoded
        return encoded


def pidfds_work() -> bool:
    """Whether this kernel has pidfds (Linux 5.3): a chained start waits on one."""
    fd = pidfd_open(os.getpid())
    if fd is None:
        return False
    os.close(fd)
    return True


def make(env: Mapping[str, str], poller: select.epoll) -> SpawnThreads:
    """A worker's spawning threads: native where the kernel is built, else the pure-Python
    ones (same behaviour)."""
    return NativeSpawns(env, poller) if KERNEL == "cython" else SpawnThreads(env, poller)
