"""Series for the overview charts: throughput (cumulative RUN_DONE events) and utilization
(running tasks) over the span of recorded events, at most 7 days, in :data:`BUCKETS` bins.

Served as JSON by ``/api/charts/`` and drawn by ``static/dashboard.js`` on a canvas, so the
overview page itself never waits for the event scan. Results are cached for :data:`TTL` seconds:
a wall of open dashboards costs one scan per interval.
"""
from __future__ import annotations

import datetime
import threading
import time
from typing import Any

from balsam.web.queries import EVENT, JOB, event_span

BUCKETS = 60
MAX_SPAN = datetime.timedelta(days=7)
TTL = 10.0
_cache: dict[str, tuple[float, dict[str, Any]]] = {}
_lock = threading.Lock()


def chart_data(cur: Any) -> dict[str, Any]:
    """{"start", "end", "step_seconds", "throughput": [[iso, cumulative]], "utilization":
    [[iso, running]]} (empty lists when nothing has been recorded)."""
    with _lock:
        hit = _cache.get("charts")
        if hit and time.monotonic() - hit[0] < TTL:
            return hit[1]
    data = _compute(cur)
    with _lock:
        _cache["charts"] = (time.monotonic(), data)
    return data


def _compute(cur: Any) -> dict[str, Any]:
    first, last = event_span(cur)
    if first is None:
        return {"start": None, "end": None, "step_seconds": 0, "throughput": [], "utilization": []}
    now = datetime.datetime.now(datetime.timezone.utc)
    end = max(last, now) if now - last < MAX_SPAN else last
    start = max(first, end - MAX_SPAN)
    step = max((end - start) / BUCKETS, datetime.timedelta(seconds=1))
    cur.execute(f"""
        SELECT date_bin(%s, timestamp, %s) AS b,
               count(*) FILTER (WHERE to_state = 'RUN_DONE'),
               count(*) FILTER (WHERE to_state = 'RUNNING')
                 - count(*) FILTER (WHERE from_state = 'RUNNING')
        FROM {EVENT}
        WHERE timestamp >= %s AND timestamp <= %s
          AND (to_state IN ('RUN_DONE', 'RUNNING') OR from_state = 'RUNNING')
        GROUP BY b ORDER BY b""", [step, start, start, end])
    bins = {b: (int(done), int(net)) for b, done, net in cur.fetchall()}
    cur.execute(f"SELECT count(*) FROM {JOB} WHERE state = 'RUNNING'")
    running = int(cur.fetchone()[0]) - sum(net for _, net in bins.values())
    done = 0
    throughput, utilization = [], []
    n = int((end - start) / step) + 1
    for i in range(n):
        t = start + i * step
        d, net = bins.get(t, (0, 0))
        done += d
        running += net
        throughput.append([t.isoformat(), done])
        utilization.append([t.isoformat(), max(running, 0)])
    return {"start": start.isoformat(), "end": end.isoformat(),
            "step_seconds": step.total_seconds(), "throughput": throughput,
            "utilization": utilization}
