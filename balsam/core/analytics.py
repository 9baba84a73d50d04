"""Campaign analytics computed in SQL from the recorded state events (no Django import).

Every function takes a DB-API cursor (Django's or a bare psycopg2 one, ``%s`` parameters) and an
optional :class:`Filters`. The data: ``core_jobevent(job_id, timestamp, from_state, to_state,
message)`` rows written by :func:`balsam.core.lifecycle.transition`, and a job's creation time
``core_balsamjob.created_at`` (creation has no event).

Definitions (the contracts the tests check):

- A *run* is the interval from an event entering RUNNING to the job's next event, which always
  leaves RUNNING (RUN_DONE, RUN_ERROR, RUN_TIMEOUT or USER_KILLED). A run still open is running.
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

Large campaigns: each report is one or two aggregate statements whose cost is linear in the
events read (state times and utilization use sums of clamped times, never pairing events), so
a million jobs take about a second or less; see ``benchmarks/bench_analytics.py``.
"""
from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from balsam.core import schema
from balsam.core.states import STATES
from balsam.errors import NotFound

JOB, EVENT, SESSION = schema.JOB_TABLE, schema.EVENT_TABLE, schema.SESSION_TABLE
UTC = datetime.timezone.utc
RUN_END_STATES = ("RUN_DONE", "RUN_ERROR", "RUN_TIMEOUT", "USER_KILLED")
ERROR_STATES = ("RUN_ERROR", "FAILED")
NICE_BUCKETS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
                43200, 86400, 172800, 604800)
"""Bucket sizes (seconds) picked automatically: the smallest giving at most ``max_buckets``."""
_NODE_WEIGHT = ("CASE WHEN j.num_nodes = 1 AND j.ranks_per_node = 1 "
                "THEN 1.0 / j.node_packing_count ELSE j.num_nodes END")


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


# ---- filters ------------------------------------------------------------------------------------

def _aware(when: Optional[datetime.datetime]) -> Optional[datetime.datetime]:
    if when is not None and when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _job_clauses(f: Filters) -> tuple[list[str], list[Any]]:
    """Conditions on the job table (alias ``j``) for the job filters of ``f``."""
    clauses: list[str] = []
    params: list[Any] = []
    if f.workflow is not None:
        clauses.append("j.workflow = %s")
        params.append(f.workflow)
    if f.workflow_contains is not None:
        clauses.append("j.workflow LIKE %s")
        params.append(_like(f.workflow_contains))
    if f.app is not None:
        clauses.append("j.application = %s")
        params.append(f.app)
    if f.session is not None:
        clauses.append(f"j.job_id IN (SELECT job_id FROM {EVENT} WHERE to_state = 'RUNNING' "
                       "AND (message LIKE %s OR message LIKE %s))")
        params += [f"%session {int(f.session)}", f"%session {int(f.session)} %"]
    if f.job_query is not None:
        clauses.append(f"j.job_id IN ({f.job_query[0]})")
        params += list(f.job_query[1])
    return clauses, params


def _event_scope(f: Filters) -> tuple[str, list[Any]]:
    """`` AND ...`` restricting events (alias ``e``) to the filtered jobs, or ''."""
    clauses, params = _job_clauses(f)
    if not clauses:
        return "", []
    return f" AND e.job_id IN (SELECT j.job_id FROM {JOB} j WHERE {' AND '.join(clauses)})", params


def resolve(cursor: Any, filters: Optional[Filters]) -> Filters:
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


def make_buckets(cursor: Any, f: Filters, bucket_seconds: Optional[float] = None,
                 max_buckets: int = 60) -> Optional[Buckets]:
    """Buckets covering ``[since or first event, until or last event]`` of the filtered jobs;
    None when there is no event to cover. Without ``bucket_seconds`` the size is the smallest of
    :data:`NICE_BUCKETS` giving at most ``max_buckets`` buckets."""
    lo, hi = f.since, f.until
    if lo is None or hi is None:
        scope, params = _event_scope(f)
        cursor.execute(f"SELECT min(e.timestamp), max(e.timestamp) FROM {EVENT} e "
                       f"WHERE true{scope}", params)
        first, last = cursor.fetchone()
        if first is None:
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


def _bucket_sql(b: Buckets) -> tuple[str, list[Any]]:
    """SQL of the bucket index of event ``e`` (-1 before the window), and its parameters."""
    return ("CASE WHEN e.timestamp < %s THEN -1 ELSE "
            "floor(extract(epoch FROM e.timestamp - %s) / %s)::int END"), [b.start, b.start, b.seconds]


