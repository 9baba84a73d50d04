"""``balsam ls queues``: our batch jobs with their states asked of the scheduler now, and the
user's other unfinished batch jobs (read-only: the service records states).

One status call (:mod:`balsam.service.live`, short timeout) serves every row: an unfinished row
shows the live state and, in ``as_of``, whether the DB still records another one (the service
has not synced since). A failing status command becomes a note under the table with the
reason, and the rows show their recorded states marked stale with the age of the last sync."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from balsam.cli import jobquery as jq
from balsam.cli.common import db_path
from balsam.core.reads import activity
from balsam.core.render import table

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

COLUMNS = ["id", "scheduler_id", "queue", "nodes", "wall_minutes", "job_mode", "state", "as_of",
           "submitted_at"]
OTHER_COLUMNS = ["scheduler_id", "queue", "nodes", "wall_minutes", "state", "name"]


def live_rows(rows: list[dict[str, Any]], path: str) -> tuple[list[dict[str, Any]], str]:
    """``rows`` with live states (:func:`balsam.service.live.annotate`), the user's other
    unfinished batch jobs, and a note ("" if the scheduler answered)."""
    from balsam.db import dbsettings
    from balsam.service import live

    settings = dbsettings.load(path)
    answer = live.ask(path, settings["scheduler"], {r["scheduler_id"] for r in rows})
    live.annotate(rows, answer)
    others = [{"scheduler_id": j.scheduler_id, "queue": j.queue, "nodes": j.nodes,
               "wall_minutes": j.wall_minutes, "state": j.raw_state or j.state, "name": j.name}
              for j in answer.foreign]
    return others, answer.note


def queues_view(cur: Cursor, args: argparse.Namespace) -> str:
    rows = activity.all_batch_jobs(cur)
    foreign, note = live_rows(rows, db_path())
    if args.format == "json":
        return jq.dumps(rows)
    if args.verbose:
        text = "\n".join(f"QueuedLaunch {r['id']}:\n" + "\n".join(
            f"{k:>14}: {v}" for k, v in r.items() if k != "id") + "\n" for r in rows)
    else:
        for r in rows:
            if r["submitted_at"] is not None:
                r["submitted_at"] = r["submitted_at"].strftime("%Y-%m-%d %H:%M:%S")
        text = table(rows, COLUMNS) if rows else ""
    parts = [text or "No queued jobs detected"]
    if foreign:
        parts.append("Other batch jobs of this user:\n" + table(foreign, OTHER_COLUMNS))
    if note:
        parts.append(f"Note: {note}")
    return "\n".join(parts)
