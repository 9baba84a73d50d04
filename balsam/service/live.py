"""Live batch-job states for the views (``balsam ls queues``, ``balsam top``, the dashboard).

Our ``core_queuedlaunch`` rows hold the states the service's last sync wrote; once the service
is stopped they are never updated, so a view that showed them alone would show a batch job
queued or running forever. A view therefore asks the scheduler itself, once for all the rows
it shows (one status call for the user, short timeout), through :func:`ask`, and
:func:`annotate` gives each unfinished row with a scheduler id

- ``state``: the scheduler's live state (``ended`` if it no longer lists the job), and
- ``as_of``: ``live``, ``live (recorded X)`` when the DB still says X (the service has not
  synced since), or, when the status call failed, the recorded state's age:
  ``stale: last sync 2h07m ago`` / ``stale: never synced`` (the reason goes in the note).

The service records the time of every successful sync in ``<db>/last-sync``
(:func:`record_sync`); the views read it with :func:`last_sync`.
"""
from __future__ import annotations

import json
import os
import pwd
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from balsam.core.render import duration
from balsam.platform.schedulers import BatchJobStatus, SchedulerError
from balsam.service.policy import FINAL_ROW_STATES, PENDING, SUBMITTING

STATUS_TIMEOUT = 5.0
"""Seconds a view waits for the scheduler's status command before showing recorded states."""
REFRESH_SECONDS = 30.0
"""A live view (top, the dashboard) asks the scheduler at most this often."""
SYNC_FILE = "last-sync"
ENDED = "ended"
"""Shown for a job the scheduler no longer lists (the service records how it ended)."""


@dataclass
class LiveStates:
    """One status answer: ``listed`` by scheduler id (None: the call failed, ``error`` says
    why), when it was ``asked_at``, and the service's ``last_sync`` (None: never)."""

    listed: Optional[dict[str, BatchJobStatus]]
    asked_at: datetime
    error: str = ""
    last_sync: Optional[datetime] = None
    foreign: list[BatchJobStatus] = field(default_factory=list)

    @property
    def note(self) -> str:
        """Why the states shown are not live ("" when the scheduler answered)."""
        if self.listed is not None:
            return ""
        return (f"the scheduler's status command failed ({self.error}); states as last "
                f"recorded, {since(self.last_sync, self.asked_at)}")


def record_sync(db_path: str, at: Optional[datetime] = None) -> None:
    """Write ``at`` (default now) as the time of the service's last successful sync."""
    when = (at or datetime.now(timezone.utc)).isoformat()
    fd, tmp = tempfile.mkstemp(prefix=".last-sync.", dir=db_path)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"synced_at": when}, fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(db_path, SYNC_FILE))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def last_sync(db_path: str) -> Optional[datetime]:
    """The time of the service's last successful sync (None: never, or unreadable)."""
    try:
        with open(os.path.join(db_path, SYNC_FILE)) as fh:
            return datetime.fromisoformat(json.load(fh)["synced_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def since(synced: Optional[datetime], now: datetime) -> str:
    """``last sync 3m05s ago`` or ``never synced``."""
    if synced is None:
        return "never synced"
    return f"last sync {duration((now - synced).total_seconds())} ago"


def ask(db_path: str, scheduler_name: str, ours: set[str],
        timeout: float = STATUS_TIMEOUT) -> LiveStates:
    """One status call to ``scheduler_name`` for this user's jobs; never raises for a failing
    scheduler. ``ours`` are our rows' scheduler ids (the rest are returned as ``foreign``)."""
    from balsam.platform import schedulers

    user = pwd.getpwuid(os.getuid()).pw_name
    asked_at = datetime.now(timezone.utc)
    synced = last_sync(db_path)
    try:
        sched = schedulers.get(scheduler_name, os.path.join(db_path, "qsubmit"))
        listed = sched.status(user, timeout=timeout)
    except (SchedulerError, OSError) as exc:  # OSError: local records we may not write
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return LiveStates(None, asked_at, first, synced)
    foreign = [job for sid, job in sorted(listed.items()) if sid not in ours and not job.is_final]
    return LiveStates(listed, asked_at, "", synced, foreign)


def annotate(rows: list[dict[str, Any]], live: LiveStates) -> list[dict[str, Any]]:
    """``rows`` (dicts with ``scheduler_id``, ``state``, ``submitted_at``) with ``state`` made
    live and ``as_of`` set (module docstring), plus ``recorded_state`` (the DB's) and ``live``
    (True: the scheduler's state, False: a stale recorded one, None: not at the scheduler)."""
    for row in rows:
        recorded = row["recorded_state"] = row["state"]
        row["as_of"], row["live"] = "", None
        if not row.get("scheduler_id") or recorded in FINAL_ROW_STATES | {PENDING, SUBMITTING}:
            continue
        if live.listed is None:
            row["as_of"], row["live"] = f"stale: {since(live.last_sync, live.asked_at)}", False
            continue
        job = live.listed.get(row["scheduler_id"])
        submitted = row.get("submitted_at")
        if job is None and submitted is not None and submitted > live.asked_at:
            continue  # submitted after we asked: not listed yet
        row["state"] = ENDED if job is None or job.is_final else job.state
        row["as_of"] = "live" if row["state"] == recorded else f"live (recorded {recorded})"
        row["live"] = True
    return rows


class Cached:
    """:func:`ask` at most every ``refresh`` seconds (for views that redraw often)."""

    def __init__(self, fetch: Callable[[], LiveStates], refresh: float = REFRESH_SECONDS) -> None:
        self.fetch = fetch
        self.refresh = refresh
        self.value: Optional[LiveStates] = None
        self.at = 0.0

    def get(self) -> LiveStates:
        if self.value is None or time.monotonic() - self.at >= self.refresh:
            self.value, self.at = self.fetch(), time.monotonic()
        return self.value
