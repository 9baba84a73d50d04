"""What a dead serial-mode session started: its worker watchdogs' reports, read at its sweep.

A serial-mode worker records RUNNING a few ms after it started a task (the master writes in
batches). Each worker rank's watchdog reports every job the rank started and was not told was
recorded (``<db>/log/serial_<host>_<launcher pid>.watch/<ensemble>/rank<N>.json``,
:mod:`balsam.launcher.ensemble_watch`), and the launcher records the starts its database lacks
once an ensemble ended. When the launcher died with its ranks, nobody did: so the lease sweep
(:func:`balsam.core.leases.sweep`, given the database directory, which is on a file system
every node of a site sees) reads them too, from the directory named by the session's host and
launcher pid, and records the starts the history lacks as the launcher would have
(:func:`balsam.core.leases.record_lost_starts`: RUNNING "recorded after the run", RUN_TIMEOUT
"outcome unknown"; a job whose RUNNING events already count its starts gets nothing, so a run
the launcher recorded is never recorded again).

A report is trusted only if the directory says it is the session's: the launcher writes
``session.json`` (:func:`mark_session`) there once it knows its session id, before a task of it
can start; a directory of another session (an earlier launcher of that host and pid, another
database) is ignored. Only final reports ("stopped", "alive") count; one still "running" (its
watchdog died with its node), unreadable or missing leaves that rank's jobs to the sweep, as
before. Reads are bounded (:data:`MAX_FILES`, :data:`MAX_BYTES`, :data:`MAX_SECONDS`): past a
bound nothing is read and the sweep goes on as before. Only regular files are read (opened
without blocking and without following a last symlink: a FIFO or a device named like a report
must not hang the sweep), and the sweep reads them before it locks anything.

A session's ensembles run one after the other (:mod:`balsam.launcher.ensemble_restart`); each
one's reports are removed once it ended and its lost starts were recorded, so the reports read
are those of the session's last ensemble. The mark also says (``since``) the last job event
written before that ensemble began: only the RUNNING events after it count as its starts'
records (a run of the job in an earlier ensemble of the session is another run). Once the sweep
that read them committed, :func:`discard` removes the directory.

The launcher's own first tasks (its warm start, :mod:`balsam.launcher.warm_start`) have no
worker watchdog: the launcher notes them (:func:`note_own_starts`, ``launcher.json``) before it
starts them (then those that started) and clears the note once their RUNNING is written. Its watchdog
stops them if it dies (well within the lease), so a note left is read as a "stopped" report of
the first ensemble (only while ``since`` is 0).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections import Counter
from typing import NamedTuple, Optional

MARK_NAME = "session.json"
OWN_NAME = "launcher.json"
"""The launcher's own first tasks (its warm start) started, their RUNNING not yet written."""
LOST_MESSAGE = ("started by the serial-mode ensemble, whose launcher died before the start was "
                "recorded (its watchdog's report, read by the lease sweep): outcome unknown")
MAX_FILES = 4096
"""Most report files read for one session (a rank per node, an ensemble per restart)."""
MAX_BYTES = 4 << 20
"""Most bytes read from one file (a report lists a rank's unrecorded starts: a few ids)."""
MAX_SECONDS = 5.0
"""Longest a sweep spends reading one session's reports (a slow shared file system)."""


def start_message(session_id: int) -> str:
    """The message of the RUNNING events a serial-mode session records."""
    return f"serial-mode session {session_id}"


def watch_dir(db_path: str, host: str, pid: int) -> str:
    """Where the worker watchdogs of the serial-mode launcher ``pid`` on ``host`` report."""
    return os.path.join(db_path, "log", f"serial_{host}_{pid}.watch")


class Reported(NamedTuple):
    """What a dead session's worker watchdogs reported (:func:`unrecorded_starts`)."""

    dead: Counter[str]
    """Starts (job id -> count) named by final reports whose tasks are dead."""
    alive: Counter[str]
    """Those named by reports saying a task outlived SIGKILL."""
    since: int
    """The last job event id before the reporting ensemble began (the mark's ``since``)."""


