"""``posix_spawn`` with the working directory set in the child only: glibc's
``posix_spawn_file_actions_addchdir_np`` (glibc >= 2.29) called through ``ctypes``.

``os.posix_spawn`` cannot change the child's directory (not even in Python 3.13), so the
launcher used to ``chdir`` itself around every spawn: for those microseconds any other thread of
the process (MPI mode's transaction and preparer threads, a worker's preparer) resolving a
relative path resolved it in a task's directory. Here the child enters its directory, after
getting its output file, which the caller opens (a relative output path is the caller's, as
with ``Popen``; ``O_NONBLOCK`` for the open: :func:`open_output`), and the caller's directory
never changes.

What is the same for every task is encoded once: an :class:`EncodedEnv` holds a base
environment as a C array of ``NAME=value`` strings with spare slots, and a task's own variables
are written into it per spawn (``os.posix_spawn`` encodes the whole environment, ~80-100
variables, in every call); a whole environment per start (MPI mode) is encoded as what differs
from the last one; argv arrays are cached. The spawn attributes (new session, signals back at
their default) are made once per signal set. Measured, this is a wash: the Python side of a
ctypes start costs about what ``os.posix_spawn`` spent encoding in C (benchmarks/README.md,
"Issue 16, session 14"); the point of this module is the working directory.

Where glibc or the function is missing (musl, glibc < 2.29, no ``ctypes``) :func:`spawn` starts
the task with ``subprocess.Popen(cwd=...)`` instead: correct (the child changes directory),
~2x the caller's CPU, logged once (:func:`method` names the one in use). Errors are OSErrors
naming what failed (the program, the working directory or the output file), as before.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

_SETSIGDEF, _SETSID = 0x04, 0x80
"""glibc's ``POSIX_SPAWN_SETSIGDEF`` and ``POSIX_SPAWN_SETSID`` (bits/spawn.h, since 2.26)."""
_OPAQUE_BYTES = 1024
"""Room for ``posix_spawnattr_t`` (336 bytes on x86-64 glibc), ``posix_spawn_file_actions_t``
(80) and ``sigset_t`` (128): the C types are opaque to us, so more than enough is allocated."""
_ARGV_CACHE = 256
"""argv blocks kept (most serial campaigns repeat a few command lines); cleared when full."""
_O_OUT = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC
"""The output file, opened by the caller (:func:`open_output`): never blocking in ``open``."""
_ENCODING = sys.getfilesystemencoding()
_UNCHECKED = frozenset({
    "posix_spawn", "posix_spawn_file_actions_init", "posix_spawn_file_actions_destroy",
    "posix_spawn_file_actions_addopen", "posix_spawn_file_actions_adddup2",
    "posix_spawn_file_actions_addchdir_np"})
"""Called per task with only bytes, small ints and ctypes objects (passed as pointers), so
without ``argtypes``: ctypes' per-argument conversion was ~20% of the call's cost."""
_HOLDING = frozenset(_UNCHECKED - {"posix_spawn"})
"""Called holding the GIL (``ctypes.PyDLL``): each returns in microseconds, and a call through
``CDLL`` releases and takes back the GIL, which, with the worker's other threads waiting for it
(:mod:`balsam.launcher.spawn_threads`), cost a thread switch each; ``posix_spawn`` itself, which
waits for the child's ``exec``, releases it."""
_EXTRA_SLOTS = 64
"""A task's own variables that fit in its :class:`EncodedEnv`'s array (more: a new array)."""


def check_names(variables: Mapping[str, str]) -> None:
    """OSError EINVAL (a start failure, which the worker reports as the job's error, where
    ``os.posix_spawn`` raised ValueError) for an empty name or one with ``=``."""
    for key in variables:
        if not key or "=" in key:
            raise OSError(errno.EINVAL, f"invalid environment variable name {key!r}")


def entry(key: str, value: str) -> bytes:
    """``key=value`` as the C environment holds it; OSError EINVAL for a NUL anywhere."""
    encoded = f"{key}={value}".encode(_ENCODING, "surrogateescape")
    if b"\0" in encoded:
        raise OSError(errno.EINVAL, f"environment variable {key!r} holds a NUL byte")
    return encoded


_Strings = ctypes.Array[ctypes.c_char_p]


def encoded_argv(argv: tuple[str, ...]) -> list[bytes]:
    """``argv`` as bytes; EINVAL (an :class:`OSError`, as a failed start) for a NUL byte."""
    encoded = [os.fsencode(a) for a in argv]
    if any(b"\0" in a for a in encoded):
        raise OSError(errno.EINVAL, f"an argument holds a NUL byte: {argv!r}")
    return encoded


