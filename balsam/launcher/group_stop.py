"""How the task watchdog (:mod:`balsam.launcher.watchdog`) stops the process groups its owner
left: SIGTERM, a grace, SIGKILL, a wait until no live member is left; and how it finds the
group of a task whose starter died before registering it (its ``BALSAM_JOB_ID``). Moved out of
:mod:`balsam.launcher.watchdog` (its size)."""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Mapping

from balsam.platform.procgroup import live_members, signal_group

TYPE_CHECKING = False  # (not typing's: it imports re, most of a watchdog's start; issue 16)
if TYPE_CHECKING:
    from typing import Optional

GONE_WAIT_SECONDS = 5.0
"""After SIGKILL, how long the watchdog waits for a group's last live member to go."""


def kill_groups(groups: Iterable[int], grace: float, poll: float = 0.05,
                starts: Optional[Mapping[int, Optional[int]]] = None) -> list[int]:
    """SIGTERM every process group in ``groups``, SIGKILL those still alive after ``grace``
    seconds; returns the groups that existed. ``starts`` gives leaders' start times: a group
    whose id names a process started at another time is left alone (its id was reused)."""
    starts = starts or {}
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
                starts: Optional[Mapping[int, Optional[int]]] = None) -> list[int]:
    """The groups that still have a live (non-zombie) member after up to ``timeout`` s."""
    starts = starts or {}
    left = list(groups)
    deadline = time.monotonic() + timeout
    while True:
        left = [g for g in left if live_members(g, starts.get(g))]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(poll)


def groups_of_job(job_id: str) -> list[int]:
    """Process groups of this user's processes whose environment has ``BALSAM_JOB_ID=job_id``
    (a task whose starter died before it could register it)."""
    needle = f"BALSAM_JOB_ID={job_id}".encode()
    found = set()
    for name in os.listdir("/proc") if os.path.isdir("/proc/self") else ():
        if name.isdigit():
            try:
                with open(f"/proc/{name}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        found.add(os.getpgid(int(name)))
            except OSError:
                continue
    return sorted(found)
