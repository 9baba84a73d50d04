"""The shared-memory files of a serial ensemble that did not end by itself are removed.

MPICH (the mpich wheel, ch4) gives the ranks of one node a shared-memory segment: a file
``/dev/shm/mpich_shm_<random hex>_<n>`` (~1 MiB per local rank: 2.1 MB for the master and worker
1 of the first node), created and mapped in ``MPI_Init`` and unlinked by ``MPI_Finalize``. A rank
that is killed never finalizes, so every killed ensemble -- a lost rank, a stuck master or a
frozen worker (:mod:`balsam.launcher.ensemble_restart`), a forced kill at the end -- left its
file behind: in a container with a 64 MB ``/dev/shm`` a few dozen restarts filled it, and
later MPI start-ups failed.

The name carries no pid, and other files of that name belong to other users' and other launchers'
jobs (or to tasks that are MPI programs), some of them live. So the launcher learns which files
are its ensemble's while it runs: :class:`Segments` reads ``/proc/<pid>/maps`` of the ranks the
MPI launch started on this node (the grandchildren of ``mpiexec``: Hydra's local proxy starts
them; tasks are one level further down) until it has seen their segment (first after
:data:`FIRST_LOOK_SECONDS`, then at doubling intervals: one look of ~5-10 ms once MPI is up),
noting each file's device and inode, and once more when it forwards a stop to the ensemble: a
stop during the start-up (a launcher signalled within a second) killed ranks that had made
their file before the first look and before their watchdogs were given it (a worker rank's
imports after ``MPI_Init``: tens of milliseconds, seconds under load). After the ensemble
ended, however it ended, :meth:`Segments.remove` unlinks each of those files that still exists
as the same inode and belongs to this user (after a normal end ``MPI_Finalize`` has unlinked
it: one ``stat``). Unlinking a name does not disturb a rank still dying with the file mapped.

Only ranks that are this launcher's descendants are found that way: Hydra's ``fork``
bootstrap (the ``local`` profile, where containers run). On every node, whatever the bootstrap,
each worker rank also has a task watchdog (:mod:`balsam.launcher.watchdog`, a process of its
own on the rank's node), started before ``MPI_Init`` (Hydra's ``PMI_RANK`` names the rank), and
gives it the segments it maps, read once from ``/proc/self/maps`` right after ``MPI_Init``;
a watchdog whose rank died (its pipe closed without the rank's closing line) unlinks them the
same way, after it stopped the rank's tasks and wrote its report; if the rank died before
telling them (in ``MPI_Init`` or right after), it unlinks this user's segment files made while
the rank lived once no live process maps them (:func:`unlink_orphans`). After a normal end the
rank closed its watchdog first, and ``MPI_Finalize`` removes the file.

The same looks note the Hydra topology file each proxy holds open (``/tmp/hydra_hwloc_xmlfile_*``,
made in ``MPI_Init`` too, left by a killed ``mpiexec``: :mod:`balsam.platform.mpich_files`), and
:meth:`Segments.remove` removes it the same way.
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping

from balsam.platform.mpich_files import SHM_DIR as SHM_DIR  # (read here by tests and ranks)
from balsam.platform.mpich_files import held_files, mapped_anywhere, segments_made, unlink_same
from balsam.platform.mpich_files import mapped_segments as mapped_segments

TYPE_CHECKING = False  # (not typing's: it imports re, most of a watchdog's start; issue 16)
if TYPE_CHECKING:
    from typing import Callable, Optional

FIRST_LOOK_SECONDS = 0.5
"""MPI's start-up takes ~0.3-0.4 s on a quiet machine: no segment exists before."""
ORPHAN_WAIT_SECONDS = 30.0
"""How long a watchdog whose rank died before telling its segments waits for the other ranks
mapping a file made since the rank started (Hydra kills them once one rank died) to go."""
MAX_LOOK_SECONDS = 30.0
"""Longest interval between looks while none was found (an ensemble stuck in its start-up)."""


def children_by_parent() -> dict[int, list[int]]:
    """{parent pid: [child pids]} of every process this one can see (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    return children


class Segments:
    """The MPICH segment files of the ensemble whose MPI launch is ``launch_pid`` (see the
    module docstring): :meth:`look` while it runs, :meth:`remove` once it ended."""

    def __init__(self, launch_pid: int, now: Optional[float] = None) -> None:
        self.launch_pid = launch_pid
        self.found: dict[str, tuple[int, int]] = {}
        self.hydra: dict[str, tuple[int, int]] = {}
        """The proxies' Hydra topology files (:mod:`balsam.platform.mpich_files`)."""
        self.interval = FIRST_LOOK_SECONDS
        self.next_look = (time.monotonic() if now is None else now) + FIRST_LOOK_SECONDS

    def look(self, now: float, before_stop: bool = False) -> None:
        """Find the ranks' segment files if a look is due, or the launcher is about to stop the
        ensemble (``before_stop``: a rank stopped in its start-up, before the first look and
        before its watchdog knew the file, left it), and none was found yet."""
        if self.found or (now < self.next_look and not before_stop):
            return
        self.interval = min(2.0 * self.interval, MAX_LOOK_SECONDS)
        self.next_look = now + self.interval
        children = children_by_parent()
        proxies = children.get(self.launch_pid, [])
        self.found = mapped_segments([rank for proxy in proxies for rank in children.get(proxy, [])])
        self.hydra.update(held_files(proxies))  # made in MPI_Init too, before the segment

    def remove(self, log: Optional[Callable[[str], None]] = None) -> list[str]:
        """After the ensemble ended: unlink its segment files and its proxies' Hydra topology
        files still there (same inode, this user's); the paths removed (``log`` is told)."""
        removed = unlink_segments(self.found) + unlink_same(self.hydra)
        if removed and log is not None:
            log(f"removed the file(s) the ended ensemble left: {', '.join(removed)}")
        return removed


def unlink_segments(found: Mapping[str, tuple[int, int]]) -> list[str]:
    """Unlink each of ``found`` ({path: (device, inode)}) that is still that inode and this
    user's file; the paths removed (one gone already was unlinked by ``MPI_Finalize``)."""
    return unlink_same(found)


def unlink_orphans(since: float, until: float, wait: float, poll: float = 0.1,
                   directory: str = SHM_DIR) -> list[str]:
    """A worker rank died before it told its watchdog its segments (in ``MPI_Init`` or right
    after it): unlink this user's segment files made while it lived, from ``since`` (the epoch
    time before it initialised MPI) to ``until`` (when its watchdog saw it gone), once no live
    process maps them -- waiting up to ``wait`` seconds for
    the ranks still mapping one (Hydra kills them after one died) --; the paths removed. A file
    of another job made meanwhile is mapped by its live ranks (from its ``mmap`` right after
    its creation) and left alone (once the wait is over); one mapped by nobody is a leftover
    anyway. A node's file is made after every local rank entered ``MPI_Init`` (MPICH's PMI
    barrier comes first: measured, the master made it 0.09 s after a worker held back 2 s
    began its ``MPI_Init``), so one another rank made is in the window too."""
    found, removed = segments_made(since, until, directory), []
    deadline = time.monotonic() + wait
    while found:
        mapped = mapped_anywhere(found)
        removed += unlink_same({p: i for p, i in found.items() if p not in mapped})
        found = {p: i for p, i in found.items() if p in mapped}
        if not found or time.monotonic() >= deadline:
            break
        time.sleep(poll)
        poll = min(2 * poll, 1.0)
    return removed
