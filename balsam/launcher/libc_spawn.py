"""``posix_spawn`` with the working directory set in the child only: glibc's
``posix_spawn_file_actions_addchdir_np`` (glibc >= 2.29) called through ``ctypes``.

``os.posix_spawn`` cannot change the child's directory (not even in Python 3.13), so the
launcher used to ``chdir`` itself around every spawn: for those microseconds any other thread of
the process (MPI mode's transaction and preparer threads, a worker's preparer) resolving a
relative path resolved it in a task's directory. Here the child enters its directory, after
opening its output file (a relative output path is the caller's, as with ``Popen``), and the
caller's directory never changes.

What is the same for every task is encoded once: an :class:`EncodedEnv` holds a base
environment as one C block of ``NAME=value`` strings and their addresses, and a task's own
variables are added per spawn (``os.posix_spawn`` encodes the whole environment, ~80-100
variables, in every call); argv lists seen before reuse their block (:func:`spawn`). The spawn
attributes (new session, signals back at their default) are made once per signal set.

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
import subprocess
import sys
from array import array
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

_SETSIGDEF, _SETSID = 0x04, 0x80
"""glibc's ``POSIX_SPAWN_SETSIGDEF`` and ``POSIX_SPAWN_SETSID`` (bits/spawn.h, since 2.26)."""
_OPAQUE_BYTES = 1024
"""Room for ``posix_spawnattr_t`` (336 bytes on x86-64 glibc), ``posix_spawn_file_actions_t``
(80) and ``sigset_t`` (128): the C types are opaque to us, so more than enough is allocated."""
_ARGV_CACHE = 256
"""argv blocks kept (most serial campaigns repeat a few command lines); cleared when full."""
_O_OUT = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_ENCODING = sys.getfilesystemencoding()
_POINTER_CODE = "Q" if ctypes.sizeof(ctypes.c_void_p) == 8 else "I"


def _check_names(variables: Mapping[str, str]) -> None:
    """OSError EINVAL (a start failure, which the worker reports as the job's error, where
    ``os.posix_spawn`` raised ValueError) for an empty name or one with ``=``."""
    for key in variables:
        if not key or "=" in key:
            raise OSError(errno.EINVAL, f"invalid environment variable name {key!r}")


def _entries(variables: Mapping[str, str]) -> list[bytes]:
    """``NAME=value`` as the C environment holds them (a NUL anywhere is refused by
    :class:`_Block`)."""
    _check_names(variables)
    return [f"{k}={v}".encode(_ENCODING, "surrogateescape") for k, v in variables.items()]


class _Block:
    """NUL-terminated strings in one C buffer and an array of their addresses (no NULL)."""

    __slots__ = ("buffer", "pointers")

    def __init__(self, items: Sequence[bytes]) -> None:
        blob = b"\0".join(items)
        if items and blob.count(b"\0") != len(items) - 1:
            raise OSError(errno.EINVAL, f"an argument or variable with a NUL byte: {items!r}")
        self.buffer = ctypes.create_string_buffer(blob)
        address = ctypes.addressof(self.buffer)
        self.pointers = array(_POINTER_CODE, [address])
        for item in items[:-1]:
            address += len(item) + 1
            self.pointers.append(address)
        if not items:
            self.pointers.pop()


class EncodedEnv:
    """An environment encoded once for :func:`spawn`; a task's own variables go on top of it
    (they win over the base's). ``variables``: the mapping it was made from (a copy)."""

    def __init__(self, base: Mapping[str, str]) -> None:
        self.variables = dict(base)
        self._block = _Block(_entries(self.variables))
        self._slot = {k: i for i, k in enumerate(self.variables)}

    def get(self, key: str, extra: Mapping[str, str]) -> Optional[str]:
        """The value of ``key`` in the base with ``extra`` on top."""
        return extra.get(key, self.variables.get(key))

    def envp(self, extra: Mapping[str, str]) -> tuple[array[int], Optional[_Block]]:
        """The NULL-terminated address array of the base plus ``extra``, and the block that
        holds ``extra``'s strings (keep both alive until the spawn returns)."""
        pointers = self._block.pointers[:]
        block = None
        if extra:
            block = _Block(_entries(extra))
            slot = self._slot
            for key, address in zip(extra, block.pointers):
                index = slot.get(key)
                if index is None:
                    pointers.append(address)
                else:
                    pointers[index] = address
        pointers.append(0)
        return pointers, block


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
        for name, argtypes in signatures.items():
            function = getattr(lib, name)  # AttributeError: not this libc
            function.argtypes, function.restype = argtypes, cint
            setattr(self, name, function)
        self._attrs: dict[tuple[int, ...], ctypes.Array[ctypes.c_char]] = {}
        self._argv: dict[tuple[str, ...], _Block] = {}

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

    def argv(self, argv: Sequence[str]) -> _Block:
        """``argv``'s block, reused for a command line seen before."""
        key = tuple(argv)
        block = self._argv.get(key)
        if block is None:
            if len(self._argv) >= _ARGV_CACHE:
                self._argv.clear()
            block = _Block([os.fsencode(a) for a in key])
            block.pointers.append(0)
            self._argv[key] = block
        return block

    def spawn(self, program: str, argv: Sequence[str], env: EncodedEnv,
              extra: Mapping[str, str], cwd: str, output_path: str,
              setsigdef: tuple[int, ...]) -> int:
        """Start the task (see :func:`spawn`); its pid, or the error number as OSError."""
        args = self.argv(argv)
        envp, keep = env.envp(extra)
        actions = ctypes.create_string_buffer(_OPAQUE_BYTES)
        self.posix_spawn_file_actions_init(actions)
        try:
            if (self.posix_spawn_file_actions_addopen(actions, 0, b"/dev/null", os.O_RDONLY, 0)
                    or self.posix_spawn_file_actions_addopen(
                        actions, 1, os.fsencode(output_path), _O_OUT, 0o666)
                    or self.posix_spawn_file_actions_adddup2(actions, 1, 2)
                    or self.posix_spawn_file_actions_addchdir_np(actions, os.fsencode(cwd))):
                raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
            pid = ctypes.c_int(0)
            err = self.posix_spawn(ctypes.byref(pid), os.fsencode(program), actions,
                                   self.attributes(setsigdef), args.pointers.buffer_info()[0],
                                   envp.buffer_info()[0])
        finally:
            self.posix_spawn_file_actions_destroy(actions)
        del keep
        if err:
            raise _failure(err, program, cwd, output_path)
        return pid.value


