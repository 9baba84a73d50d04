"""Process groups: signal one, and find its live members (stdlib only).

Balsam runs every task, script, transfer and local batch job in its own session, so a stop
reaches everything it started; these two functions are the one place that signals such a
group and asks whether anything of it is left.

A group's id is its leader's pid, free for another process once the leader was reaped and the
group has no member left: pid numbers wrap within minutes when thousands of processes start.
Whoever keeps a group id longer than its own unreaped child lives passes the leader's
:func:`~balsam.platform.process.start_time`, taken while the leader was known alive, as
``leader_start``: a group whose id now names a process started at another time is not signalled
and has no members (see :func:`reused`).
"""
from __future__ import annotations

import os
import signal
import time

from balsam.platform import mpich_files
from balsam.platform.process import START_TIME_FIELD, is_dead_state, start_time, stat_fields

TYPE_CHECKING = False  # (not typing's: it imports re, most of a watchdog's start; issue 16)
if TYPE_CHECKING:
    import subprocess
    from typing import Any, Callable, Optional


def reused(pgid: int, leader_start: Optional[int]) -> bool:
    """True if ``pgid`` no longer names the group led by the process that started at
    ``leader_start``: a process with that pid exists (alive or a zombie) but started at another
    time. The id stays reserved while the old group has a member or an unreaped leader, so a new
    process holding it means that group ended. False when unknown: ``leader_start`` None, no
    ``/proc``, or the leader gone while the group lives on (its leftovers)."""
    if leader_start is None:
        return False
    now = start_time(pgid)
    return now is not None and now != leader_start


def signal_group(pgid: int, sig: int, leader_start: Optional[int] = None) -> bool:
    """Send ``sig`` to process group ``pgid``; False if the group is gone (or not ours, or
    :func:`reused`: nothing is sent). Before a SIGKILL, the MPICH Hydra topology files the
    group's processes hold are noted, and after it those still there are removed (a killed
    ``mpiexec`` leaves its proxy's: :mod:`balsam.platform.mpich_files`)."""
    if reused(pgid, leader_start):
        return False
    held = mpich_files.held_by_group(pgid) if sig == signal.SIGKILL else {}
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
    finally:
        mpich_files.unlink_same(held)


SCAN_ROUNDS = 5
"""Most looks through ``/proc`` :func:`live_members` takes before it calls a group whose members
keep being replaced alive (a relay of forks that never settles is not an ended group)."""


def live_members(pgid: int, leader_start: Optional[int] = None) -> list[int]:
    """Pids of the group's processes that are not zombies. A zombie is harmless, and one whose
    parent died may never be reaped where PID 1 does not reap (some containers). Without
    ``/proc`` a group that still exists is reported as ``[pgid]``; none if :func:`reused`.

    A look through ``/proc`` is not atomic: a member that forks and exits while it runs (a
    script leaving a process in the background, a daemon's double fork) hands the group to a
    child the listing predates. So "no live member" is believed only from a second look that
    found no member the look before it had not already seen (nor a process listed since that
    vanished before its read): every member it lists was already dead at the earlier look."""
    if reused(pgid, leader_start):
        return []
    if not os.path.isdir("/proc/self"):
        return [] if _group_gone(pgid) else [pgid]
    previous: Optional[_Look] = None
    for _ in range(SCAN_ROUNDS):
        if _group_gone(pgid):
            return []
        look = _Look(pgid)
        if look.live:
            return look.live
        if previous is not None and look.members <= previous.members \
                and look.vanished <= previous.listed:
            return []
        previous = look
    return [pgid]


def _group_gone(pgid: int) -> bool:
    """True when no process (not even a zombie) is left in group ``pgid`` (the kernel's word)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False


class _Look:
    """One pass through ``/proc`` for group ``pgid``: its live members, every member seen as
    (pid, start time), the pids listed, and those listed that vanished before their read."""

    def __init__(self, pgid: int) -> None:
        self.live: list[int] = []
        self.members: set[tuple[int, int]] = set()
        self.listed: set[int] = set()
        self.vanished: set[int] = set()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            self.listed.add(pid)
            fields = stat_fields(pid)
            # After the command name: state, ppid, pgrp, ..., start time (proc(5)).
            if fields is None or len(fields) <= START_TIME_FIELD:
                self.vanished.add(pid)
            elif int(fields[2]) == pgid:
                self.members.add((pid, int(fields[START_TIME_FIELD])))
                if not is_dead_state(fields):
                    self.live.append(pid)


def kill_and_reap(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """SIGKILL the process group ``proc`` leads and reap ``proc``, reading what is left of its
    pipes; if a process that escaped the group still holds them after ``timeout`` seconds, close
    our ends and just wait for ``proc``."""
    import subprocess  # (the watchdog processes import this module, never this function)

    signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()


def wait_bounded(ended: Callable[[float], bool], deadline: float, poll_seconds: float,
                 should_abort: Optional[Callable[[], bool]]) -> tuple[bool, bool]:
    """Call ``ended(seconds)`` (wait up to that long; True once the thing waited for ended)
    until it says so, ``deadline`` (monotonic) passes or ``should_abort()`` says stop (asked
    every ``poll_seconds``): (timed_out, aborted), both False when it ended."""
    while True:
        remaining = deadline - time.monotonic()
        if ended(max(0.0, min(remaining, poll_seconds) if should_abort else remaining)):
            return False, False
        if time.monotonic() >= deadline:
            return True, False
        if should_abort is not None and should_abort():
            return False, True
