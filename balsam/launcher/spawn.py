"""Starting many short tasks cheaply: :class:`SpawnedTask`, a :class:`procs.Task` started with
``posix_spawn`` (:mod:`balsam.launcher.libc_spawn`).

``subprocess.Popen`` costs ~150-200 us of the caller's CPU per process (argument checks, an
error pipe, the environment re-encoded in Python); ``posix_spawn`` (glibc: ``clone(CLONE_VM |
CLONE_VFORK)``) ~100 us and starts the process sooner. Serial-mode workers start thousands of
tasks a second, so they use it. Behaviour is that of :class:`procs.Task`: a new session (the
task leads its own process group), stdin from ``/dev/null``, stdout and stderr to
``output_path`` (truncated), the working directory ``cwd`` (created if missing; entered by the
child only: the caller's never changes), the program looked up on the PATH of the task's
environment, and no file descriptor but 0-2 inherited.

One process-wide effect: :func:`forbid_inheritance` marks every open descriptor close-on-exec
(Python's own already are; an MPI library's may not be).

A task's directory and output file are often the dearest part of its start: creating an inode
costs 0.1-0.5 ms on a busy ext4 (measured here: the allocator scanning past recently deleted
inodes), milliseconds on a parallel file system's metadata server, and the output file is
created by the new process before its ``exec``, while ``posix_spawn`` (vfork) holds the caller.
:class:`Preparer` makes both in a thread for tasks that wait in a queue, so that their start is
only the spawn.
"""
from __future__ import annotations

import os
import queue
import signal
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Optional, Union

from balsam.launcher import libc_spawn, procs, rank_usage

_FOUND: dict[tuple[str, str], str] = {}
RESTORED_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
"""Signals Python ignores that a task gets back at their default, as ``subprocess``'s
``restore_signals`` does for :class:`procs.Task` (a task that inherited SIGPIPE ignored saw
``EPIPE`` errors where a pipeline's writer should die quietly)."""


def resolve(program: str, path: Optional[str]) -> str:
    """The file ``program`` names, looked up on ``path`` (``os.defpath`` if None) like
    ``execvpe``; FileNotFoundError if it is not an executable file there."""
    if os.sep in program:
        return program
    key = (program, path or "")
    found = _FOUND.get(key)
    if found is None:
        for directory in (path if path is not None else os.defpath).split(os.pathsep):
            candidate = os.path.join(directory or ".", program)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                found = _FOUND[key] = candidate
                break
        else:
            raise FileNotFoundError(2, f"No such file or directory: {program!r}")
    return found


def forbid_inheritance() -> int:
    """Mark every open descriptor above 2 close-on-exec; returns how many were not."""
    changed = 0
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
                    changed += 1
            except OSError:  # the listing's own descriptor, already closed
                pass
    return changed


def prepare(cwd: str, output_path: str) -> None:
    """Make ``cwd`` (and its parents) and ``output_path`` if missing (an existing output file is
    left as it is, unopened: the task's start truncates it); OSError if that fails, or if
    ``output_path`` is no regular file (a FIFO: never opened here, a reader reading until EOF
    would see this open's close as its end)."""
    make_directory(cwd)
    try:
        os.close(os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                         | os.O_NONBLOCK, 0o666))
    except FileExistsError:
        if not stat.S_ISREG(os.stat(output_path).st_mode):
            raise


