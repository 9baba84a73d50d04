"""The classic ``state_history`` text form and its parser (stdlib only).

Each entry is ``"\\n[MM-DD-YYYY HH:MM:SS.ffffff STATE] message"``; as in classic Balsam the
``"\\n[...] "`` head is right-justified to 46 characters. Times are UTC.
"""
from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from typing import Any, Optional

from balsam.core import schema
from balsam.db.dbapi import Cursor

TIME_FMT = "%m-%d-%Y %H:%M:%S.%f"
STATE_TIME_PATTERN = re.compile(r"^\[(\d+-\d+-\d+) (\d+:\d+:\d+\.\d+) (\w+)\]", re.MULTILINE)


def get_time_string(when: Optional[datetime.datetime] = None) -> str:
    """``when`` (default: now) as classic history text, in UTC; a naive time is taken as UTC."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc)
    return when.strftime(TIME_FMT)


def from_time_string(text: str) -> datetime.datetime:
    """The aware UTC datetime of a history time string (inverse of :func:`get_time_string`)."""
    return datetime.datetime.strptime(text, TIME_FMT).replace(tzinfo=datetime.timezone.utc)


def history_line(state: str, message: str = "", when: Optional[datetime.datetime] = None) -> str:
    """One history entry: the right-justified ``"\\n[time STATE] "`` head, then the message."""
    head = f"\n[{get_time_string(when)} {state}] ".rjust(46)
    return head + (message or "")


def parse_history(text: str) -> list[tuple[datetime.datetime, str]]:
    """[(time, state)] of every entry in a history text, in order."""
    return [(from_time_string(f"{d} {t}"), s) for d, t, s in STATE_TIME_PATTERN.findall(text)]


def state_times(text: str) -> dict[str, datetime.datetime]:
    """{state: time} of a history text; the latest entry of a state wins."""
    return {state: when for when, state in parse_history(text)}


def creation_notes(cursor: Cursor, job_ids: Sequence[Any]) -> dict[str, str]:
    """{job id: message of its CREATED entry} for those of ``job_ids`` that have one: a job
    with ``data["spawned_by"]`` was spawned by that job (``[id8]`` if it no longer exists)."""
    if not job_ids:
        return {}
    cursor.execute(f"SELECT j.job_id, j.data->>'spawned_by', s.name FROM {schema.JOB_TABLE} j "
                   f"LEFT JOIN {schema.JOB_TABLE} s ON s.job_id::text = j.data->>'spawned_by' "
                   "WHERE j.job_id = ANY(%s::uuid[]) AND j.data->>'spawned_by' IS NOT NULL",
                   [[str(j) for j in job_ids]])
    return {str(job_id): f"spawned by {schema.cute_id(name or '', spawner)}"
            for job_id, spawner, name in cursor.fetchall()}
