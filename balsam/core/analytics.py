"""Campaign analytics computed in SQL from the recorded state events (no Django import).

Every function takes a DB-API cursor (Django's, psycopg2's or psycopg 3's; ``%s`` parameters) and an
optional :class:`Filters` (:mod:`balsam.core.analytics_scope`). The data, all written by
:func:`balsam.core.lifecycle.transition` in the statement that changes a state (or its batched
half :mod:`balsam.core.launcher_moves`, or :mod:`balsam.core.killed_starts` for a run whose
start a user's kill overtook, on the same rules):
``core_jobevent(job_id, timestamp, from_state, to_state, message, entered_at, nodes)`` -- each
event is one whole visit of ``from_state``, ``[entered_at, timestamp)``, and an event leaving
RUNNING carries the ``nodes`` its run occupied -- and ``core_balsamjob.state_since``, when a job
entered its current state (NULL: at ``created_at``; creation has no event). Events written before
migration 0004 were filled in by it.

Definitions (the contracts the tests check):

- A *run* is a visit of RUNNING: from the event entering RUNNING to the job's next event, which
  always leaves RUNNING (RUN_DONE, RUN_ERROR, RUN_TIMEOUT or USER_KILLED). A run still open is
  running. A visit whose leaving event's message ends with
  :data:`balsam.core.retries.NOT_STARTED_SUFFIX` is no run (MPI mode recorded the job RUNNING
  ahead of its launch, then a stop or a user's kill kept it from starting: ``NO_RUN_SQL``): no
  runtime, no running task, no busy node; its time still counts as time spent in RUNNING
  (state times are about states). A job shown RUNNING now counts as running.
- *Busy nodes*: a running MPI job (``num_nodes > 1`` or ``ranks_per_node > 1``) counts
  ``num_nodes``; a serial job (``num_nodes == 1 and ranks_per_node == 1``) counts
  ``1 / node_packing_count`` of a node (it shares the node with that many others).
- Time windows are half-open ``[since, until)``. Event counts (throughput, errors) count events
  inside the window; runtimes count runs that *ended* inside it; utilization and state times
  clip intervals to it. Naive datetimes are taken as UTC.
- Filters combine with AND. ``workflow`` is exact (uses the workflow index), ``workflow_contains``
  a literal substring (like ``balsam ls --wf``); ``app`` is the exact application name;
  ``session`` keeps the jobs that ran (had a RUNNING event) under that launcher session -- found
  by the start message the launchers write (``... session N ...``) -- and narrows the window to
  the session's lifetime.

Large campaigns: no report pairs events, nor joins them with the jobs for node counts.
Runtimes are single event rows (``timestamp - entered_at``), utilization reads the run-ending
events of the window (index ``run_end``) plus the jobs RUNNING now, state times are one sum per
state over the events and one over the jobs; a filtered report finds its time span from the
filtered jobs. Over 1,000,000 jobs every report takes under 2 s, most under 1 s; see
``benchmarks/bench_analytics.py`` and ``benchmarks/README.md``.
"""
from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from balsam.core.analytics_classic import (  # noqa: F401  (the classic names, here too)
    error_report,
    process_job_times,
    throughput_report,
    utilization_report,
)
from balsam.core.analytics_errors import ERROR_STATES, ErrorGroup, Errors, errors  # noqa: F401
from balsam.core.analytics_scope import (
    EVENT,
    JOB,
    NICE_BUCKETS,
    Buckets,
    Filters,
    bucket_sql,
    event_scope,
    job_clauses,
    make_buckets,
    resolve,
    window_sql,
)
from balsam.core.lifecycle import RUN_NODES_SQL
from balsam.core.retries import NO_RUN_SQL
from balsam.core.routing import sql_in
from balsam.core.states import STATES, State
from balsam.db.dbapi import Cursor, fetch_one
from balsam.errors import NotFound

__all__ = ["Buckets", "ErrorGroup", "Errors", "Filters", "NICE_BUCKETS", "NotFound", "Run",
           "RuntimeStats", "StateTime", "Throughput", "Utilization", "errors", "job_runtimes",
           "make_buckets", "resolve", "runtime_stats", "state_counts", "state_times", "summary",
           "throughput", "utilization"]
_RUNNING = sql_in([State.RUNNING])
_RUN_DONE = sql_in([State.RUN_DONE])
_FINISHED = sql_in([State.JOB_FINISHED])
_RAN = f"NOT {NO_RUN_SQL.format(e='e')}"


