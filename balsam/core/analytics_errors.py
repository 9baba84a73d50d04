"""Failures in a time window: RUN_ERROR and FAILED events per bucket and the most common
messages (SQL on the state events; no Django import). Re-exported by :mod:`balsam.core.analytics`;
kept apart so that the classic :func:`balsam.core.analytics_classic.error_report` wraps it without
importing the whole analytics module (which re-exports the classic helpers).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Optional

from balsam.core.analytics_scope import (
    EVENT,
    Buckets,
    Filters,
    bucket_sql,
    event_scope,
    make_buckets,
    resolve,
    window_sql,
)
from balsam.core.routing import sql_in
from balsam.core.states import State
from balsam.db.dbapi import Cursor

ERROR_STATES = (State.RUN_ERROR.value, State.FAILED.value)


@dataclass
class ErrorGroup:
    """Failures sharing one message: how many, the latest time, and one example job id."""

    message: str
    count: int
    example_job_id: str
    last_seen: datetime.datetime


@dataclass
class Errors:
    """RUN_ERROR and FAILED events per bucket, and the most common messages (count order)."""

    buckets: Buckets
    counts: list[int] = field(default_factory=list)
    groups: list[ErrorGroup] = field(default_factory=list)


def errors(cursor: Cursor, filters: Optional[Filters] = None, *, bucket_seconds: Optional[float] = None,
           top: int = 10) -> Optional[Errors]:
    """RUN_ERROR/FAILED events per bucket, and the ``top`` messages by count (ties: latest
    first), each with one example job id (None if there is no event at all)."""
    f = resolve(cursor, filters)
    b = make_buckets(cursor, f, bucket_seconds)
    if b is None:
        return None
    bsql, bparams = bucket_sql(b)
    wsql, wparams = window_sql(f, b)
    scope, sparams = event_scope(f)
    where = f"FROM {EVENT} e WHERE e.to_state IN ({sql_in(ERROR_STATES)}){wsql}{scope}"
    cursor.execute(f"SELECT {bsql} AS b, count(*) {where} GROUP BY 1", bparams + wparams + sparams)
    out = Errors(buckets=b, counts=[0] * b.count)
    for i, n in cursor.fetchall():
        if 0 <= i < b.count:
            out.counts[i] = int(n)
    cursor.execute(f"SELECT e.message, count(*), min(e.job_id::text), max(e.timestamp) {where} "
                   "GROUP BY e.message ORDER BY 2 DESC, 4 DESC, 1 LIMIT %s",
                   wparams + sparams + [int(top)])
    out.groups = [ErrorGroup(m, int(n), j, t) for m, n, j, t in cursor.fetchall()]
    return out