def _failure(err: int, program: str, cwd: str, output_path: str) -> OSError:
    """The OSError of a failed spawn, naming what failed: glibc returns the errno of the
    child's ``open``, ``chdir`` or ``exec`` without saying which (checked here, on the error
    path only: as ``Popen``, whose parent opens the output file and reports the child's
    ``chdir`` and ``exec`` separately)."""
    if not os.path.isdir(cwd) or not os.access(cwd, os.X_OK):
        return OSError(err, os.strerror(err), cwd)
    parent = os.path.dirname(os.path.abspath(output_path))
    if (os.path.isdir(output_path) or not os.path.isdir(parent)
            or not os.access(output_path if os.path.exists(output_path) else parent, os.W_OK)):
        return OSError(err, os.strerror(err), output_path)
    return OSError(err, os.strerror(err), program)


_loaded: list[Optional[_Libc]] = []
log = logging.getLogger(__name__)


def _libc() -> Optional[_Libc]:
    """glibc's functions, or None (logged once) where they are missing."""
    if not _loaded:
        lib: Optional[_Libc] = None
        why = "not glibc"
        try:
            c = ctypes.CDLL(None)
            if hasattr(c, "gnu_get_libc_version"):
                lib = _Libc(c)
        except (OSError, AttributeError) as exc:
            why = f"glibc < 2.29 ({exc})"
        if lib is None:
            log.warning(f"tasks are started with subprocess.Popen ({why}: no posix_spawn with a "
                        "working directory for the child); slower per task, same behaviour")
        _loaded.append(lib)
    return _loaded[0]


def method() -> str:
    """How tasks are started here (for log lines)."""
    return "posix_spawn (glibc, chdir in the child)" if _libc() is not None else "Popen"


def spawn(program: str, argv: Sequence[str], env: Union[EncodedEnv, Mapping[str, str]],
          cwd: str, output_path: str, setsigdef: tuple[int, ...],
          extra: Optional[Mapping[str, str]] = None) -> int:
    """Start ``program`` (a path: :func:`balsam.launcher.spawn.resolve`) with ``argv``, the
    environment ``env`` (plus ``extra`` on top) in ``cwd`` (which must exist), as a session
    leader, stdin from ``/dev/null``, stdout and stderr to ``output_path`` (truncated, created
    if missing), the ``setsigdef`` signals at their default; its pid. OSError if it cannot
    start. Descriptors the caller left inheritable are inherited (glibc path): see
    :func:`balsam.launcher.spawn.forbid_inheritance`."""
    lib = _libc()
    if lib is not None:
        encoded = env if isinstance(env, EncodedEnv) else EncodedEnv(env)
        return lib.spawn(program, argv, encoded, extra or {}, cwd, output_path, setsigdef)
    variables = env.variables if isinstance(env, EncodedEnv) else env
    return spawn_popen(program, argv, {**variables, **(extra or {})}, cwd, output_path,
                       setsigdef)


def spawn_popen(program: str, argv: Sequence[str], env: Mapping[str, str], cwd: str,
                output_path: str, setsigdef: tuple[int, ...]) -> int:
    """:func:`spawn` through ``subprocess.Popen`` (the fallback; tests run it everywhere).
    ``Popen`` resets SIGPIPE and SIGXFSZ or none (``restore_signals``): ``setsigdef`` is one
    of those two sets here."""
    _check_names(env)
    if any("\0" in v for v in env.values()):
        raise OSError(errno.EINVAL, "an environment variable with a NUL byte")
    with open(output_path, "wb") as out:
        proc = subprocess.Popen(list(argv), executable=program, env=dict(env), cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True,
                                restore_signals=bool(setsigdef))
    # The caller reaps it by pid (ReapedTask.poll). A Popen dropped with no return code is
    # kept by subprocess and waited for by the next Popen anywhere in the process: it could
    # steal the status of the task, or of a later process that got its pid.
    proc.returncode = 0
    return proc.pid
