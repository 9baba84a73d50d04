"""The classic analytics helpers of ``balsam.core.models@0.5.0``, same names and shapes.

Thin wrappers over the analytics queries (:mod:`balsam.core.analytics_scope` and
:mod:`balsam.core.analytics_errors`; :mod:`balsam.core.analytics` re-exports these helpers): each
takes an optional BalsamJob queryset (``qs``; its SQL narrows the jobs), or a DB-API ``cursor`` and
:class:`Filters`. Without a cursor they use Django's connection (the only place these import
Django, lazily).
"""
from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any, Optional

from balsam.core.analytics_errors import errors
from balsam.core.analytics_scope import (
    EVENT,
    JOB,
    Filters,
    event_scope,
    job_clauses,
    resolve,
    window_sql,
)
from balsam.core.retries import NO_RUN_SQL
from balsam.core.routing import sql_in
from balsam.core.states import State
from balsam.db.dbapi import Cursor


def _classic_args(qs: Any, cursor: Optional[Cursor], filters: Optional[Filters]
                  ) -> tuple[Cursor, Filters]:
    """A cursor (Django's connection when none is given) and filters narrowed to queryset ``qs``
    (a BalsamJob queryset; its SQL becomes :attr:`Filters.job_query`)."""
    f = filters or Filters()
    if qs is not None:
        sql, params = qs.values("job_id").query.sql_with_params()
        f = replace(f, job_query=(sql, params))
    if cursor is None:
        from django.db import connection  # only the classic, Django-side entry points need it

        cursor = connection.cursor()
    return cursor, f


def process_job_times(qs: Any = None, state0: Optional[str] = None, *, cursor: Optional[Cursor] = None,
                      filters: Optional[Filters] = None) -> dict[str, list[datetime.datetime]]:
    """{state: sorted times jobs reached it} (CREATED from ``created_at``); with ``state0``,
    only that state's list. Materialises every event: meant for thousands of jobs, not millions."""
    cursor, f = _classic_args(qs, cursor, filters)
    f = resolve(cursor, f)
    scope, sparams = event_scope(f)
    wsql, wparams = window_sql(f)
    cursor.execute(f"SELECT e.to_state, e.timestamp FROM {EVENT} e WHERE true{wsql}{scope} "
                   "ORDER BY e.timestamp", wparams + sparams)
    times: dict[str, list[datetime.datetime]] = {}
    for state, when in cursor.fetchall():
        times.setdefault(state, []).append(when)
    clauses, jparams = job_clauses(f)
    clauses += ["j.created_at >= %s"] * bool(f.since) + ["j.created_at < %s"] * bool(f.until)
    jparams += [t for t in (f.since, f.until) if t]
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    cursor.execute(f"SELECT j.created_at FROM {JOB} j{where} ORDER BY 1", jparams)
    created = [r[0] for r in cursor.fetchall()]
    if created:
        times[State.CREATED.value] = sorted(created + times.get(State.CREATED.value, []))
    if state0 is not None:
        return {state0: times.get(state0, [])}
    return times


def throughput_report(qs: Any = None, *, cursor: Optional[Cursor] = None, filters: Optional[Filters] = None,
                      state: str = State.RUN_DONE.value) -> tuple[list[datetime.datetime], list[int]]:
    """Classic shape: (times of every ``state`` event, cumulative count at each)."""
    times = process_job_times(qs, state, cursor=cursor, filters=filters)[state]
    return times, list(range(1, len(times) + 1))


def utilization_report(qs: Any = None, *, cursor: Optional[Cursor] = None, filters: Optional[Filters] = None
                       ) -> tuple[list[datetime.datetime], list[int]]:
    """Classic shape: (time of every run start or end, running tasks just after it)."""
    cursor, f = _classic_args(qs, cursor, filters)
    f = resolve(cursor, f)
    scope, sparams = event_scope(f)
    wsql, wparams = window_sql(f)
    run = sql_in([State.RUNNING])
    # A visit that was no run (NO_RUN_SQL) counts neither at its end nor at its start (the
    # event that ends it entered RUNNING when the one starting it was written).
    no_run = (f"(e.from_state = {run} AND {NO_RUN_SQL.format(e='e')}) OR (e.to_state = {run} "
              f"AND EXISTS (SELECT 1 FROM {EVENT} n WHERE n.job_id = e.job_id "
              f"AND n.from_state = {run} AND n.entered_at = e.timestamp "
              f"AND {NO_RUN_SQL.format(e='n')}))")
    cursor.execute(f"SELECT e.timestamp, CASE WHEN e.to_state = {run} THEN 1 ELSE -1 END "
                   f"FROM {EVENT} e WHERE (e.to_state = {run}) <> (e.from_state = {run}) "
                   f"AND NOT ({no_run}){wsql}{scope} ORDER BY e.timestamp, e.id",
                   wparams + sparams)
    times, running, level = [], [], 0
    for when, sign in cursor.fetchall():
        level += sign
        times.append(when)
        running.append(level)
    return times, running


def error_report(qs: Any = None, *, cursor: Optional[Cursor] = None, filters: Optional[Filters] = None,
                 bucket_seconds: float = 60) -> tuple[list[datetime.datetime], list[int]]:
    """Classic shape: (minute bucket starts, RUN_ERROR and FAILED events in each)."""
    cursor, f = _classic_args(qs, cursor, filters)
    rep = errors(cursor, f, bucket_seconds=bucket_seconds)
    return (rep.buckets.times, rep.counts) if rep else ([], [])
