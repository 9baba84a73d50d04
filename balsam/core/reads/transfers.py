"""Transfer items and batches for ``balsam ls transfers`` on a DB-API cursor (Django-free).

A selection is a WHERE clause over items ``i`` joined to their job ``j`` (and batch ``b``), from
:func:`transfer_where`; the listings are in item (or batch) number order."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from balsam.core import schema
from balsam.core.reads.jobs import id_condition
from balsam.core.sql import fetch_dicts, like_contains
from balsam.errors import BalsamError

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

ITEM, BATCH, JOB = schema.TRANSFER_ITEM_TABLE, schema.TRANSFER_BATCH_TABLE, schema.JOB_TABLE
ITEM_STATES = schema.TRANSFER_ITEM_STATES


def transfer_where(state: Optional[str] = None, id_text: Optional[str] = None,
                   wf: Optional[str] = None) -> tuple[str, list[Any]]:
    """``(WHERE clause or '', params)``: items in ``state``, of jobs whose id contains ``id_text``,
    in workflows containing ``wf``; BalsamError for an unknown item state."""
    clauses: list[str] = []
    params: list[Any] = []
    if state is not None:
        if state not in ITEM_STATES:
            raise BalsamError(f"{state!r} is not a transfer state (one of {', '.join(ITEM_STATES)})")
        clauses.append("i.state = %s")
        params.append(state)
    if id_text is not None:
        sql, p = id_condition(id_text, "i.job_id")
        clauses.append(sql)
        params += p
    if wf is not None:
        clauses.append("j.workflow LIKE %s")
        params.append(like_contains(wf))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _source(where: str) -> str:
    return f"{ITEM} i JOIN {JOB} j ON j.job_id = i.job_id LEFT JOIN {BATCH} b ON b.id = i.batch_id{where}"


def item_ids(cur: Cursor, where: str, params: list[Any], limit: int) -> list[int]:
    """The numbers of the first ``limit`` selected items."""
    cur.execute(f"SELECT i.id FROM {_source(where)} ORDER BY i.id LIMIT %s", params + [limit])
    return [int(r[0]) for r in cur.fetchall()]


def items(cur: Cursor, where: str, params: list[Any], limit: int) -> list[dict[str, Any]]:
    """The first ``limit + 1`` selected items (every column, plus ``batch``, ``bytes``, ``job``
    (the id's first 8 characters) and ``batch_state``): one past ``limit`` says more match."""
    cur.execute(f"""SELECT i.*, i.batch_id AS batch, i.size AS bytes, left(i.job_id::text, 8) AS job,
                           b.state AS batch_state FROM {_source(where)} ORDER BY i.id LIMIT %s""",
                params + [limit + 1])
    return fetch_dicts(cur)


def batches(cur: Cursor, where: str, params: list[Any]) -> list[dict[str, Any]]:
    """The batches of the selected items (every column, plus ``items`` and ``seconds``: how long
    it ran, or has run so far)."""
    cur.execute(f"""SELECT tb.*, tb.item_count AS items,
                           round(EXTRACT(EPOCH FROM COALESCE(tb.finished_at, now())
                                         - tb.started_at)::numeric, 1) AS seconds
                    FROM {BATCH} tb WHERE tb.id IN (SELECT i.batch_id FROM {_source(where)})
                    ORDER BY tb.id""", params)
    return fetch_dicts(cur)
