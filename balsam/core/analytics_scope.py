"""Which jobs and which time window an analytics report covers, as SQL (no Django import).

:class:`Filters` (workflow, app, launcher session, a job query, a half-open window ``[since,
until)``), their conditions on the job table (alias ``j``) and the events (alias ``e``), and the
equal time :class:`Buckets` the per-interval reports use. See :mod:`balsam.core.analytics` for
the reports and their contracts.
"""
from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

from balsam.core import schema
from balsam.core.routing import sql_in
from balsam.core.sql import like_contains
from balsam.core.states import State
from balsam.db.dbapi import Cursor, fetch_one
from balsam.errors import NotFound

JOB, EVENT, SESSION = schema.JOB_TABLE, schema.EVENT_TABLE, schema.SESSION_TABLE
UTC = datetime.timezone.utc
NICE_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
                43200, 86400, 172800, 604800)
"""Bucket sizes (seconds) picked automatically: the smallest giving at most ``max_buckets``."""


@dataclass(frozen=True)
class Filters:
    """Which jobs and which time window a report covers (all optional, combined with AND)."""

    workflow: Optional[str] = None
    workflow_contains: Optional[str] = None
    app: Optional[str] = None
    session: Optional[int] = None
    since: Optional[datetime.datetime] = None
    until: Optional[datetime.datetime] = None
    job_query: Optional[tuple[str, Sequence[Any]]] = None
    """SQL selecting ``job_id`` values (and its parameters): e.g. a Django queryset's query."""


@dataclass
class Buckets:
    """Equal time buckets: bucket ``i`` is ``[start + i*seconds, start + (i+1)*seconds)``."""

    start: datetime.datetime
    seconds: float
    count: int

    @property
    def times(self) -> list[datetime.datetime]:
        """The start time of every bucket."""
        return [self.start + datetime.timedelta(seconds=i * self.seconds) for i in range(self.count)]


# ---- filters ------------------------------------------------------------------------------------

def _aware(when: Optional[datetime.datetime]) -> Optional[datetime.datetime]:
    if when is not None and when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when


def job_clauses(f: Filters) -> tuple[list[str], list[Any]]:
    """Conditions on the job table (alias ``j``) for the job filters of ``f``."""
    clauses: list[str] = []
    params: list[Any] = []
    if f.workflow is not None:
        clauses.append("j.workflow = %s")
        params.append(f.workflow)
    if f.workflow_contains is not None:
        clauses.append("j.workflow LIKE %s")
        params.append(like_contains(f.workflow_contains))
    if f.app is not None:
        clauses.append("j.application = %s")
        params.append(f.app)
    if f.session is not None:
        # The run starts a launcher recorded ("... session N ...", "... session N, ready ahead
        # ...") fall in its lifetime: only those events are read (timestamp index).
        clauses.append(
            f"j.job_id IN (SELECT e.job_id FROM {SESSION} s, {EVENT} e WHERE s.id = %s "
            "AND e.timestamp >= s.started_at AND (s.ended_at IS NULL OR e.timestamp <= s.ended_at) "
            f"AND e.to_state = {sql_in([State.RUNNING])} AND (e.message LIKE %s OR e.message "
            "LIKE %s OR e.message LIKE %s))")
        params += [int(f.session), f"%session {int(f.session)}", f"%session {int(f.session)} %",
                   f"%session {int(f.session)},%"]
    if f.job_query is not None:
        clauses.append(f"j.job_id IN ({f.job_query[0]})")
        params += list(f.job_query[1])
    return clauses, params


def event_scope(f: Filters) -> tuple[str, list[Any]]:
    """`` AND ...`` restricting events (alias ``e``) to the filtered jobs, or ''."""
    clauses, params = job_clauses(f)
    if not clauses:
        return "", []
    return f" AND e.job_id IN (SELECT j.job_id FROM {JOB} j WHERE {' AND '.join(clauses)})", params


