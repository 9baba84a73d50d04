"""Transfer analytics in SQL: items by state, and the throughput of items and bytes that
arrived in a window (``balsam report``, the dashboard's Transfers tab)."""
from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any, Optional

from balsam.core import schema
from balsam.core.analytics_scope import Filters, job_clauses
from balsam.core.sql import scalar
from balsam.db.dbapi import fetch_one

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

ITEM, BATCH, JOB = schema.TRANSFER_ITEM_TABLE, schema.TRANSFER_BATCH_TABLE, schema.JOB_TABLE


def _scope(f: Filters) -> tuple[str, list[Any]]:
    clauses, params = job_clauses(f)
    if not clauses:
        return "", []
    return (f" AND i.job_id IN (SELECT j.job_id FROM {JOB} j WHERE {' AND '.join(clauses)})",
            params)


def summary(cursor: Cursor, f: Optional[Filters] = None, recent_seconds: float = 3600
            ) -> dict[str, Any]:
    """``counts`` (items by state), ``bytes`` (of done items), and ``recent``: items and bytes
    that arrived in the last ``recent_seconds`` (or in ``f``'s window) with their rates per
    second, and the batches that ended then."""
    f = f or Filters()
    scope, params = _scope(f)
    cursor.execute(f"""SELECT i.state, count(*), COALESCE(sum(i.size), 0) FROM {ITEM} i
                       WHERE true{scope} GROUP BY i.state""", params)
    counts = {state: 0 for state in schema.TRANSFER_ITEM_STATES}
    total_bytes = 0
    for state, n, size in cursor.fetchall():
        counts[state] = int(n)
        total_bytes += int(size) if state == "done" else 0
    cursor.execute("SELECT now()")
    now = scalar(cursor)
    until = f.until or now
    since = f.since or until - datetime.timedelta(seconds=recent_seconds)
    cursor.execute(f"""SELECT count(*), COALESCE(sum(i.size), 0), count(DISTINCT i.batch_id)
                       FROM {ITEM} i WHERE i.state = 'done' AND i.finished_at >= %s
                         AND i.finished_at < %s{scope}""", [since, until] + params)
    items, size, batches = fetch_one(cursor)
    seconds = max((until - since).total_seconds(), 1e-9)
    return {"counts": counts, "bytes": total_bytes,
            "recent": {"seconds": seconds, "items": int(items), "bytes": int(size),
                       "batches": int(batches), "items_per_second": int(items) / seconds,
                       "bytes_per_second": int(size) / seconds}}


def human_bytes(n: float) -> str:
    """``n`` bytes as B, kB, MB, GB or TB (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