@dataclass
class Throughput:
    """Jobs reaching RUN_DONE and JOB_FINISHED per bucket, and cumulative within the window."""

    buckets: Buckets
    run_done: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    run_done_cumulative: list[int] = field(default_factory=list)
    finished_cumulative: list[int] = field(default_factory=list)


@dataclass
class Utilization:
    """Running tasks and busy nodes: at the end of each bucket, and time-averaged over it."""

    buckets: Buckets
    running_tasks: list[int] = field(default_factory=list)
    busy_nodes: list[float] = field(default_factory=list)
    avg_running_tasks: list[float] = field(default_factory=list)
    avg_busy_nodes: list[float] = field(default_factory=list)


@dataclass
class Run:
    """One run of one job: RUNNING until ``end`` (the state it ended in)."""

    job_id: str
    start: datetime.datetime
    end: datetime.datetime
    end_state: str
    seconds: float


@dataclass
class RuntimeStats:
    """Distribution of run durations (seconds) of runs ended in the window; None if no runs."""

    count: int
    mean: Optional[float]
    p50: Optional[float]
    p95: Optional[float]
    max: Optional[float]


@dataclass
class StateTime:
    """Time jobs spent in one state within the window: the total, visits ended in the window,
    jobs in the state now, and the mean per visit = total / (visits ended + jobs in it now), an
    open visit counting up to the window end (None without visits)."""

    total_seconds: float
    visits_ended: int
    mean_seconds: Optional[float]
    current: int


# ---- reports ------------------------------------------------------------------------------------

def throughput(cursor: Cursor, filters: Optional[Filters] = None, *,
               bucket_seconds: Optional[float] = None) -> Optional[Throughput]:
    """Jobs reaching RUN_DONE and JOB_FINISHED per bucket (None if there is no event at all)."""
    f = resolve(cursor, filters)
    b = make_buckets(cursor, f, bucket_seconds)
    if b is None:
        return None
    bsql, bparams = bucket_sql(b)
    wsql, wparams = window_sql(f, b)
    scope, sparams = event_scope(f)
    cursor.execute(f"SELECT {bsql} AS b, count(*) FILTER (WHERE e.to_state = {_RUN_DONE}), "
                   f"count(*) FILTER (WHERE e.to_state = {_FINISHED}) "
                   f"FROM {EVENT} e WHERE e.to_state IN ({_RUN_DONE}, {_FINISHED}){wsql}{scope} "
                   "GROUP BY 1", bparams + wparams + sparams)
    out = Throughput(buckets=b, run_done=[0] * b.count, finished=[0] * b.count)
    for i, done, fin in cursor.fetchall():
        if 0 <= i < b.count:
            out.run_done[i], out.finished[i] = int(done), int(fin)
    out.run_done_cumulative = _cumsum(out.run_done)
    out.finished_cumulative = _cumsum(out.finished)
    return out


def _cumsum(values: Sequence[int]) -> list[int]:
    total, out = 0, []
    for v in values:
        total += v
        out.append(total)
    return out