def mark_session(directory: str, session_id: int, since: int = 0) -> None:
    """Say that the reports in ``directory`` are session ``session_id``'s, of an ensemble that
    began after job event ``since`` (atomic replace)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, MARK_NAME)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump({"session": session_id, "since": since}, fh)
    os.replace(tmp, path)


def note_own_starts(directory: str, job_ids: list[str]) -> None:
    """The launcher starts (or started) its own tasks of ``job_ids`` (its warm start, before the
    ensemble has the session: no worker watchdog knows them) and will write their RUNNING;
    :func:`clear_own_starts` once written. Its watchdog stops them if it dies, well within the
    lease, so the sweep takes them as stopped starts."""
    path = os.path.join(directory, OWN_NAME)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:  # (not written: those starts are not covered, as before; the launcher goes on)
        with open(tmp, "w") as fh:
            json.dump({"state": "stopped", "started": job_ids}, fh)
        os.replace(tmp, path)
    except OSError:
        pass


def clear_own_starts(directory: str) -> None:
    """The starts :func:`note_own_starts` noted are written."""
    try:
        os.unlink(os.path.join(directory, OWN_NAME))
    except OSError:  # a note left behind records nothing twice (their RUNNING is written)
        pass


def read_report(path: str, max_bytes: int = MAX_BYTES) -> object:
    """The JSON in the regular file ``path`` (ValueError if it is something else -- a FIFO, a
    device, a directory, a symlink --, larger than ``max_bytes`` or not JSON; OSError if it
    cannot be opened). Never blocks on what it opens."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: not a regular file")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path}: larger than {max_bytes} bytes")
    return json.loads(data)


def _report_paths(directory: str) -> list[str]:
    """The report files in ``directory``'s ensemble directories (ValueError past MAX_FILES)."""
    paths: list[str] = []
    with os.scandir(directory) as generations:
        for g in generations:
            if not (g.name.isdigit() and g.is_dir(follow_symlinks=False)):
                continue
            with os.scandir(g.path) as names:
                for entry in names:
                    if entry.name.startswith("rank") and entry.name.endswith(".json"):
                        paths.append(entry.path)
                        if len(paths) > MAX_FILES:
                            raise ValueError(f"{directory}: more than {MAX_FILES} reports")
    return sorted(paths)


def _marked_since(directory: str, session_id: int) -> Optional[int]:
    """The mark's ``since`` if ``directory`` is marked as session ``session_id``'s, else None."""
    mark = read_report(os.path.join(directory, MARK_NAME))
    if not isinstance(mark, dict) or mark.get("session") != session_id:
        return None
    since = mark.get("since", 0)
    return since if isinstance(since, int) and since >= 0 else None


def unrecorded_starts(db_path: str, session_id: int, host: str, pid: int
                      ) -> Optional[Reported]:
    """What the final reports of session ``session_id`` (launcher ``pid`` on ``host``, as its
    session row says) name; None if its directory is not readable, not marked as this
    session's, or past a bound (see the module docstring)."""
    directory = watch_dir(db_path, host, pid)
    deadline = time.monotonic() + MAX_SECONDS
    try:
        since = _marked_since(directory, session_id)
        if since is None:
            return None
        paths = _report_paths(directory)
    except (OSError, ValueError):
        return None
    if since == 0:  # the warm start's (the first ensemble's only; see note_own_starts)
        paths.append(os.path.join(directory, OWN_NAME))
    out = Reported(Counter(), Counter(), since)
    for path in paths:
        if time.monotonic() > deadline:
            return None
        try:
            report = read_report(path)
        except (OSError, ValueError):
            continue  # being replaced, gone or not a report: its rank's jobs are swept as before
        if not isinstance(report, dict) or not isinstance(report.get("started"), list):
            continue
        if report.get("state") in ("stopped", "alive"):
            (out.dead if report["state"] == "stopped" else out.alive).update(
                str(j) for j in report["started"])
    return out


def discard(db_path: str, session_id: int, host: str, pid: int) -> bool:
    """Remove the watch directory of swept session ``session_id`` (launcher ``pid`` on
    ``host``) once the sweep that read it committed; left alone unless marked as that
    session's (a later launcher of that host and pid may own it). Returns whether removed."""
    directory = watch_dir(db_path, host, pid)
    try:
        if _marked_since(directory, session_id) is None:
            return False
    except (OSError, ValueError):
        return False
    shutil.rmtree(directory, ignore_errors=True)
    return not os.path.exists(directory)
