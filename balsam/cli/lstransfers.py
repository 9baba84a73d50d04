"""``balsam ls transfers``: the transfer items of jobs (state, batch, endpoint, bytes), or with
``--verbose`` the batches; ``--state`` an item state, ``--id`` part of a job id, ``--wf`` part
of a workflow name; ``--quiet`` the item ids; ``--format json`` every column."""
from __future__ import annotations

import argparse
from typing import Any

from balsam.cli import jobquery as jq
from balsam.core import schema
from balsam.core.reads import jobs as reads_jobs
from balsam.core.render import table
from balsam.core.sql import fetch_dicts, like_contains
from balsam.errors import BalsamError

ITEM_STATES = schema.TRANSFER_ITEM_STATES
ITEM, BATCH, JOB = schema.TRANSFER_ITEM_TABLE, schema.TRANSFER_BATCH_TABLE, schema.JOB_TABLE
COLUMNS = ["id", "job", "direction", "state", "protocol", "endpoint", "batch", "bytes",
           "attempts", "source", "slot", "error"]
BATCH_COLUMNS = ["id", "protocol", "endpoint", "direction", "state", "items", "bytes",
                 "started_at", "seconds", "task_id", "message"]


def _where(args: argparse.Namespace) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if args.state is not None:
        if args.state not in ITEM_STATES:
            raise BalsamError(f"{args.state!r} is not a transfer state (one of "
                              f"{', '.join(ITEM_STATES)})")
        clauses.append("i.state = %s")
        params.append(args.state)
    if args.id is not None:
        sql, p = reads_jobs.id_condition(args.id, "i.job_id")
        clauses.append(sql)
        params += p
    if args.wf is not None:
        clauses.append("j.workflow LIKE %s")
        params.append(like_contains(args.wf))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def transfers_view(cur: Any, args: argparse.Namespace) -> str:
    where, params = _where(args)
    limit = jq.ls_limit()
    source = (f"{ITEM} i JOIN {JOB} j ON j.job_id = i.job_id "
              f"LEFT JOIN {BATCH} b ON b.id = i.batch_id{where}")
    if args.quiet:
        cur.execute(f"SELECT i.id FROM {source} ORDER BY i.id LIMIT %s", params + [limit])
        return "".join(f"{r[0]}\n" for r in cur.fetchall())
    if args.verbose:
        return _batches(cur, source, params, args)
    cur.execute(f"""SELECT i.*, i.batch_id AS batch, i.size AS bytes, left(i.job_id::text, 8) AS job,
                           b.state AS batch_state FROM {source} ORDER BY i.id LIMIT %s""",
                params + [limit + 1])
    rows = fetch_dicts(cur)
    hidden = max(0, len(rows) - limit)
    rows = rows[:limit]
    if args.format == "json":
        for r in rows:
            for k in ("batch", "bytes", "job"):
                r.pop(k)
        return jq.dumps([jq.jsonable(r) for r in rows])
    if not rows:
        return "No transfers found matching query"
    for r in rows:
        r["source"] = r["source"] if len(r["source"]) <= 48 else "..." + r["source"][-45:]
        r["error"] = r["error"][:60]
        r["bytes"] = "" if r["bytes"] is None else r["bytes"]
        r["batch"] = "" if r["batch"] is None else r["batch"]
    return table(rows, COLUMNS) + (jq.hidden_notice(hidden) if hidden else "")


def _batches(cur: Any, source: str, params: list[Any], args: argparse.Namespace) -> str:
    cur.execute(f"""SELECT tb.*, tb.item_count AS items,
                           round(EXTRACT(EPOCH FROM COALESCE(tb.finished_at, now())
                                         - tb.started_at)::numeric, 1) AS seconds
                    FROM {BATCH} tb WHERE tb.id IN (SELECT i.batch_id FROM {source})
                    ORDER BY tb.id""", params)
    rows = fetch_dicts(cur)
    if args.format == "json":
        return jq.dumps([jq.jsonable(r) for r in rows])
    if not rows:
        return "No transfer batches found matching query"
    for r in rows:
        r["started_at"] = r["started_at"].strftime("%Y-%m-%d %H:%M:%S")
        r["message"] = r["message"][:60]
    return table(rows, BATCH_COLUMNS)