def utilization(cursor: Cursor, filters: Optional[Filters] = None, *,
                bucket_seconds: Optional[float] = None) -> Optional[Utilization]:
    """Running tasks and busy nodes over time (see the module doc for the node rule).

    The runs overlapping the window are the events ending a run after its start (each carries its
    start ``entered_at`` and its ``nodes``) and the jobs RUNNING now (since ``state_since``):
    no pairing of events and no join."""
    f = resolve(cursor, filters)
    b = make_buckets(cursor, f, bucket_seconds)
    if b is None:
        return None
    end = b.start + datetime.timedelta(seconds=b.seconds * b.count)
    scope, sparams = event_scope(f)
    clauses, jparams = job_clauses(f)
    jwhere = "".join(f" AND {c}" for c in clauses)
    # Each run adds (1 task, w nodes) at its start s and removes them at its end e (seconds after
    # the window start; e NULL: still running). Runs are grouped by (start bucket, end bucket):
    # a few groups per bucket, each with its count and the sums giving the time integrals.
    cursor.execute(
        "SELECT floor(s / %s)::int, floor(e / %s)::int, count(*), sum(w), sum(s), sum(w * s), "
        "sum(e), sum(w * e) FROM ("
        f"SELECT date_part('epoch', e.entered_at - %s) AS s, date_part('epoch', e.timestamp - %s) "
        f"AS e, coalesce(e.nodes, 0) AS w FROM {EVENT} e WHERE e.from_state = {_RUNNING} "
        f"AND {_RAN} AND e.timestamp >= %s AND e.entered_at < %s{scope} UNION ALL "
        f"SELECT date_part('epoch', coalesce(j.state_since, j.created_at) - %s), NULL, "
        f"{RUN_NODES_SQL} FROM {JOB} j WHERE j.state = {_RUNNING} "
        f"AND coalesce(j.state_since, j.created_at) < %s{jwhere}) r GROUP BY 1, 2",
        [b.seconds, b.seconds, b.start, b.start, b.start, end] + sparams
        + [b.start, end] + jparams)
    delta_t, delta_n = [0] * b.count, [0.0] * b.count
    mom_t, mom_n = [0.0] * b.count, [0.0] * b.count
    tasks, nodes = 0, 0.0
    for bs, be, n, w, ms, mws, me, mwe in cursor.fetchall():
        if bs < 0:  # running at the window start
            tasks, nodes = tasks + int(n), nodes + float(w)
        elif bs < b.count:
            delta_t[bs] += int(n)
            delta_n[bs] += float(w)
            mom_t[bs] += float(ms)
            mom_n[bs] += float(mws)
        if be is not None and be < b.count:  # ended in the window (never before it)
            delta_t[be] -= int(n)
            delta_n[be] -= float(w)
            mom_t[be] -= float(me)
            mom_n[be] -= float(mwe)
    out = Utilization(buckets=b)
    for i in range(b.count):
        b1 = (i + 1) * b.seconds  # bucket end, seconds after start
        # integral over the bucket = level at its start * width + sum(sign * w * (b1 - t))
        out.avg_running_tasks.append(tasks + (b1 * delta_t[i] - mom_t[i]) / b.seconds)
        out.avg_busy_nodes.append(nodes + (b1 * delta_n[i] - mom_n[i]) / b.seconds)
        tasks += delta_t[i]
        nodes += delta_n[i]
        out.running_tasks.append(tasks)
        out.busy_nodes.append(round(nodes, 9))
    return out


def _runs_query(f: Filters) -> tuple[str, list[Any]]:
    """SQL of the runs ended in the window: an event leaving RUNNING is a whole run, from its
    ``entered_at`` to its ``timestamp``."""
    scope, params = event_scope(f)
    wsql, wparams = window_sql(f)
    return (f"SELECT e.job_id, e.entered_at, e.timestamp, e.to_state, "
            f"date_part('epoch', e.timestamp - e.entered_at) AS secs FROM {EVENT} e "
            f"WHERE e.from_state = {_RUNNING} AND {_RAN} AND e.entered_at IS NOT NULL"
            f"{wsql}{scope}",
            wparams + params)


def job_runtimes(cursor: Cursor, filters: Optional[Filters] = None, *,
                 limit: Optional[int] = None) -> list[Run]:
    """Every run ended in the window, longest first (at most ``limit``)."""
    f = resolve(cursor, filters)
    sql, params = _runs_query(f)
    sql += " ORDER BY secs DESC, job_id"
    if limit is not None:
        sql += " LIMIT %s"
        params.append(int(limit))
    cursor.execute(sql, params)
    return [Run(str(j), s, e, st, float(secs)) for j, s, e, st, secs in cursor.fetchall()]


def runtime_stats(cursor: Cursor, filters: Optional[Filters] = None) -> RuntimeStats:
    """count, mean, p50, p95 (continuous percentiles) and max of run durations in seconds."""
    f = resolve(cursor, filters)
    sql, params = _runs_query(f)
    cursor.execute("SELECT count(*), avg(secs), percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP "
                   f"(ORDER BY secs), max(secs) FROM ({sql}) runs", params)
    n, mean, pct, mx = fetch_one(cursor)
    p50, p95 = pct if pct is not None else (None, None)
    return RuntimeStats(int(n), _float(mean), _float(p50), _float(p95), _float(mx))


