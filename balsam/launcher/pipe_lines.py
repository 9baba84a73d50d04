"""Writing whole lines to a pipe that another writer shares: each ``write`` at most
``PIPE_BUF`` bytes and ending at a line's end, so that it is atomic (POSIX: a pipe write of at
most ``PIPE_BUF`` bytes is never interleaved with other writers' data). The task watchdog's
pipe has two writers in a serial worker rank: the loop (:class:`balsam.launcher.watchdog.Watchdog`)
and the native spawning threads, which write a chained start's ``?JOBID`` line just before
they make it (:mod:`balsam.launcher.serial_starts`): a short line that must never land inside
one of the loop's."""
from __future__ import annotations

import os
import select

PIPE_BUF = getattr(select, "PIPE_BUF", 4096)


def write_lines(fd: int, data: bytes) -> None:
    """Write ``data`` (newline-terminated lines) to ``fd`` in writes of at most ``PIPE_BUF``
    bytes that end at a line's end (a single line longer than that is written as it comes);
    OSError as ``os.write``."""
    view = memoryview(data)
    while view:
        size = len(view)
        if size > PIPE_BUF:
            size = bytes(view[:PIPE_BUF]).rfind(b"\n") + 1 or PIPE_BUF
        view = view[os.write(fd, view[:size]):]
