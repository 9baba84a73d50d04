"""The task watchdog's line protocol: what its owner writes down the pipe and what the watchdog
process (:mod:`balsam.launcher.watchdog`) makes of it. Moved out of that module (its size).

One line each (the owner batches many into one ``write``):

=====================  ====================================================================
``?JOBID``             a task of JOBID is about to start (found by its ``BALSAM_JOB_ID``
                       if the owner dies before its ``+`` line)
``^JOBID``             one ``?JOBID`` undone: that start was dropped after all
``+PGID:BY [JOBID]``   a task (of JOBID) started, leading process group PGID; BY: a time no
                       earlier than its leader's start (:func:`group_line`)
``~PGID:BY JOBID``     a request of JOBID queued in the warm process leading PGID
``-PGID``              the owner reaped PGID's leader (and stopped the group if need be)
``#JOBID``             a commit ended JOBID's hold: the report need not list it
``=``                  every start so far is recorded: the report need not list them
``!DEV INO PATH``      an MPI shared-memory file the owner maps; a bare ``!`` ends them
``.``                  the owner closes (end of file follows; its segments are its own)
=====================  ====================================================================

*What names a group's leader comes from the owner* (session 21): BY is the owner's clock
(:func:`~balsam.platform.process.boot_ticks`, the unit and clock of the kernel's process start
times) read after the start and before the owner could reap the leader, its child. Until that
reap the pid names the leader, so a process holding the pid that started no later than BY is
the leader, and one started later is another: the group ended
(:func:`balsam.launcher.group_stop.confirm_starts`, at the end). However late the watchdog
reads the line, that holds. Before, the watchdog read the leader's start time from ``/proc``
when it read the line: read late -- the watchdog stopped or starved while the owner reaped the
task -- it found no leader (the group id was then signalled unchecked at the end) or the start
time of an unrelated process that took the pid meanwhile (stopped as if it were the task),
whenever the owner then died before its ``-PGID`` line. (A bound, not the start time itself:
the owner reads a clock, ~0.5 us, where a ``/proc/<pid>/stat`` read of a child that has just
exec'd costs 13-50 us of CPU in the serial worker's loop; two processes given the same pid
within one clock tick, 10 ms, would need the pids to wrap within it.)

*A line without* ``:BY`` *is still read* (the old format): the watchdog runs the package
directory its owner imported (``watchdog._BOOT``), but a launcher running while that tree was
updated (``git pull`` on an editable install) writes its old lines to a new watchdog; the
reverse cannot happen (the watchdog starts after its owner imported this module). Such a group's
leader start time is read with its line, as before, and a group whose leader is already gone
then is never signalled (the owner reaped it, so stopping its group was the owner's business;
its id proves nothing any more). Only a line read late *and* a pid taken by another process in
between (no ``-`` line following) is still mistaken, as before, in that mixed case alone.
"""
from __future__ import annotations

import os
from collections import Counter

from balsam.platform.process import start_time

TYPE_CHECKING = False  # (not typing's: it imports re, most of a watchdog's start; issue 16)
if TYPE_CHECKING:
    from typing import Optional


def group_line(kind: str, pgid: int, job: str, by: int) -> str:
    """The ``+`` (``kind``) or ``~`` line of a group ``pgid`` (of ``job``, "" if none) whose
    leader started no later than ``by`` (:func:`~balsam.platform.process.boot_ticks`, read
    before the leader, the caller's child, could be reaped)."""
    return f"{kind}{pgid}:{by} {job}\n"


class Heard:
    """What the watchdog has read so far (:meth:`feed`): the groups still registered (pgid ->
    job id, "" if none), the bounds of their leaders' start times (``bounds``; ``starts``: the
    start times read for old lines), the starts to report, the owner's shared-memory files
    (None: it told none) and whether it said it closes."""

    def __init__(self) -> None:
        self.groups: dict[int, str] = {}
        self.bounds: dict[int, int] = {}
        self.starts: dict[int, Optional[int]] = {}
        self.segments: Optional[dict[str, tuple[int, int]]] = None
        self.closing = False
        self.started: Counter[str] = Counter()
        self.expected: Counter[str] = Counter()
        self.queued: Counter[str] = Counter()

    def feed(self, lines: list[bytes]) -> None:
        """Take in whole ``lines`` (without their newlines)."""
        unknown = []
        for line in lines:
            kind = line[:1]
            if kind == b"+" or kind == b"~":
                pgid = self._register(kind, line[1:].decode())
                if pgid not in self.bounds:
                    unknown.append(pgid)
            elif kind == b"-":
                self.groups.pop(int(line[1:]), None)
                self.bounds.pop(int(line[1:]), None)
                self.starts.pop(int(line[1:]), None)
            elif kind == b"!":
                self._segment(line)
            elif line == b".":
                self.closing = True
            else:
                self._count(kind, line[1:].decode())
        for leader in unknown:  # (old lines: one /proc read per task still running)
            if leader in self.groups and leader not in self.bounds and leader not in self.starts:
                self._read_start(leader)

    def _read_start(self, pgid: int) -> None:
        """An old line: the leader's start time is read now. A leader already gone was reaped
        by the owner (its child), so that group is never signalled (module docstring); without
        ``/proc`` there is nothing to check (it is signalled by its id)."""
        found = start_time(pgid)
        if found is None and proc_mounted():
            del self.groups[pgid]
        else:
            self.starts[pgid] = found

    def _register(self, kind: bytes, rest: str) -> int:
        head, _, job = rest.partition(" ")
        pgid, colon, by = head.partition(":")
        self.groups[int(pgid)] = job
        self.starts.pop(int(pgid), None)
        if colon:
            self.bounds[int(pgid)] = int(by)
        else:  # an old line: its start time is read after the batch
            self.bounds.pop(int(pgid), None)
        if kind == b"~":
            self.queued[job] += 1
        elif job:
            self.started[job] += 1
            self.expected[job] -= 1
        return int(pgid)

    def _count(self, kind: bytes, job: str) -> None:
        if kind == b"?":
            self.expected[job] += 1
        elif kind == b"^":  # an expected start dropped after all (_spawner_bounds.h)
            self.expected[job] -= 1
        elif kind == b"#":  # recorded: forget it (the launcher's commit ended it)
            self.started.pop(job, None)
            self.expected.pop(job, None)
        elif kind == b"=":
            self.started.clear()
            self.expected.clear()
            self.queued.clear()

    def _segment(self, line: bytes) -> None:
        self.segments = {} if self.segments is None else self.segments
        if line != b"!":
            dev, ino, path = line[1:].decode().split(" ", 2)
            self.segments[path] = (int(dev), int(ino))


def proc_mounted() -> bool:
    """Whether this host has ``/proc`` (start times can be read at all)."""
    return os.path.isdir("/proc/self")
