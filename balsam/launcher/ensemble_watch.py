"""After a serial-mode ensemble ends: are its tasks known dead, and was every start recorded?

Each worker rank's watchdog (:mod:`balsam.launcher.watchdog`) has a report file in
``<db>/log/serial_<host>_<launcher pid>.watch/<ensemble number>/``: the rank writes it ("running") before it
can start a task, and the watchdog replaces it once the rank is gone and every task it
registered is dead ("stopped"; "alive" if a task outlived SIGKILL), listing the jobs the rank
started that it was not told were recorded.

:func:`settle` runs in the launcher process after the MPI launch ended, however it ended. It
waits (at most the kill grace plus :data:`SETTLE_SLACK_SECONDS`) until no report says
"running", then

* records every start a report lists that the database does not show (the master died between
  the start and its record): the job gets a RUNNING and a RUN_TIMEOUT event saying its outcome
  is unknown (:func:`balsam.core.leases.record_lost_starts`), so every run is in its history;
* leaves the session open if a report is still "running" or says "alive" (``ctx.release_session``
  becomes False): the tasks are not known dead, so their jobs must not become runnable before
  the lease expires and a sweep closes the session. Otherwise the caller closes it at once.

A normal end costs one directory listing: the workers closed their watchdogs before leaving.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from balsam.core import serial_reports
from balsam.errors import DatabaseUnavailable

if TYPE_CHECKING:
    from balsam.launcher.context import Context

SETTLE_SLACK_SECONDS = 10.0
"""Beyond the kill grace, how long the launcher waits for the watchdogs' reports (a watchdog
starts Python, waits for SIGKILLed groups to go, and its file may cross a shared file system)."""
RECORD_SECONDS = 5.0
"""Longest the launcher tries to record lost starts (the database may be restarting)."""
POLL_SECONDS = 0.1


def start_message(session_id: int) -> str:
    """The message of the RUNNING events a serial-mode session records."""
    return serial_reports.start_message(session_id)


def report_dir(watch_dir: str, generation: int = 0) -> str:
    """Where the worker watchdogs of ensemble number ``generation`` report (``watch_dir``:
    :func:`balsam.launcher.serial_mode.watch_dir`, ``ctx.watch_dir``)."""
    return os.path.join(watch_dir, str(generation))


def report_path(watch_dir: str, rank: int, generation: int = 0) -> str:
    """The report file of worker rank ``rank`` (its directory is created)."""
    directory = report_dir(watch_dir, generation)
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, f"rank{rank}.json")


def forget_reports(watch_dir: str, wait: float) -> None:
    """Remove a launcher's report directory once no report in it says "running" (an ensemble
    abandoned before its session: its workers' watchdogs report as they exit); left as it is
    if one still does after ``wait`` seconds (its watchdog has yet to write there)."""
    end = time.monotonic() + wait
    while read_reports(report_dir(watch_dir)).running:
        if time.monotonic() >= end:
            return
        time.sleep(POLL_SECONDS)
    serial_reports.remove_launcher_dir(watch_dir)


@dataclass
class Reports:
    """What the watchdogs' report files say right now."""

    running: list[str] = field(default_factory=list)
    """Ranks whose watchdog has not reported (tasks may still run)."""
    alive: list[str] = field(default_factory=list)
    """Ranks whose watchdog saw a task outlive SIGKILL."""
    started: Counter[str] = field(default_factory=Counter)
    """Starts (job id -> count) the ranks whose tasks are dead were not told were recorded."""
    started_alive: Counter[str] = field(default_factory=Counter)
    """The same for ranks a task of which outlived SIGKILL."""
    stopped: dict[int, list[str]] = field(default_factory=dict)
    """Rank -> the jobs it started, for ranks whose tasks are known dead."""
    unknown: list[int] = field(default_factory=list)
    """Ranks whose tasks are not known dead (their nodes must not be used again)."""
    final: list[str] = field(default_factory=list)
    """The file names of the final reports ("stopped", "alive")."""

    @property
    def known_dead(self) -> bool:
        return not (self.running or self.alive)