def _strings(items: Sequence[bytes], spare: int = 0) -> _Strings:
    """A NULL-terminated C array of ``items`` (and ``spare`` more NULL slots)."""
    return (ctypes.c_char_p * (len(items) + spare + 1))(*items)


class EncodedEnv:
    """An environment encoded once for :func:`spawn`; a task's own variables go on top of it
    (they win over the base's) in the same C array, filled per spawn under the spawner's lock.
    ``variables``: the mapping it was made from (a copy)."""

    def __init__(self, base: Mapping[str, str]) -> None:
        self.variables = dict(base)
        check_names(self.variables)
        self._base = [entry(k, v) for k, v in self.variables.items()]
        self._array = _strings(self._base, _EXTRA_SLOTS)
        self._slot = {k: i for i, k in enumerate(self.variables)}
        self._changed: list[int] = []  # base slots the last fill replaced

    def get(self, key: str, extra: Mapping[str, str]) -> Optional[str]:
        """The value of ``key`` in the base with ``extra`` on top."""
        return extra.get(key, self.variables.get(key))

    def fill(self, extra: Mapping[str, str]) -> _Strings:
        """The C environment: the base with ``extra`` on top (one caller at a time: the array
        is reused; it stays valid until the next call)."""
        array, base, changed = self._array, self._base, self._changed
        while changed:  # what the last task replaced
            replaced = changed.pop()
            array[replaced] = base[replaced]
        end = len(base)
        if len(extra) > _EXTRA_SLOTS:
            check_names(extra)
            merged = {**self.variables, **extra}
            return _strings([entry(k, v) for k, v in merged.items()])
        slot = self._slot
        for key, value in extra.items():
            if not key or "=" in key:
                check_names({key: value})
            found = slot.get(key)
            if found is None:
                array[end] = entry(key, value)
                end += 1
            else:
                array[found] = entry(key, value)
                changed.append(found)
        array[end] = None
        return array


