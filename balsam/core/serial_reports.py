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
bound nothing is read and the sweep goes on as before.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Optional

MARK_NAME = "session.json"
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


def mark_session(directory: str, session_id: int) -> None:
    """Say that the reports in ``directory`` are session ``session_id``'s (atomic replace)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, MARK_NAME)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump({"session": session_id}, fh)
    os.replace(tmp, path)


def _read(path: str) -> object:
    with open(path, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ValueError(f"{path}: larger than {MAX_BYTES} bytes")
    return json.loads(data)


def unrecorded_starts(db_path: str, session_id: int, host: str, pid: int
                      ) -> Optional[tuple[Counter[str], Counter[str]]]:
    """(starts -- job id -> count -- named by final reports whose tasks are dead, those named
    by reports saying a task outlived SIGKILL) of session ``session_id`` (launcher ``pid`` on
    ``host``, as its session row says), over all its ensembles; None if its directory is not
    readable, not marked as this session's, or past a bound (see the module docstring)."""
    directory = watch_dir(db_path, host, pid)
    deadline = time.monotonic() + MAX_SECONDS
    try:
        mark = _read(os.path.join(directory, MARK_NAME))
        if not isinstance(mark, dict) or mark.get("session") != session_id:
            return None
        paths = [os.path.join(directory, g, name)
                 for g in sorted(os.listdir(directory)) if g.isdigit()
                 for name in sorted(os.listdir(os.path.join(directory, g)))
                 if name.startswith("rank") and name.endswith(".json")]
    except (OSError, ValueError):
        return None
    if len(paths) > MAX_FILES:
        return None
    dead: Counter[str] = Counter()
    alive: Counter[str] = Counter()
    for path in paths:
        if time.monotonic() > deadline:
            return None
        try:
            report = _read(path)
        except (OSError, ValueError):
            continue  # being replaced or gone: its rank's jobs are swept as before
        if not isinstance(report, dict) or not isinstance(report.get("started"), list):
            continue
        if report.get("state") in ("stopped", "alive"):
            (dead if report["state"] == "stopped" else alive).update(
                str(j) for j in report["started"])
    return dead, alive
