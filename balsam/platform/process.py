"""Small questions about processes on this host, stdlib only: is a pid alive (a zombie is not),
what ``/proc/<pid>/stat`` says after the command name, when a process started (to tell it from
a later one given the same pid), a pidfd to wait on a pid, and a wait for a child woken by it.

Zombies count as dead everywhere: one whose parent died may never be reaped where PID 1 does not
reap (some containers), and it holds nothing but its process-table slot.
"""
from __future__ import annotations

import os
import select
import time

TYPE_CHECKING = False  # (not typing's: it imports re, most of a watchdog's start; issue 16)
if TYPE_CHECKING:
    import subprocess
    from typing import Any, Optional

DEAD_STATES = (b"Z", b"X")
"""``/proc/<pid>/stat`` states of a process that has ended: zombie, dead (proc(5))."""


def stat_fields(pid: int | str) -> Optional[list[bytes]]:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, ...), or
    None if there is no such process (or no ``/proc``). The command name may hold spaces and
    parentheses, so the split is after the last ``)``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()
    except OSError:
        return None


START_TIME_FIELD = 19
"""Index in :func:`stat_fields` of the start time (field 22 of ``/proc/<pid>/stat``: clock ticks
after boot). With the pid it names one process: a pid is reused, a (pid, start time) is not."""


def start_time(pid: int) -> Optional[int]:
    """When process ``pid`` started (clock ticks after boot; a zombie has one), or None if there
    is no such process (or no ``/proc``)."""
    fields = stat_fields(pid) if pid > 0 else None
    if fields is None or len(fields) <= START_TIME_FIELD:
        return None
    return int(fields[START_TIME_FIELD])


def boot_ticks() -> int:
    """Now, in :func:`start_time`'s clock and unit (``CLOCK_BOOTTIME`` in clock ticks, as the
    kernel writes field 22: ``nsec_to_clock_t`` of the boot-time start, rounded down): every
    process started before this call has a start time no later than what it returns. A
    vDSO clock read (~0.1 us), where a ``/proc/<pid>/stat`` read of a child that has just
    exec'd costs 13-50 us of CPU."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // (1_000_000_000
                                                          // os.sysconf("SC_CLK_TCK"))


def is_dead_state(fields: list[bytes]) -> bool:
    """True if :func:`stat_fields` output describes a zombie or dead process."""
    return not fields or fields[0] in DEAD_STATES


def process_alive(pid: int) -> bool:
    """True if ``pid`` is a live process on this host (a zombie is dead; pid <= 0 is never a
    process: ``os.kill(0, 0)`` would ask about our own group). Without ``/proc``, asks the kernel."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return not is_dead_state(fields)


def pidfd_open(pid: int) -> Optional[int]:
    """A pidfd for ``pid`` (readable once it exits), or None where Linux or Python lack them or
    the process is already gone."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return int(opener(pid))
    except OSError:
        return None


def drain_fd(fd: int) -> None:
    """Read everything waiting on the non-blocking ``fd`` (a signal wakeup pipe)."""
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, OSError):
        pass


def wait_child(proc: subprocess.Popen[Any], timeout: float) -> Optional[int]:
    """``proc``'s exit status if it exits within ``timeout`` seconds, else None (it runs on).
    Woken by its pidfd as it exits: ``Popen.wait(timeout)`` polls with naps doubling up to
    50 ms, which added 10-30 ms to every launcher's exit (benchmarks/README.md, session 16)."""
    fd = pidfd_open(proc.pid) if proc.returncode is None else None
    if fd is None:  # already reaped, or no pidfds here
        import subprocess  # (not at import: the watchdog processes import this module, never this)

        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    return proc.poll()