def read_reports(directory: str) -> Reports:
    """Read every report file in ``directory`` (none: no worker started a task)."""
    out = Reports()
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except FileNotFoundError:
        return out
    for name in names:
        rank = name[:-len(".json")]
        number = int(rank[len("rank"):])
        try:
            with open(os.path.join(directory, name)) as fh:
                report = json.load(fh)
        except (OSError, ValueError):
            report = {"state": "running"}  # being replaced: look again
        state = report.get("state")
        if state != "running":
            out.final.append(name)
        if state == "running":
            out.running.append(rank)
        elif state == "alive":
            out.alive.append(f"{rank} on {report.get('host', '?')}")
        else:
            out.stopped[number] = list(report.get("started", ()))
        if state != "stopped":
            out.unknown.append(number)
        if state == "alive":
            out.started_alive.update(report.get("started", ()))
        else:
            out.started.update(report.get("started", ()))
    return out


def settle(ctx: Context) -> Reports:
    """Wait for the reports, record lost starts, decide whether the session may be released
    (see the module docstring); returns the last reports read."""
    directory = report_dir(ctx.watch_dir, ctx.ensembles)
    reports = read_reports(directory)
    if reports.running:
        ctx.log.info(f"waiting for the watchdogs of worker ranks {', '.join(reports.running)} "
                     "to stop their tasks")
        deadline = time.monotonic() + ctx.tunables.kill_grace_seconds + SETTLE_SLACK_SECONDS
        next_beat = 0.0
        while reports.running and time.monotonic() < deadline:
            if time.monotonic() >= next_beat:
                _heartbeat(ctx)
                next_beat = time.monotonic() + ctx.tunables.heartbeat_seconds
            time.sleep(POLL_SECONDS)
            reports = read_reports(directory)
    recorded = not (reports.started or reports.started_alive) or _record_lost_starts(
        ctx, reports.started, reports.started_alive)
    ctx.settled_reports = list(reports.final) if recorded else []
    if reports.known_dead:
        return reports
    ctx.release_session = False
    unknown = reports.running + reports.alive
    ctx.log.error(f"tasks of worker ranks {', '.join(unknown)} are not known to be dead: "
                  f"session {ctx.session_id} is left to the lease sweep "
                  f"({ctx.tunables.lease_seconds} s) so that no job of it runs twice at once")
    return reports


def _heartbeat(ctx: Context) -> None:
    """The master (which renewed the lease) is gone: renew it while the tasks die (a renewal
    confirmed moves the fences: the next ensemble's, and that of the launcher's own tasks)."""
    from balsam.core import leases  # here: worker ranks import this module, never the lease SQL

    sent = time.monotonic()
    try:
        if ctx.db.try_run(leases.heartbeat, ctx.session_id):
            ctx.lease_since = max(ctx.lease_since, sent)
            if ctx.carried is not None:
                ctx.carried.renewed(sent)
    except DatabaseUnavailable:
        pass


def _record_lost_starts(ctx: Context, dead: Counter[str], alive: Counter[str]) -> bool:
    """Record the starts the database lacks: ended (RUN_TIMEOUT) for tasks known dead, left
    RUNNING (still held: the sweep ends them) for tasks that may be alive; False if the
    database could not be reached (the session is then left to the lease sweep)."""
    from balsam.core import leases

    message = ("started by the serial-mode ensemble, which died before the start was "
               "recorded: outcome unknown")
    lost: list[str] = []
    try:
        for started, end in ((dead, message), (alive, None)):
            if started:
                lost += ctx.db.run_before(time.monotonic() + RECORD_SECONDS,
                                          leases.record_lost_starts, ctx.session_id,
                                          dict(started), start_message(ctx.session_id), end,
                                          since=ctx.ensemble_since)
    except DatabaseUnavailable as exc:  # the lease sweep records them from the reports
        ctx.release_session = False
        ctx.log.error(f"could not record the ensemble's unrecorded starts ({exc}): session "
                      f"{ctx.session_id} is left to the lease sweep")
        return False
    if lost:
        ctx.log.warning(f"recorded {len(lost)} run(s) the ensemble started but never recorded "
                        "(RUNNING, then RUN_TIMEOUT: outcome unknown)")
    return True
