"""``balsam ls queues``: our batch jobs as recorded, and the user's other unfinished batch jobs
as the scheduler lists them now (read-only: the service syncs states). A failing status command
becomes a note under the table, never an error."""
from __future__ import annotations

import argparse
import os
from typing import Any

from balsam.cli import jobquery as jq
from balsam.cli.common import db_path, fetch_dicts
from balsam.core import schema
from balsam.core.render import table

COLUMNS = ["id", "scheduler_id", "queue", "nodes", "wall_minutes", "job_mode", "state",
           "submitted_at"]
OTHER_COLUMNS = ["scheduler_id", "queue", "nodes", "wall_minutes", "state", "name"]
STATUS_TIMEOUT = 20.0


def others(cur: Any, path: str) -> tuple[list[dict], str]:
    """The user's unfinished batch jobs that are not ours, and a note ("" if none)."""
    from balsam.db import dbsettings
    from balsam.platform import schedulers
    from balsam.service.submitter import current_user

    try:
        settings = dbsettings.load(path)
        sched = schedulers.get(settings["scheduler"], os.path.join(path, "qsubmit"))
        listed = sched.status(current_user(), timeout=STATUS_TIMEOUT)
    except schedulers.SchedulerError as exc:
        return [], f"Note: the scheduler's status command failed ({exc}); states as last recorded"
    cur.execute(f"SELECT scheduler_id FROM {schema.QLAUNCH_TABLE} WHERE scheduler_id <> ''")
    ours = {r[0] for r in cur.fetchall()}
    return [{"scheduler_id": j.scheduler_id, "queue": j.queue, "nodes": j.nodes,
             "wall_minutes": j.wall_minutes, "state": j.raw_state or j.state, "name": j.name}
            for sid, j in sorted(listed.items()) if sid not in ours and not j.is_final], ""


def queues_view(cur: Any, args: argparse.Namespace) -> str:
    cur.execute(f"SELECT * FROM {schema.QLAUNCH_TABLE} ORDER BY id")
    rows = fetch_dicts(cur)
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
    foreign, note = others(cur, db_path())
    parts = [text or "No queued jobs detected"]
    if foreign:
        parts.append("Other batch jobs of this user:\n" + table(foreign, OTHER_COLUMNS))
    if note:
        parts.append(note)
    return "\n".join(parts)
