"""Writing whole lines to a pipe that another writer shares: each ``write`` at most
``PIPE_BUF`` bytes and ending at a line's end, so that it is atomic (POSIX: a pipe write of at
most ``PIPE_BUF`` bytes is never interleaved with other writers' data, and, non-blocking, is
made whole or not at all). The task watchdog's pipe has two writers in a serial worker rank:
the loop (:class:`balsam.launcher.watchdog.Watchdog`, through an :class:`Outbox`) and the native
spawning threads, which write a chained start's ``?JOBID`` line just before they make it
(:mod:`balsam.launcher.serial_starts`): a short line that must never land inside one of the
loop's.

An :class:`Outbox` in *bounded* mode (a worker rank's: :meth:`Outbox.never_wait`) never waits
for the reader: what a full pipe refuses is kept (:attr:`Outbox.held`) and written, in order,
before anything else the next time; a caller that must not go on unless its lines went in
(a task's ``?JOBID`` before its start) passes ``keep=False`` and learns how much went in.
"""
from __future__ import annotations

import os
import select
import time
from typing import Callable, Optional

PIPE_BUF = getattr(select, "PIPE_BUF", 4096)
STUCK_SECONDS = 1.0
"""A bounded outbox whose pipe has refused lines this long says so once (its reader, the task
watchdog, reads every 20 ms: a pipe full that long means it is stopped or stuck)."""


def write_lines(fd: int, data: bytes) -> int:
    """Write ``data`` (newline-terminated lines) to ``fd`` in writes of at most ``PIPE_BUF``
    bytes that end at a line's end (a single line longer than that is written as it comes).
    Returns the bytes written: all of them, or, on a non-blocking ``fd`` whose pipe is full,
    the whole lines written before it was (never part of a line of at most ``PIPE_BUF``
    bytes); other OSErrors as ``os.write``."""
    view = memoryview(data)
    while view:
        size = len(view)
        if size > PIPE_BUF:
            size = bytes(view[:PIPE_BUF]).rfind(b"\n") + 1 or PIPE_BUF
        try:
            view = view[os.write(fd, view[:size]):]
        except BlockingIOError:
            break
    return len(data) - len(view)


class Outbox:
    """The lines one process writes to a pipe (``fd``, owned: closed when the reader is found
    gone, after one line to ``log`` -- ``why`` says what that means --, or by :meth:`close`)."""

    def __init__(self, fd: int, log: Optional[Callable[[str], None]], why: str) -> None:
        self.fd = fd
        self.log = log
        self._why = why
        self.bounded = False
        self.held = b""  # refused by a full pipe (bounded), written first next time
        self.deferred: list[bytes] = []  # to go with the next write (ahead of its lines)
        self._full_since: Optional[float] = None
        self._said = False

    def never_wait(self) -> None:
        """From now on no write waits for the reader (the descriptor is made non-blocking)."""
        os.set_blocking(self.fd, False)
        self.bounded = True

    @property
    def refusing(self) -> bool:
        """Whether the pipe refused the last write (bounded: it was full)."""
        return self._full_since is not None

    def ready(self) -> bool:
        """Whether every line so far is in the pipe and it has room for more (a page at least:
        ``poll``), writing what is held first; always True unless bounded."""
        if not self.bounded or self.fd < 0:
            return True
        if self.held:
            self.send(b"")
        if self.held or self.fd < 0:
            return self.fd < 0
        if self._full_since is not None:
            poller = select.poll()  # (a select() would refuse a descriptor above 1023)
            poller.register(self.fd, select.POLLOUT)
            if not poller.poll(0):
                self._watch(True)
                return False
            self._watch(False)
        return True

    def send(self, lines: bytes, keep: bool = True) -> int:
        """Write the held and deferred lines, then ``lines``. Returns the bytes of ``lines``
        written now (whole lines: a prefix). Bounded, the rest is held (``keep``) or dropped:
        never written later. -1 if the reader is gone (nothing written, ever again)."""
        if self.fd < 0:
            return -1
        data = self.held + b"".join(self.deferred) + lines
        self.deferred = []
        try:
            written = write_lines(self.fd, data)
        except OSError as exc:  # the reader died (EPIPE): nothing is covered any more
            self.close()
            self.held = b""
            if self.log is not None:
                self.log(f"the task watchdog exited ({exc}): {self._why}")
            return -1
        left = len(data) - written
        ours = len(lines) - min(left, len(lines))
        self.held = data[written:] if keep else data[written:len(data) - len(lines) + ours]
        self._watch(bool(left))
        return ours

    def _watch(self, refused: bool) -> None:
        """Say once that the reader has read nothing for :data:`STUCK_SECONDS`, and once
        that it reads again."""
        if not refused:
            if self._said and not self.held and self.log is not None:
                self.log("the task watchdog reads again: tasks start again")
            self._full_since, self._said = None, False
            return
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
        elif not self._said and now - self._full_since >= STUCK_SECONDS:
            self._said = True
            if self.log is not None:
                self.log(f"the task watchdog has read nothing for {STUCK_SECONDS:g} s (its "
                         "pipe is full: stopped or stuck): no task starts until it reads")

    def close(self) -> None:
        """Close the descriptor (what is held is dropped)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