def _window_sql(f: Filters, b: Optional[Buckets] = None) -> tuple[str, list[Any]]:
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


# ---- reports ------------------------------------------------------------------------------------

def throughput(cursor: Any, filters: Optional[Filters] = None, *,
               bucket_seconds: Optional[float] = None) -> Optional[Throughput]:
    """Jobs reaching RUN_DONE and JOB_FINISHED per bucket (None if there is no event at all)."""
    f = resolve(cursor, filters)
    b = make_buckets(cursor, f, bucket_seconds)
    if b is None:
        return None
    bsql, bparams = _bucket_sql(b)
    wsql, wparams = _window_sql(f, b)
    scope, sparams = _event_scope(f)
    cursor.execute(f"SELECT {bsql} AS b, count(*) FILTER (WHERE e.to_state = 'RUN_DONE'), "
                   "count(*) FILTER (WHERE e.to_state = 'JOB_FINISHED') "
                   f"FROM {EVENT} e WHERE e.to_state IN ('RUN_DONE', 'JOB_FINISHED'){wsql}{scope} "
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


def utilization(cursor: Any, filters: Optional[Filters] = None, *,
                bucket_seconds: Optional[float] = None) -> Optional[Utilization]:
    """Running tasks and busy nodes over time (see the module doc for the node rule)."""
    f = resolve(cursor, filters)
    b = make_buckets(cursor, f, bucket_seconds)
    if b is None:
        return None
    bsql, bparams = _bucket_sql(b)
    end = b.start + datetime.timedelta(seconds=b.seconds * b.count)
    scope, sparams = _event_scope(f)
    # Each event entering RUNNING adds (1 task, w nodes), each leaving removes them. Per bucket:
    # the net change, and its moment sum(sign * w * t) from which the time integral follows.
    cursor.execute(
        f"SELECT b, sum(sg), sum(sg * w), sum(sg * t), sum(sg * w * t) FROM ("
        f"SELECT {bsql} AS b, CASE WHEN e.to_state = 'RUNNING' THEN 1 ELSE -1 END AS sg, "
        f"{_NODE_WEIGHT} AS w, extract(epoch FROM e.timestamp - %s)::float8 AS t "
        f"FROM {EVENT} e JOIN {JOB} j ON j.job_id = e.job_id "
        "WHERE (e.to_state = 'RUNNING') <> (e.from_state = 'RUNNING') "
        f"AND e.timestamp < %s{scope}) x GROUP BY b",
        bparams + [b.start, end] + sparams)
    delta_t, delta_n = [0] * b.count, [0.0] * b.count
    mom_t, mom_n = [0.0] * b.count, [0.0] * b.count
    tasks, nodes = 0, 0.0
    for i, dt, dn, mt, mn in cursor.fetchall():
        if i < 0:
            tasks, nodes = int(dt), float(dn)
        elif i < b.count:
            delta_t[i], delta_n[i], mom_t[i], mom_n[i] = int(dt), float(dn), float(mt), float(mn)
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


def errors(cursor: Any, filters: Optional[Filters] = None, *, bucket_seconds: Optional[float] = None,
           top: int = 10) -> Optional[Errors]:
    """RUN_ERROR/FAILED events per bucket, and the ``top`` messages by count (ties: latest
    first), each with one example job id (None if there is no event at all)."""
    f = resolve(cursor, filters)
    b = make_buckets(cursor, f, bucket_seconds)
    if b is None:
        return None
    bsql, bparams = _bucket_sql(b)
    wsql, wparams = _window_sql(f, b)
    scope, sparams = _event_scope(f)
    where = f"FROM {EVENT} e WHERE e.to_state IN ('RUN_ERROR', 'FAILED'){wsql}{scope}"
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


_RUNS_SQL = f"""
SELECT job_id, start, timestamp, to_state, extract(epoch FROM timestamp - start)::float8 AS secs
FROM (
    SELECT e.job_id, e.timestamp, e.from_state, e.to_state,
           lag(e.timestamp) OVER w AS start, lag(e.to_state) OVER w AS prev
    FROM {EVENT} e
    WHERE (e.to_state = 'RUNNING' OR e.from_state = 'RUNNING'){{scope}}{{upto}}
    WINDOW w AS (PARTITION BY e.job_id ORDER BY e.id)
) r
WHERE from_state = 'RUNNING' AND prev = 'RUNNING'{{since}}
"""


def _runs_query(f: Filters) -> tuple[str, list[Any]]:
    scope, params = _event_scope(f)
    upto = " AND e.timestamp < %s" if f.until else ""
    since = " AND timestamp >= %s" if f.since else ""
    extra = ([f.until] if f.until else []) + ([f.since] if f.since else [])
    return _RUNS_SQL.format(scope=scope, upto=upto, since=since), params + extra


def job_runtimes(cursor: Any, filters: Optional[Filters] = None, *,
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


def runtime_stats(cursor: Any, filters: Optional[Filters] = None) -> RuntimeStats:
    """count, mean, p50, p95 (continuous percentiles) and max of run durations in seconds."""
    f = resolve(cursor, filters)
    sql, params = _runs_query(f)
    cursor.execute("SELECT count(*), avg(secs), percentile_cont(0.5) WITHIN GROUP (ORDER BY secs), "
                   f"percentile_cont(0.95) WITHIN GROUP (ORDER BY secs), max(secs) FROM ({sql}) runs",
                   params)
    n, mean, p50, p95, mx = cursor.fetchone()
    return RuntimeStats(int(n), _float(mean), _float(p50), _float(p95), _float(mx))


def _float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def state_times(cursor: Any, filters: Optional[Filters] = None) -> dict[str, StateTime]:
    """Per state (every state, in lifecycle order): a :class:`StateTime` of the window.

    Computed without pairing events: each visit contributes ``c(exit) - c(entry)`` where ``c``
    clamps a time to the window (an open visit exits at ``now()``), so totals are sums."""
    f = resolve(cursor, filters)
    clauses, jparams = _job_clauses(f)
    jwhere = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    scope, sparams = _event_scope(f)
    lo = f.since or datetime.datetime(2000, 1, 1, tzinfo=UTC)
    hi = f.until
    # c(t) in seconds after lo, clamped to [0, until - lo]
    clamp = ("least(greatest(extract(epoch FROM {t} - %s)::float8, 0), "
             "coalesce(extract(epoch FROM %s::timestamptz - %s)::float8, 'infinity'))")
    cp = [lo, hi, lo]
    tot: dict[str, float] = {s: 0.0 for s in STATES}
    ended: dict[str, int] = {s: 0 for s in STATES}
    current: dict[str, int] = {s: 0 for s in STATES}
    in_window = "e.timestamp >= %s" + (" AND e.timestamp < %s" if hi else "")
    wp = [lo] + ([hi] if hi else [])
    cursor.execute(
        f"SELECT from_state, to_state, sum({clamp.format(t='e.timestamp')}), "
        f"count(*) FILTER (WHERE {in_window}) FROM {EVENT} e WHERE true{scope} "
        "GROUP BY GROUPING SETS ((from_state), (to_state))", cp + wp + sparams)
    for src, dst, total, n in cursor.fetchall():
        if src is not None and src in tot:
            tot[src] += float(total)
            ended[src] += int(n)
        elif dst is not None and dst in tot:
            tot[dst] -= float(total)
    cursor.execute(
        f"SELECT j.state, count(*), sum({clamp.format(t='j.created_at')}), "
        f"{clamp.format(t='now()')} FROM {JOB} j{jwhere} GROUP BY j.state",
        cp + cp + jparams)
    for state, n, created, now_c in cursor.fetchall():
        tot["CREATED"] -= float(created)
        if state in tot:
            tot[state] += int(n) * float(now_c)
            current[state] = int(n)
    visits = {s: ended[s] + current[s] for s in STATES}
    return {s: StateTime(max(tot[s], 0.0), ended[s], tot[s] / visits[s] if visits[s] else None,
                         current[s]) for s in STATES}


def state_counts(cursor: Any, filters: Optional[Filters] = None) -> dict[str, int]:
    """Jobs per current state (states with no jobs omitted); the time window is ignored."""
    f = filters or Filters()
    clauses, params = _job_clauses(f)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    cursor.execute(f"SELECT j.state, count(*) FROM {JOB} j{where} GROUP BY j.state", params)
    counts = dict((s, int(n)) for s, n in cursor.fetchall())
    return {s: counts[s] for s in STATES if s in counts}


def summary(cursor: Any, filters: Optional[Filters] = None, *, recent_seconds: float = 3600,
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
        end = cursor.fetchone()[0]
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


_CLASSIC = ("process_job_times", "throughput_report", "utilization_report", "error_report")


def __getattr__(name: str) -> Any:
    """The classic helpers live in :mod:`balsam.core.analytics_classic` (loaded on first use)."""
    if name in _CLASSIC:
        from balsam.core import analytics_classic

        return getattr(analytics_classic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
