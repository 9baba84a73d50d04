"""How the task watchdog (:mod:`balsam.launcher.watchdog`) stops the process groups its owner
left: SIGTERM, a grace, SIGKILL, a wait until no live member is left; and how it finds the
group of a task whose starter died before registering it (its ``BALSAM_JOB_ID``). Moved out of
:mod:`balsam.launcher.watchdog` (its size)."""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Mapping

from balsam.platform.process import START_TIME_FIELD, is_dead_state, start_time, stat_fields
from balsam.platform.procgroup import live_members, signal_group

TYPE_CHECKING = False  # (not typing's: it imports re, most of a watchdog's start; issue 16)
if TYPE_CHECKING:
    from typing import Optional

GONE_WAIT_SECONDS = 5.0
"""After SIGKILL, how long the watchdog waits for a group's last live member to go."""


LEADER_GONE = -1
"""A group's leader start time meaning "no process held its id when the group was seen alive":
any process holding it later is another one (:func:`balsam.platform.procgroup.reused`), and
the group is signalled only while no process has its id (its leader's leftovers)."""


def confirm_starts(bounds: Mapping[int, Optional[int]]) -> dict[int, Optional[int]]:
    """The leaders' start times of the groups in ``bounds`` (pgid -> a
    :func:`~balsam.platform.process.boot_ticks` read after the leader started and before its
    starter could reap it, or None: unknown), for :func:`kill_groups`: a process holding the id
    that started no later than its bound is the leader (it held the pid then, unreaped: any
    other took it after), one started later means the group ended (left out), none means the
    leader is gone (:data:`LEADER_GONE`: its leftovers only). A None bound stays None."""
    found: dict[int, Optional[int]] = {}
    for pgid, bound in bounds.items():
        now = start_time(pgid) if bound is not None else None
        if bound is None or now is None:
            found[pgid] = None if bound is None else LEADER_GONE
        elif now <= bound:
            found[pgid] = now
    return found


def kill_groups(groups: Iterable[int], grace: float, poll: float = 0.05, *,
                starts: Mapping[int, Optional[int]]) -> list[int]:
    """SIGTERM every process group in ``groups``, SIGKILL those still alive after ``grace``
    seconds; returns the groups that existed. ``starts`` gives leaders' start times, read while
    the leader was known to lead that group: a group whose id names a process started at
    another time is left alone (its id was reused). A group missing from ``starts`` (or None)
    is signalled by its id alone: only where start times cannot be read (no ``/proc``)."""
    alive = [pgid for pgid in groups if signal_group(pgid, signal.SIGTERM, starts.get(pgid))]
    existed = list(alive)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(poll)
        alive = [g for g in alive if live_members(g, starts.get(g))]
    for pgid in alive:
        signal_group(pgid, signal.SIGKILL, starts.get(pgid))
    return existed


def still_alive(groups: Iterable[int], timeout: float = GONE_WAIT_SECONDS, poll: float = 0.05,
                *, starts: Mapping[int, Optional[int]]) -> list[int]:
    """The groups that still have a live (non-zombie) member after up to ``timeout`` s (a group
    whose id names a process other than the leader ``starts`` gives has none)."""
    left = list(groups)
    deadline = time.monotonic() + timeout
    while True:
        left = [g for g in left if live_members(g, starts.get(g))]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(poll)


def groups_of_job(job_id: str) -> dict[int, int]:
    """Process groups of this user's processes whose environment has ``BALSAM_JOB_ID=job_id``
    (a task whose starter died before it could register it): pgid -> its leader's start time,
    or :data:`LEADER_GONE`. A process counts only if ``/proc/<pid>/stat`` names the same
    process (start time) and group before and after its environment is read, and the leader's
    start time is read in between: the group existed all along, so its id named its leader
    (or nobody), not a process that took a pid freed meanwhile."""
    needle = f"BALSAM_JOB_ID={job_id}".encode()
    found: dict[int, int] = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc/self") else ():
        if not name.isdigit():
            continue
        before = _start_and_group(name)
        try:
            if before is None or needle not in _environ(name).split(b"\0"):
                continue
        except OSError:
            continue
        pgid = before[1]
        leader = start_time(pgid) if pgid not in found else found[pgid]
        if _start_and_group(name) == before:
            found[pgid] = LEADER_GONE if leader is None else leader
    return found


ENVIRON_SETTLE_SECONDS = 0.05
"""How long an empty ``/proc/<pid>/environ`` is read again: a process in the middle of its
``exec`` (its new image's environment not laid out yet; seen in 84 of 400 reads right after
``subprocess.Popen`` returned) shows none, as do kernel threads and zombies (not read again)."""
PF_KTHREAD = 0x00200000


def _environ(pid: str) -> bytes:
    """``pid``'s environment block, read again (bounded) while an ``exec`` may be laying it out."""
    end = time.monotonic() + ENVIRON_SETTLE_SECONDS
    while True:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            data = fh.read()
        if data or time.monotonic() >= end:
            return data
        fields = stat_fields(pid)  # after the command name: state, ppid, pgrp, ..., flags
        if fields is None or is_dead_state(fields) or int(fields[6]) & PF_KTHREAD:
            return data
        time.sleep(0.001)


def _start_and_group(pid: str) -> Optional[tuple[int, int]]:
    fields = stat_fields(pid)  # after the command name: state, ppid, pgrp (proc(5))
    if fields is None or len(fields) <= START_TIME_FIELD:
        return None
    return int(fields[START_TIME_FIELD]), int(fields[2])