class _Libc:
    """glibc's spawn functions with their C signatures, and the attribute sets made so far."""

    posix_spawn: Callable[..., int]
    posix_spawnattr_init: Callable[..., int]
    posix_spawnattr_setflags: Callable[..., int]
    posix_spawnattr_setsigdefault: Callable[..., int]
    posix_spawn_file_actions_init: Callable[..., int]
    posix_spawn_file_actions_destroy: Callable[..., int]
    posix_spawn_file_actions_addopen: Callable[..., int]
    posix_spawn_file_actions_adddup2: Callable[..., int]
    posix_spawn_file_actions_addchdir_np: Callable[..., int]
    sigemptyset: Callable[..., int]
    sigaddset: Callable[..., int]

    def __init__(self, lib: ctypes.CDLL) -> None:
        vp, cint, cp = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
        signatures: dict[str, list[Any]] = {
            "posix_spawn": [ctypes.POINTER(ctypes.c_int), cp, vp, vp, vp, vp],
            "posix_spawnattr_init": [vp], "posix_spawnattr_setflags": [vp, ctypes.c_short],
            "posix_spawnattr_setsigdefault": [vp, vp],
            "posix_spawn_file_actions_init": [vp], "posix_spawn_file_actions_destroy": [vp],
            "posix_spawn_file_actions_addopen": [vp, cint, cp, cint, ctypes.c_uint],
            "posix_spawn_file_actions_adddup2": [vp, cint, cint],
            "posix_spawn_file_actions_addchdir_np": [vp, cp],
            "sigemptyset": [vp], "sigaddset": [vp, cint]}
        quick = ctypes.PyDLL(lib._name)  # see _HOLDING
        for name, argtypes in signatures.items():
            function = getattr(quick if name in _HOLDING else lib, name)  # AttributeError: not
            # this libc
            function.restype = cint
            if name not in _UNCHECKED:
                function.argtypes = argtypes
            setattr(self, name, function)
        self._attrs: dict[tuple[int, ...], ctypes.Array[ctypes.c_char]] = {}
        self._argv: dict[tuple[str, ...], _Strings] = {}
        self._lock = threading.Lock()
        self._actions = ctypes.create_string_buffer(_OPAQUE_BYTES)
        self._pid = ctypes.c_int(0)
        self._pid_ref = ctypes.byref(self._pid)
        self._last: Optional[EncodedEnv] = None  # see _difference

    def attributes(self, setsigdef: tuple[int, ...]) -> ctypes.Array[ctypes.c_char]:
        """A ``posix_spawnattr_t``: new session, ``setsigdef`` at their default (made once)."""
        attr = self._attrs.get(setsigdef)
        if attr is None:
            attr = ctypes.create_string_buffer(_OPAQUE_BYTES)
            sigset = ctypes.create_string_buffer(_OPAQUE_BYTES)
            self.posix_spawnattr_init(attr)
            self.sigemptyset(sigset)
            for sig in setsigdef:
                self.sigaddset(sigset, int(sig))
            self.posix_spawnattr_setsigdefault(attr, sigset)
            self.posix_spawnattr_setflags(attr, _SETSID | (_SETSIGDEF if setsigdef else 0))
            self._attrs[setsigdef] = attr
        return attr

    def _difference(self, env: Mapping[str, str], extra: Mapping[str, str]
                    ) -> tuple[EncodedEnv, Mapping[str, str]]:
        """``env`` (plus ``extra``) as the last full environment given, encoded, plus what
        differs from it; a new base if ``env`` lacks one of its variables. MPI mode passes each
        run's whole environment: they differ in the job's few variables, so each start encodes
        those instead of ~100 (``os.posix_spawn`` encoded them all, in C)."""
        base = self._last
        if base is not None:
            variables = base.variables
            differ = {k: v for k, v in env.items() if variables.get(k) != v}
            kept = len(env) - len(differ) + sum(1 for k in differ if k in variables)
            if kept == len(variables):  # every base variable is in env
                differ.update(extra)
                return base, differ
        self._last = EncodedEnv(env)
        return self._last, extra

    def argv(self, argv: Sequence[str]) -> _Strings:
        """``argv`` as a C array, reused for a command line seen before."""
        key = tuple(argv)
        strings = self._argv.get(key)
        if strings is None:
            encoded = encoded_argv(key)
            if len(self._argv) >= _ARGV_CACHE:
                self._argv.clear()
            strings = self._argv[key] = _strings(encoded)
        return strings

    def spawn(self, program: str, argv: Sequence[str], env: Union[EncodedEnv, Mapping[str, str]],
              extra: Mapping[str, str], cwd: str, output_path: str,
              setsigdef: tuple[int, ...]) -> int:
        """Start the task (see :func:`spawn`); its pid, or the error number as OSError."""
        actions = self._actions
        out = open_output(program, cwd, output_path)
        try:  # closed on every path: a refused environment (EINVAL) raises before the spawn
            with self._lock:  # one spawn at a time: the arrays and buffers are reused
                if not isinstance(env, EncodedEnv):
                    env, extra = self._difference(env, extra)
                envp = env.fill(extra)
                self.posix_spawn_file_actions_init(actions)
                try:  # stdout first: ``out`` may be 0 (no stdin here), replaced by /dev/null
                    if (self.posix_spawn_file_actions_adddup2(actions, out, 1)
                            or self.posix_spawn_file_actions_adddup2(actions, 1, 2)
                            or self.posix_spawn_file_actions_addopen(actions, 0, b"/dev/null",
                                                                     os.O_RDONLY, 0)
                            or self.posix_spawn_file_actions_addchdir_np(actions,
                                                                         os.fsencode(cwd))):
                        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
                    err = self.posix_spawn(self._pid_ref, os.fsencode(program), actions,
                                           self.attributes(setsigdef), self.argv(argv), envp)
                finally:
                    self.posix_spawn_file_actions_destroy(actions)
                if not err:
                    return self._pid.value
        finally:
            os.close(out)
        raise failure(err, program, cwd, output_path)


def open_output(program: str, cwd: str, output_path: str) -> int:
    """The task's output file opened for its stdout (truncated, created if missing), as a
    close-on-exec descriptor the caller closes; :func:`failure`'s OSError if it cannot be.
    ``O_NONBLOCK`` for the ``open`` (then cleared): a FIFO at the path must never block the
    starting thread (a worker's spawning thread, and its ``close``, which joins it); one
    without a reader fails the start (ENXIO, named by :func:`failure`)."""
    try:
        fd = os.open(output_path, _O_OUT, 0o666)
    except OSError as exc:
        raise failure(exc.errno or errno.EIO, program, cwd, output_path) from None
    try:
        os.set_blocking(fd, True)
    except OSError:
        os.close(fd)
        raise
    return fd


