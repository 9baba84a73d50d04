"""``balsam ls transfers``: the transfer items of jobs (state, batch, endpoint, bytes), or with
``--verbose`` the batches; ``--state`` an item state, ``--id`` part of a job id, ``--wf`` part
of a workflow name; ``--quiet`` the item ids; ``--format json`` every column."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from balsam.cli import jobquery as jq
from balsam.core.reads import transfers
from balsam.core.render import table

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

COLUMNS = ["id", "job", "direction", "state", "protocol", "endpoint", "batch", "bytes",
           "attempts", "source", "slot", "error"]
BATCH_COLUMNS = ["id", "protocol", "endpoint", "direction", "state", "items", "bytes",
                 "started_at", "seconds", "task_id", "message"]


def transfers_view(cur: Cursor, args: argparse.Namespace) -> str:
    where, params = transfers.transfer_where(args.state, args.id, args.wf)
    limit = jq.ls_limit()
    if args.quiet:
        return "".join(f"{i}\n" for i in transfers.item_ids(cur, where, params, limit))
    if args.verbose:
        return _batches(cur, where, params, args)
    rows = transfers.items(cur, where, params, limit)
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


def _batches(cur: Cursor, where: str, params: list[Any], args: argparse.Namespace) -> str:
    rows = transfers.batches(cur, where, params)
    if args.format == "json":
        return jq.dumps([jq.jsonable(r) for r in rows])
    if not rows:
        return "No transfer batches found matching query"
    for r in rows:
        r["started_at"] = r["started_at"].strftime("%Y-%m-%d %H:%M:%S")
        r["message"] = r["message"][:60]
    return table(rows, BATCH_COLUMNS)