def resolve(cursor: Cursor, filters: Optional[Filters]) -> Filters:
    """``filters`` with aware times, and the window narrowed to the session's lifetime when a
    session is named (:class:`NotFound` if it does not exist)."""
    f = filters or Filters()
    f = replace(f, since=_aware(f.since), until=_aware(f.until))
    if f.session is None:
        return f
    cursor.execute(f"SELECT started_at, ended_at FROM {SESSION} WHERE id = %s", [int(f.session)])
    row = cursor.fetchone()
    if row is None:
        raise NotFound(f"no launcher session {f.session}")
    since = max(x for x in (f.since, row[0]) if x is not None)
    until = min((x for x in (f.until, row[1]) if x is not None), default=None)
    return replace(f, since=since, until=until)


def make_buckets(cursor: Cursor, f: Filters, bucket_seconds: Optional[float] = None,
                 max_buckets: int = 60) -> Optional[Buckets]:
    """Buckets covering ``[since or first event, until or last event]`` of the filtered jobs;
    None when there is no event to cover. Without ``bucket_seconds`` the size is the smallest of
    :data:`NICE_BUCKETS` giving at most ``max_buckets`` buckets."""
    lo, hi = f.since, f.until
    if lo is None or hi is None:
        first, last = _event_span(cursor, f)
        if first is None or last is None:
            return None
        lo = lo or first
        hi = hi or last
    span = max((hi - lo).total_seconds(), 0.0)
    if bucket_seconds is None:
        bucket_seconds = next((b for b in NICE_BUCKETS if span / b < max_buckets), NICE_BUCKETS[-1])
    if bucket_seconds <= 0:
        raise ValueError("bucket_seconds must be positive")
    count = max(1, math.ceil(span / bucket_seconds)) if f.until else int(span // bucket_seconds) + 1
    return Buckets(start=lo, seconds=float(bucket_seconds), count=count)


def _event_span(cursor: Cursor, f: Filters) -> tuple[Optional[datetime.datetime],
                                                 Optional[datetime.datetime]]:
    """(first, last) event time of the filtered jobs, both None without events.

    Unfiltered: the ends of the timestamp index. Filtered, without joining every event: the
    last event is the latest ``state_since`` of the filtered jobs (the state writer dates both
    alike; a job created in a state other than CREATED has its event at ``created_at``), and
    the first is found walking the timestamp index from their earliest ``created_at``."""
    clauses, params = job_clauses(f)
    if not clauses:
        cursor.execute(f"SELECT min(timestamp), max(timestamp) FROM {EVENT}")
        first, last = fetch_one(cursor)
        return first, last
    cursor.execute(f"SELECT min(j.created_at), max(coalesce(j.state_since, CASE WHEN j.state "
                   f"<> {sql_in([State.CREATED])} THEN j.created_at END)) FROM {JOB} j WHERE "
                   f"{' AND '.join(clauses)}", params)
    created, last = fetch_one(cursor)
    if created is None or last is None:
        return None, None
    scope, sparams = event_scope(f)
    cursor.execute(f"SELECT e.timestamp FROM {EVENT} e WHERE e.timestamp >= %s{scope} "
                   "ORDER BY e.timestamp LIMIT 1", [created] + sparams)
    row = cursor.fetchone()
    return (row[0], last) if row else (None, None)


def bucket_sql(b: Buckets, column: str = "e.timestamp") -> tuple[str, list[Any]]:
    """SQL of the bucket index of time ``column`` (-1 before the window), and its parameters."""
    return (f"CASE WHEN {column} < %s THEN -1 ELSE "
            f"floor(date_part('epoch', {column} - %s) / %s)::int END"), [b.start, b.start, b.seconds]


def window_sql(f: Filters, b: Optional[Buckets] = None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    start = b.start if b is not None else f.since
    if start is not None:
        clauses.append(" AND e.timestamp >= %s")
        params.append(start)
    end = (b.start + datetime.timedelta(seconds=b.seconds * b.count)) if b is not None else f.until
    if end is not None:
        clauses.append(" AND e.timestamp < %s")
        params.append(end)
    return "".join(clauses), params