def failure(err: int, program: str, cwd: str, output_path: str) -> OSError:
    """The OSError of a failed spawn, naming what failed: glibc returns the errno of the
    child's ``open``, ``chdir`` or ``exec`` without saying which (checked here, on the error
    path only: as ``Popen``, whose parent opens the output file and reports the child's
    ``chdir`` and ``exec`` separately)."""
    if not os.path.isdir(cwd) or not os.access(cwd, os.X_OK):
        return OSError(err, os.strerror(err), cwd)
    try:
        kind = os.stat(output_path).st_mode
    except OSError:
        kind = stat.S_IFREG
    if not stat.S_ISREG(kind) and not stat.S_ISDIR(kind):  # a FIFO, a device, a socket
        what = "a FIFO with no reader" if stat.S_ISFIFO(kind) else "not a regular file"
        return OSError(err, f"{os.strerror(err)} (the output file is {what})", output_path)
    parent = os.path.dirname(os.path.abspath(output_path))
    if (os.path.isdir(output_path) or not os.path.isdir(parent)
            or not os.access(output_path if os.path.exists(output_path) else parent, os.W_OK)):
        return OSError(err, os.strerror(err), output_path)
    return OSError(err, os.strerror(err), program)


Spawner = _Libc
"""The type :func:`private` returns (a thread's own buffers for :func:`spawn`)."""
_loaded: list[Optional[_Libc]] = []
_loading = threading.Lock()
log = logging.getLogger(__name__)


def _libc() -> Optional[_Libc]:
    """glibc's functions, or None (logged once) where they are missing."""
    if not _loaded:
        with _loading:
            if not _loaded:  # one _Libc (one lock) however many threads start at once
                _load()
    return _loaded[0]


def _load() -> None:
    """Find glibc's functions (the caller holds ``_loading``)."""
    lib: Optional[_Libc] = None
    why = "not glibc"
    try:
        c = ctypes.CDLL(None)
        if hasattr(c, "gnu_get_libc_version"):
            lib = _Libc(c)
    except OSError as exc:
        why = f"no C library to load ({exc})"
    except AttributeError as exc:  # a function missing
        why = f"glibc < 2.29 ({exc})"
    if lib is None:
        log.warning(f"tasks are started with subprocess.Popen ({why}: no posix_spawn with a "
                    "working directory for the child); slower per task, same behaviour")
    _loaded.append(lib)


def method() -> str:
    """How tasks are started here (for log lines)."""
    return "posix_spawn (glibc, chdir in the child)" if _libc() is not None else "Popen"


def private() -> Optional[_Libc]:
    """A spawner of its own (its own buffers and lock) for a thread that starts tasks at the same
    time as others (:mod:`balsam.launcher.spawn_threads`); None where glibc's are missing."""
    return _Libc(ctypes.CDLL(None)) if _libc() is not None else None


def spawn(program: str, argv: Sequence[str], env: Union[EncodedEnv, Mapping[str, str]],
          cwd: str, output_path: str, setsigdef: tuple[int, ...],
          extra: Optional[Mapping[str, str]] = None, lib: Optional[_Libc] = None) -> int:
    """Start ``program`` (a path: :func:`balsam.launcher.spawn.resolve`) with ``argv``, the
    environment ``env`` (plus ``extra`` on top) in ``cwd`` (which must exist), as a session
    leader, stdin from ``/dev/null``, stdout and stderr to ``output_path`` (truncated, created
    if missing), the ``setsigdef`` signals at their default; its pid. OSError if it cannot
    start. Descriptors the caller left inheritable are inherited (glibc path): see
    :func:`balsam.launcher.spawn.forbid_inheritance`. ``lib``: a :func:`private` spawner (with
    an ``env`` of its own) instead of the process-wide one."""
    lib = lib or _libc()
    if lib is not None:
        return lib.spawn(program, argv, env, extra or {}, cwd, output_path, setsigdef)
    variables = env.variables if isinstance(env, EncodedEnv) else env
    return spawn_popen(program, argv, {**variables, **(extra or {})}, cwd, output_path,
                       setsigdef)


def spawn_popen(program: str, argv: Sequence[str], env: Mapping[str, str], cwd: str,
                output_path: str, setsigdef: tuple[int, ...]) -> int:
    """:func:`spawn` through ``subprocess.Popen`` (the fallback; tests run it everywhere).
    ``Popen`` resets SIGPIPE and SIGXFSZ or none (``restore_signals``): ``setsigdef`` is one
    of those two sets here."""
    check_names(env)
    if any("\0" in v for v in env.values()):
        raise OSError(errno.EINVAL, "an environment variable with a NUL byte")
    out = open_output(program, cwd, output_path)
    try:
        proc = subprocess.Popen(list(argv), executable=program, env=dict(env), cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True,
                                restore_signals=bool(setsigdef))
    finally:
        os.close(out)
    # The caller reaps it by pid (ReapedTask.poll). A Popen dropped with no return code is
    # kept by subprocess and waited for by the next Popen anywhere in the process: it could
    # steal the status of the task, or of a later process that got its pid.
    proc.returncode = 0
    return proc.pid
