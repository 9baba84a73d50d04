"""What a dead MPI-mode launcher launched: its watchdog's report, read when its session is swept.

MPI mode records RUNNING *before* a launch, some jobs ahead of a free node
(:mod:`balsam.launcher.mpi_mode`), and does not record the launch itself (that would cost the
commit ready-ahead saves). So when its launcher dies, a job it shows RUNNING may never have had
a process: recorded RUNNING ahead and still waiting for a node, recorded RUNNING right before a
launch that never came, or killed by a user before its launch with the launcher gone before it
could mark the kill's event (:func:`balsam.core.killed_starts.record_unlaunched`, a kill check
later). Before, the sweep counted every such visit as a run (RUN_TIMEOUT using up a retry, a
run, a runtime and a busy node in the analytics, one more ``BALSAM_JOB_ATTEMPT``).

The launcher's watchdog (:class:`balsam.launcher.watchdog.Watchdog`, a process of its own that
outlives the launcher) knows: the launcher tells it each job id before it launches the job's
process (``?JOBID``, then ``+PGID JOBID``) and, once a commit has ended a job's hold (its end
or release recorded), that it may forget it (``#JOBID``). When the launcher's end of its pipe
closes, however it died, the watchdog stops the tasks left and replaces the report file
(:func:`report_path`, written "running" before any launch) with "stopped" (or "alive": a group
outlived SIGKILL) and ``started``: every job launched -- or about to be -- whose hold no commit
ended, and the launcher's host and pid. The sweep (:func:`balsam.core.leases.sweep`, given
the database directory) reads it if they are the session's (:func:`launched`) and, before
closing the session, :func:`settle` records its held jobs that are not in it as no run:
RUNNING ones RUN_TIMEOUT "... (before its start: it did not run)" (no retry used, no run
counted: :data:`balsam.core.retries.NO_RUN_SQL`), killed ones' visits marked as
:func:`~balsam.core.killed_starts.record_unlaunched` does. A job in ``started`` -- also one
whose launch may not have come, as its id goes to the watchdog first -- is swept as before.

Decided only when the report is final: a report still "running" (the watchdog has not finished
stopping the tasks, or died with its node: node loss), unreadable or missing (a serial-mode
session, a launcher that ended cleanly) leaves every visit counted as a run, as before -- a run
that did not happen may be counted, never a run that did happen left out.
"""
from __future__ import annotations

import os
import zlib
from collections.abc import Collection
from typing import Optional

from balsam.core import killed_starts, lifecycle, schema, serial_reports
from balsam.core.bounded_io import Late, within
from balsam.core.retries import NOT_STARTED_SUFFIX
from balsam.core.states import State
from balsam.db.dbapi import Cursor

FINAL_STATES = ("stopped", "alive")
"""A report in one of these states is the watchdog's last word (see the module docstring)."""


def report_path(db_path: str, session_id: int) -> str:
    """Where the watchdog of MPI-mode session ``session_id`` reports (the log directory, which
    several databases may share: the name carries a tag of the database's real path, so that a
    sweep never reads or removes another database's session of that id)."""
    tag = zlib.crc32(os.path.realpath(db_path).encode())
    return os.path.join(db_path, "log", f"session_{session_id}.{tag:08x}.launched.json")


def launched(db_path: str, session_id: int, host: str, pid: int) -> Optional[frozenset[str]]:
    """The job ids session ``session_id``'s launcher (process ``pid`` on ``host``, as its
    session row says: a report left by an earlier database's session of that id is not its)
    launched (or was about to) and did not see recorded, from its watchdog's final report;
    None if not known (see the module docstring)."""
    path = report_path(db_path, session_id)
    try:  # (a regular file only, read within a bound: a FIFO, a hung mount must not hang it)
        report = within(serial_reports.MAX_SECONDS, lambda: serial_reports.read_report(path))
    except (OSError, ValueError, Late):
        return None
    if not isinstance(report, dict) or (report.get("host"), report.get("owner")) != (
            host, str(pid)):
        return None
    started = report.get("started")
    if report.get("state") not in FINAL_STATES or not isinstance(started, list):
        return None
    return frozenset(str(j) for j in started)


def discard(db_path: str, session_id: int) -> None:
    """Remove the report of ``session_id`` (used, or not needed: its launcher ended cleanly)."""
    path = report_path(db_path, session_id)
    try:  # (bounded: a hung mount must not hang the sweeper after its commit)
        within(serial_reports.MAX_SECONDS, lambda: os.unlink(path))
    except (OSError, Late):
        pass


def settle(cursor: Cursor, session_id: int, launched_ids: Collection[str], reason: str
           ) -> tuple[list[str], list[str]]:
    """Before dead session ``session_id`` is closed (``reason``: why): record the jobs it holds
    that its launcher never launched (not in ``launched_ids``, :func:`launched`) as no run --
    RUNNING ones RUN_TIMEOUT with :data:`~balsam.core.retries.NOT_STARTED_SUFFIX`, killed ones'
    RUNNING visits marked by :func:`killed_starts.record_unlaunched`. Returns (ids timed out,
    ids marked)."""
    cursor.execute(f"SELECT job_id, state FROM {schema.JOB_TABLE} WHERE session_id = %s "
                   "AND state IN (%s, %s)",
                   [session_id, State.RUNNING.value, State.USER_KILLED.value])
    never = [(str(j), s) for j, s in cursor.fetchall() if str(j) not in launched_ids]
    running = [j for j, s in never if s == State.RUNNING.value]
    moved = lifecycle.transition(cursor, running, State.RUN_TIMEOUT,
                                 f"interrupted: {reason}" + NOT_STARTED_SUFFIX,
                                 holder=session_id, sources=[State.RUNNING.value])
    marked = killed_starts.record_unlaunched(
        cursor, session_id, [j for j, s in never if s == State.USER_KILLED.value])
    return [j for j, _ in moved], marked
