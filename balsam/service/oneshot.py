"""Submit one launcher batch job by hand: what ``balsam submit-launch`` and ``dag.submit`` do.

Checks first, so nothing is submitted (or recorded) on an error: the workflow filter must match
existing jobs (as the launcher matches: the workflow contains it), the queue must be one of the
DB's ``queues:`` (any queue on the ``local`` scheduler). Then a ``QueuedLaunch`` row is
recorded, rendered into ``qsubmit/qlaunch<id>.sh`` and submitted through
:mod:`balsam.service.submitter` (one attempt; a failure leaves the row ``submit-failed`` with the
reason and raises :class:`BalsamError`).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

from balsam.core import batchstates, schema
from balsam.db import connect, dbsettings
from balsam.db.database import Database
from balsam.db.dbapi import Cursor
from balsam.errors import BalsamError
from balsam.platform import schedulers
from balsam.processing.transitions import wf_clause
from balsam.service import submitter


def check(cur: Cursor, settings: dict[str, Any], queue: str, wf_filter: str) -> None:
    """:class:`BalsamError` if ``wf_filter`` matches no job or ``queue`` is not configured."""
    if wf_filter:
        params: list[Any] = []
        cur.execute(f"SELECT 1 FROM {schema.JOB_TABLE} j WHERE true"
                    f"{wf_clause(wf_filter, params)} LIMIT 1", params)
        if cur.fetchone() is None:
            raise BalsamError(f"--wf-filter {wf_filter!r} matches no job's workflow "
                              "(see `balsam ls wf`); nothing submitted")
    queues = settings["queues"]
    if settings["scheduler"] != "local" and queue not in queues:
        raise BalsamError(f"queue {queue!r} is not in this DB's settings.yml queues "
                          f"({', '.join(queues) or 'none'}); nothing submitted")


def submit_launch(path: str, *, queue: str, nodes: int, wall_minutes: int, job_mode: str,
                  project: Optional[str] = None, wf_filter: str = "", sched_flags: str = "",
                  settings: Optional[dict[str, Any]] = None) -> tuple[int, str]:
    """Check, record and submit one batch job of DB ``path``; (row id, scheduler id).

    ``project`` None means the DB's settings.yml project."""
    settings = settings or dbsettings.load(path)
    project = settings["project"] if project is None else project
    conn = connect.connect(path, application_name="balsam-submit-launch")
    try:
        with conn.cursor() as cur:
            check(cur, settings, queue, wf_filter)
            submitter.render_script(path, settings, project=project, queue=queue, nodes=nodes,
                                    minutes=wall_minutes, job_mode=job_mode, wf_filter=wf_filter,
                                    sched_flags=sched_flags)  # a template error records nothing
            cur.execute(f"""
                INSERT INTO {schema.QLAUNCH_TABLE} (scheduler_id, project, queue, nodes,
                    wall_minutes, job_mode, wf_filter, sched_flags, command, state,
                    prescheduled_only, from_balsam, raw_state, message, attempts, created_at)
                VALUES ('', %s, %s, %s, %s, %s, %s, %s, '', %s, false, true,
                        '', '', 0, now()) RETURNING id""",
                        [project, queue, nodes, wall_minutes, job_mode, wf_filter, sched_flags,
                         batchstates.PENDING])
            rid = int(cur.fetchone()[0])
        conn.commit()
    finally:
        conn.close()
    scheduler = schedulers.get(settings["scheduler"], os.path.join(path, "qsubmit"))
    db = Database(path, "balsam-submit-launch")
    try:
        done = submitter.submit_pending(db, path, settings, scheduler,
                                        logging.getLogger("balsam.submit-launch"), ids=[rid],
                                        max_attempts=1)
        if not done:
            message = db.run(lambda c: (c.execute(
                f"SELECT message FROM {schema.QLAUNCH_TABLE} WHERE id = %s", [rid]),
                c.fetchone())[1][0])
            raise BalsamError(f"batch job {rid} was not submitted: {message or 'unknown reason'}")
    finally:
        db.close()
    return rid, str(done[0][1])
