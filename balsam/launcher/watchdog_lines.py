"""The task watchdog's line protocol: what its owner writes down the pipe and what the watchdog
process (:mod:`balsam.launcher.watchdog`) makes of it. Moved out of that module (its size).

One line each (the owner batches many into one ``write``):

=====================  ====================================================================
``?JOBID``             a task of JOBID is about to start (found by its ``BALSAM_JOB_ID``
                       if the owner dies before its ``+`` line)
``^JOBID``             one ``?JOBID`` undone: that start was dropped after all
``+PGID [JOBID]``      a task (of JOBID) started, leading process group PGID
``~PGID JOBID``        a request of JOBID queued in the warm process leading PGID
``-PGID``              the owner reaped PGID's leader (and stopped the group if need be)
``#JOBID``             a commit ended JOBID's hold: the report need not list it
``=``                  every start so far is recorded: the report need not list them
``!DEV INO PATH``      an MPI shared-memory file the owner maps; a bare ``!`` ends them
``.``                  the owner closes (end of file follows; its segments are its own)
=====================  ====================================================================
"""
from __future__ import annotations

from collections import Counter

from balsam.platform.process import start_time

TYPE_CHECKING = False  # (not typing's: it imports re, most of a watchdog's start; issue 16)
if TYPE_CHECKING:
    from typing import Optional


class Heard:
    """What the watchdog has read so far (:meth:`feed`): the groups still registered (pgid ->
    job id, "" if none), their leaders' start times, the starts to report, the owner's
    shared-memory files (None: it told none) and whether it said it closes."""

    def __init__(self) -> None:
        self.groups: dict[int, str] = {}
        self.starts: dict[int, Optional[int]] = {}
        self.segments: Optional[dict[str, tuple[int, int]]] = None
        self.closing = False
        self.started: Counter[str] = Counter()
        self.expected: Counter[str] = Counter()
        self.queued: Counter[str] = Counter()

    def feed(self, lines: list[bytes]) -> None:
        """Take in whole ``lines`` (without their newlines). A group's leader start time is
        read when its line is (the leader is the owner's child, not reaped before its ``-``
        line), so that a group id reused after the group ended is not signalled at the end."""
        added = []
        for line in lines:
            kind = line[:1]
            if kind == b"+" or kind == b"~":
                added.append(self._register(kind, line[1:].decode()))
            elif kind == b"-":
                self.groups.pop(int(line[1:]), None)
                self.starts.pop(int(line[1:]), None)
            elif kind == b"!":
                self._segment(line)
            elif line == b".":
                self.closing = True
            else:
                self._count(kind, line[1:].decode())
        for leader in added:  # (one /proc read per task still running after the batch)
            if leader in self.groups and leader not in self.starts:
                self.starts[leader] = start_time(leader)

    def _register(self, kind: bytes, rest: str) -> int:
        pgid, _, job = rest.partition(" ")
        self.groups[int(pgid)] = job
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