class Preparer:
    """Runs :func:`prepare` in a thread for tasks that will start soon (:meth:`ahead`, absolute
    paths), FIFO; :meth:`take` says whether a task's are made. A path it could not make is
    simply not ready: the task's start makes it (and reports the error) as without a preparer.
    Everything it does is idempotent, so a start that does not wait for it is always safe.

    Its bookkeeping holds only tasks still queued: :meth:`take` (at a start, or when a queued
    task is dropped) forgets a path whether or not it was made, and a path made after its task
    was taken is not remembered."""

    def __init__(self) -> None:
        self._todo: queue.SimpleQueue[Optional[tuple[str, str]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._ready: set[str] = set()
        self._thread = threading.Thread(target=self._serve, name="task-dirs", daemon=True)
        self._thread.start()

    def ahead(self, cwd: str, output_path: str) -> None:
        """Make ``cwd`` and ``output_path`` soon (both absolute)."""
        with self._lock:
            self._pending.add(output_path)
        self._todo.put((cwd, output_path))

    def take(self, output_path: str) -> bool:
        """True if ``output_path`` (and its directory) were made; forgets it either way."""
        with self._lock:
            if output_path in self._ready:
                self._ready.remove(output_path)
                return True
            self._pending.discard(output_path)
            return False

    def is_ready(self, output_path: str) -> bool:
        """Whether ``output_path`` is made and not yet taken (does not forget it)."""
        with self._lock:
            return output_path in self._ready

    def held(self) -> int:
        """Paths remembered (queued tasks only; for tests)."""
        with self._lock:
            return len(self._pending) + len(self._ready)

    def close(self) -> None:
        """Stop the thread (after the item it is making)."""
        self._todo.put(None)
        self._thread.join(5.0)
        with self._lock:
            self._pending.clear()
            self._ready.clear()

    def _serve(self) -> None:
        rank_usage.name_thread("task-dirs")  # its CPU is the kernel's: benchmarks/README.md
        while True:
            item = self._todo.get()
            if item is None:
                return
            with self._lock:
                wanted = item[1] in self._pending
            if not wanted:  # started or dropped before its turn
                continue
            try:
                prepare(*item)
                made = True
            except (OSError, ValueError):  # the start tries again and reports it
                made = False
            with self._lock:
                if item[1] in self._pending:
                    self._pending.remove(item[1])
                    if made:
                        self._ready.add(item[1])


def pinned_cpus(cpus: Sequence[int], node_cpus: int, single_core: bool) -> Sequence[int]:
    """The CPUs to pin a task placed on ``cpus`` (of a node of ``node_cpus``) to; empty: leave
    it unpinned (its share is the whole node, or one core and ``single_core`` is False:
    ``launcher: pin_single_core_tasks``, :data:`balsam.defaults.PIN_SINGLE_CORE_TASKS`)."""
    if len(cpus) >= node_cpus or (len(cpus) == 1 and not single_core):
        return ()
    return cpus


def pin(pid: int, cpus: Sequence[int]) -> None:
    """Pin a just-started task to ``cpus``.

    Done right after the exec rather than around the spawn (``procs.Task(cpus=...)`` moves the
    worker itself there and back, ~25-60 us a task): the new program is still loading when this
    runs, long before it can start threads or children, which inherit the pinning.
    """
    try:
        os.sched_setaffinity(pid, cpus)
    except (OSError, AttributeError):  # already gone, or no affinity support: run unpinned
        pass


def launch(argv: Sequence[str], env: Union[Mapping[str, str], libc_spawn.EncodedEnv],
           cwd: str, output_path: str, prepared: bool, setsigdef: tuple[int, ...],
           extra: Optional[Mapping[str, str]] = None,
           lib: Optional[libc_spawn.Spawner] = None) -> int:
    """Start ``argv`` (its program found on the task's PATH: :func:`resolve`) with ``env`` (and
    ``extra`` on top) in ``cwd``, output to ``output_path``
    (:func:`balsam.launcher.libc_spawn.spawn`); its pid. ``cwd`` is made unless ``prepared``
    (a :class:`Preparer` made it: made again if it was removed since). OSError if it cannot
    start: a missing program, a directory or output file that cannot be made. ``lib``: a
    spawner of the calling thread's own (:func:`balsam.launcher.libc_spawn.private`)."""
    path = (env.get("PATH", extra or {}) if isinstance(env, libc_spawn.EncodedEnv)
            else (extra or {}).get("PATH", env.get("PATH")))
    program = resolve(argv[0], path)
    if not prepared:
        make_directory(cwd)
    try:
        return libc_spawn.spawn(program, argv, env, cwd, output_path, setsigdef, extra, lib)
    except FileNotFoundError:
        if not prepared or os.path.isdir(cwd):
            raise
    make_directory(cwd)  # made ahead, removed since
    return libc_spawn.spawn(program, argv, env, cwd, output_path, setsigdef, extra, lib)


def make_directory(cwd: str) -> None:
    """Make ``cwd`` and missing parents (OSError if it cannot be made)."""
    try:
        os.mkdir(cwd)  # usually only the job's own directory is missing: one system call
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(cwd, exist_ok=True)


class ReapedTask(procs.Task):
    """What a posix_spawned task adds to :class:`procs.Task`: its return code from
    ``waitpid`` (the subclass sets ``pid`` and ``_returncode = None``)."""

    pid: int
    _returncode: Optional[int]

    @property
    def returncode(self) -> Optional[int]:
        return self._returncode

    def poll(self) -> Optional[int]:
        """Reap the process if it has exited; its return code (-N: killed by signal N)."""
        if self._returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is lost
                self._returncode = 255
                return self._returncode
            if pid:
                self._returncode = os.waitstatus_to_exitcode(status)
        return self._returncode


class SpawnedTask(ReapedTask):
    """A :class:`procs.Task` started with ``posix_spawn`` (see the module docstring); OSError
    if it cannot start. ``pid`` is also the process group id. ``prepared``: ``cwd`` exists
    (:class:`Preparer` made it). ``env`` may be encoded once for many tasks
    (:class:`balsam.launcher.libc_spawn.EncodedEnv`); ``extra``: the task's own variables on
    top of it; ``lib``: see :func:`launch`."""

    def __init__(self, job_id: str, argv: Sequence[str],
                 env: Union[Mapping[str, str], libc_spawn.EncodedEnv], cwd: str,
                 output_path: str, prepared: bool = False,
                 extra: Optional[Mapping[str, str]] = None,
                 lib: Optional[libc_spawn.Spawner] = None) -> None:
        self.job_id = job_id
        self.output_path = output_path
        self.started = time.time()
        self.kill_deadline: Optional[float] = None
        self._returncode: Optional[int] = None
        self.pid = launch(argv, env, cwd, output_path, prepared, RESTORED_SIGNALS, extra, lib)
        self.pgid = self.pid