def _float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def state_times(cursor: Cursor, filters: Optional[Filters] = None) -> dict[str, StateTime]:
    """Per state (every state, in lifecycle order): a :class:`StateTime` of the window.

    Every event is one whole visit of its ``from_state``, ``[entered_at, timestamp)``, and every
    job is in an open visit of its state since ``state_since``: totals are sums of clipped
    intervals, one pass over the events and one over the jobs, no pairing."""
    f = resolve(cursor, filters)
    lo, hi = f.since, f.until
    scope, sparams = event_scope(f)
    clauses, jparams = job_clauses(f)
    jwhere = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    tot: dict[str, float] = {s: 0.0 for s in STATES}
    ended: dict[str, int] = {s: 0 for s in STATES}
    current: dict[str, int] = {s: 0 for s in STATES}
    # Visits overlapping the window, clipped to it: [max(entered, lo), min(left, hi)).
    left = "least(e.timestamp, %s)" if hi else "e.timestamp"
    entered = "greatest(e.entered_at, %s)" if lo else "e.entered_at"
    where = (" AND e.timestamp >= %s" if lo else "") + (
        " AND e.entered_at < %s" if hi else " AND e.entered_at IS NOT NULL")
    count = "count(*)" + (" FILTER (WHERE e.timestamp < %s)" if hi else "")
    cursor.execute(
        f"SELECT e.from_state, date_part('epoch', sum({left} - {entered})), {count} "
        f"FROM {EVENT} e WHERE true{where}{scope} GROUP BY 1",
        [hi] * bool(hi) + [lo] * bool(lo) + [hi] * bool(hi) + [lo] * bool(lo) + [hi] * bool(hi)
        + sparams)
    for state, total, n in cursor.fetchall():
        if state in tot:
            tot[state] += float(total or 0)
            ended[state] += int(n)
    # Open visits: [state_since, now), both clamped to the window.
    def clamp(t: str) -> tuple[str, list[Any]]:
        sql, params = (f"greatest({t}, %s)", [lo]) if lo else (t, [])
        return (f"least({sql}, %s)", params + [hi]) if hi else (sql, params)

    now_sql, now_params = clamp("now()")
    since_sql, since_params = clamp("coalesce(j.state_since, j.created_at)")
    cursor.execute(
        f"SELECT j.state, count(*), date_part('epoch', sum({now_sql} - {since_sql})) "
        f"FROM {JOB} j{jwhere} GROUP BY j.state", now_params + since_params + jparams)
    for state, n, total in cursor.fetchall():
        if state in tot:
            tot[state] += max(float(total or 0), 0.0)
            current[state] = int(n)
    visits = {s: ended[s] + current[s] for s in STATES}
    return {s: StateTime(max(tot[s], 0.0), ended[s], tot[s] / visits[s] if visits[s] else None,
                         current[s]) for s in STATES}


def state_counts(cursor: Cursor, filters: Optional[Filters] = None) -> dict[str, int]:
    """Jobs per current state (states with no jobs omitted); the time window is ignored."""
    f = filters or Filters()
    clauses, params = job_clauses(f)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    cursor.execute(f"SELECT j.state, count(*) FROM {JOB} j{where} GROUP BY j.state", params)
    counts = dict((s, int(n)) for s, n in cursor.fetchall())
    return {s: counts[s] for s in STATES if s in counts}


def summary(cursor: Cursor, filters: Optional[Filters] = None, *, recent_seconds: float = 3600,
            top_errors: int = 5) -> dict[str, Any]:
    """A compact overview for ``balsam report``, ``balsam top`` and the web dashboard.

    Keys: ``counts`` (jobs per state, all time), ``total``; ``recent`` = {``seconds``,
    ``run_done``, ``finished``, ``finished_per_hour``, ``avg_busy_nodes``} over the last
    ``recent_seconds`` before ``until`` (default: the database's now); ``running_tasks`` and
    ``busy_nodes`` at that moment; ``runtime`` (:class:`RuntimeStats` as a dict) and ``errors``
    (top messages, each a dict of :class:`ErrorGroup`) over the filters' window; ``window``
    (since, until as given, after session narrowing)."""
    f = resolve(cursor, filters)
    counts = state_counts(cursor, f)
    end = f.until
    if end is None:
        cursor.execute("SELECT now()")
        end = fetch_one(cursor)[0]
    start = end - datetime.timedelta(seconds=recent_seconds)
    recent = replace(f, since=max(start, f.since) if f.since else start, until=end)
    span = max((end - recent.since).total_seconds(), 1e-9) if recent.since else recent_seconds
    tp = throughput(cursor, recent, bucket_seconds=span)
    ut = utilization(cursor, recent, bucket_seconds=span)
    rt = runtime_stats(cursor, f)
    er = errors(cursor, f, top=top_errors)
    return {
        "counts": counts,
        "total": sum(counts.values()),
        "recent": {
            "seconds": span,
            "run_done": tp.run_done[0] if tp else 0,
            "finished": tp.finished[0] if tp else 0,
            "finished_per_hour": (tp.finished[0] if tp else 0) * 3600.0 / span,
            "avg_busy_nodes": ut.avg_busy_nodes[0] if ut else 0.0,
        },
        "running_tasks": ut.running_tasks[-1] if ut else 0,
        "busy_nodes": ut.busy_nodes[-1] if ut else 0.0,
        "runtime": vars(rt),
        "errors": [vars(g) for g in er.groups] if er else [],
        "window": {"since": f.since, "until": f.until},
    }
