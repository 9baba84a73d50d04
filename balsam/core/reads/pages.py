"""The dashboard's job table: filters, keyset pages and bounded counts, on a DB-API cursor
(Django-free; the web's views pass Django's cursor, the CLI could pass psycopg2's).

The jobs table pages by keyset (the sort column, then ``job_id``): a page costs an index walk of
one page, however deep, and never an OFFSET or a COUNT over the whole table. Counts above
:data:`COUNT_CAP` are the planner's estimate, marked as such.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from balsam.core import schema
from balsam.core.sql import fetch_dicts, scalar
from balsam.core.states import STATES

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

JOB = schema.JOB_TABLE

PAGE_SIZES = (25, 50, 100, 200)
COUNT_CAP = 10_000
SORTS = {  # URL name -> (column, SQL type of a cursor value)
    "created": ("created_at", "timestamptz"),
    "name": ("name", "text"),
    "workflow": ("workflow", "text"),
    "app": ("application", "text"),
    "state": ("state", "text"),
    "nodes": ("num_nodes", "integer"),
}
LIST_COLUMNS = ("job_id", "name", "workflow", "application", "state", "num_nodes",
                "ranks_per_node", "node_packing_count", "wall_time_minutes", "created_at")


@dataclass
class JobFilter:
    """The jobs table's filters, as given in the URL (empty means no filter)."""

    state: str = ""
    workflow: str = ""
    app: str = ""
    name: str = ""
    id_prefix: str = ""

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.state in STATES:
            clauses.append("state = %s")
            params.append(self.state)
        if self.workflow:
            clauses.append("workflow = %s")
            params.append(self.workflow)
        if self.app:
            clauses.append("application = %s")
            params.append(self.app)
        if self.name:
            clauses.append("strpos(lower(name), lower(%s)) > 0")
            params.append(self.name)
        prefix = "".join(c for c in self.id_prefix.lower() if c in "0123456789abcdef-")
        if prefix:
            # A uuid range, so the primary key index answers it.
            hexdigits = prefix.replace("-", "")[:32]
            lo, hi = hexdigits.ljust(32, "0"), hexdigits.ljust(32, "f")
            clauses.append("job_id BETWEEN %s::uuid AND %s::uuid")
            params += [lo, hi]
        return (" AND ".join(clauses) or "TRUE"), params


@dataclass
class JobPage:
    jobs: list[dict[str, Any]]
    next_cursor: str = ""
    prev_cursor: str = ""
    count: int = 0
    count_exact: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def encode_cursor(value: Any, job_id: Any) -> str:
    raw = json.dumps([value.isoformat() if hasattr(value, "isoformat") else value, str(job_id)])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Optional[tuple[Any, str]]:
    """(value, job_id) from :func:`encode_cursor`, or None for a malformed cursor."""
    try:
        value, job_id = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        schema.parse_uuid(job_id)
        return value, job_id
    except Exception:
        return None


def job_page(cur: Cursor, flt: JobFilter, sort: str = "created", descending: bool = True,
             after: str = "", before: str = "", size: int = 50) -> JobPage:
    """One page of jobs in (sort column, job_id) order, after or before a cursor."""
    column, kind = SORTS.get(sort, SORTS["created"])
    size = size if size in PAGE_SIZES else 50
    where, params = flt.where()
    key = decode_cursor(before or after)
    backwards = bool(before) and key is not None
    # Rows go forward in display order; a "previous" page is read in reverse and flipped.
    desc = descending != backwards
    if key is not None:
        op = "<" if desc else ">"
        where += f" AND ({column}, job_id) {op} (%s::{kind}, %s::uuid)"
        params = params + [key[0], key[1]]
    order = "DESC" if desc else "ASC"
    cur.execute(f"SELECT {', '.join(LIST_COLUMNS)} FROM {JOB} WHERE {where} "
                f"ORDER BY {column} {order}, job_id {order} LIMIT %s", params + [size + 1])
    found = fetch_dicts(cur)
    more = len(found) > size
    found = found[:size]
    if backwards:
        found.reverse()
    page = JobPage(found)
    if found:
        first, last = found[0], found[-1]
        if more or backwards:
            page.next_cursor = encode_cursor(last[column], last["job_id"])
        if (more and backwards) or (key is not None and not backwards):
            page.prev_cursor = encode_cursor(first[column], first["job_id"])
    if key is None and not more:
        page.count = len(found)  # the whole match fits on this page: no second scan
    else:
        page.count, page.count_exact = count_jobs(cur, flt)
    return page


def count_jobs(cur: Cursor, flt: JobFilter) -> tuple[int, bool]:
    """Exact count up to :data:`COUNT_CAP`, else the planner's estimate (and False)."""
    where, params = flt.where()
    cur.execute(f"SELECT count(*) FROM (SELECT 1 FROM {JOB} WHERE {where} LIMIT %s) s",
                params + [COUNT_CAP + 1])
    n = int(scalar(cur))
    if n <= COUNT_CAP:
        return n, True
    cur.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM {JOB} WHERE {where}", params)
    plan = scalar(cur)
    plan = json.loads(plan) if isinstance(plan, str) else plan
    return max(int(plan[0]["Plan"]["Plan Rows"]), n), False


TRANSFER_ROWS = 50
"""Batches and failed items the Transfers page lists (newest first)."""


def transfers(cur: Cursor) -> dict[str, Any]:
    """The Transfers page: items by state, recent throughput (:mod:`balsam.core
    .analytics_transfers`), the latest batches and the latest failed items."""
    from balsam.core import analytics_transfers

    summary = analytics_transfers.summary(cur)
    cur.execute(f"""SELECT id, protocol, endpoint, direction, state, item_count, bytes, task_id,
                           started_at, finished_at, message,
                           round(EXTRACT(EPOCH FROM COALESCE(finished_at, now()) - started_at)
                                 ::numeric, 1) AS seconds
                    FROM {schema.TRANSFER_BATCH_TABLE} ORDER BY id DESC LIMIT %s""",
                [TRANSFER_ROWS])
    batches = fetch_dicts(cur)
    cur.execute(f"""SELECT i.id, i.job_id, j.name, i.direction, i.protocol, i.endpoint, i.source,
                           i.attempts, i.error
                    FROM {schema.TRANSFER_ITEM_TABLE} i JOIN {JOB} j ON j.job_id = i.job_id
                    WHERE i.state = 'failed' ORDER BY i.finished_at DESC NULLS LAST, i.id DESC
                    LIMIT %s""", [TRANSFER_ROWS])
    return {"summary": summary, "batches": batches, "failed": fetch_dicts(cur),
            "human": analytics_transfers.human_bytes}
