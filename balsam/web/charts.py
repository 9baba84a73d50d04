"""Series for the overview charts, from :mod:`balsam.core.analytics`: throughput (cumulative
RUN_DONE and JOB_FINISHED events) and utilization (running tasks and busy nodes, packing counts
taken into account) over the span of recorded events, in at most 60 buckets.

Served as JSON by ``/api/charts/`` and drawn by ``static/dashboard.js`` on a canvas, so the
overview page itself never waits for the event scan. Results are cached for :data:`TTL` seconds,
or ten times as long as they took to compute (seconds over a million jobs), so open dashboards
keep the database busy at most a tenth of the time.
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from balsam.core import analytics
from balsam.core.states import State

if TYPE_CHECKING:
    from balsam.core.analytics_scope import Buckets
    from balsam.db.dbapi import Cursor

TTL = 10.0
_cache: dict[str, tuple[float, dict[str, Any]]] = {}
_lock = threading.Lock()


def chart_data(cur: Cursor) -> dict[str, Any]:
    """``{"throughput": chart, "utilization": chart}``, each chart ``{"times": [iso...],
    "series": [{"label", "values"}...]}`` (no times when nothing has been recorded)."""
    with _lock:
        hit = _cache.get("charts")
        if hit and time.monotonic() < hit[0]:
            return hit[1]
    started = time.monotonic()
    data = _compute(cur)
    took = time.monotonic() - started
    with _lock:
        _cache["charts"] = (time.monotonic() + max(TTL, 10 * took), data)
    return data


def _times(buckets: Buckets) -> list[str]:
    return [t.isoformat() for t in buckets.times]


def _compute(cur: Cursor) -> dict[str, Any]:
    empty: dict[str, Any] = {"times": [], "series": []}
    out = {"throughput": empty, "utilization": empty}
    tp = analytics.throughput(cur)
    if tp is not None:
        out["throughput"] = {"times": _times(tp.buckets), "series": [
            {"label": State.RUN_DONE.value, "values": tp.run_done_cumulative},
            {"label": State.JOB_FINISHED.value, "values": tp.finished_cumulative}]}
    ut = analytics.utilization(cur)
    if ut is not None:
        out["utilization"] = {"times": _times(ut.buckets), "series": [
            {"label": "running tasks", "values": ut.running_tasks},
            {"label": "busy nodes", "values": ut.busy_nodes}]}
    return out
