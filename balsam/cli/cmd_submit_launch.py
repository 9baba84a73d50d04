"""``balsam submit-launch``: submit one launcher batch job by hand (the service does it itself).

Checks first, so nothing is submitted (or recorded) on an error: the workflow filter must match
existing jobs (as the launcher matches: the workflow contains it), the queue must be one of the
DB's ``queues:`` (any queue on the ``local`` scheduler), the script must render. Then a
``QueuedLaunch`` row is recorded, rendered into ``qsubmit/qlaunch<id>.sh`` and submitted through
:mod:`balsam.service.submitter` (one attempt; a failure leaves the row ``submit-failed`` with the
reason). ``--dry-run`` prints the script and records nothing.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from balsam.cli.common import add_command, db_path, transaction
from balsam.core import schema
from balsam.errors import BalsamError


def register(sub: Any) -> None:
    p = add_command(sub, "submit-launch", run, "submit one launcher batch job to the scheduler")
    p.add_argument("-n", "--nodes", type=int, required=True, help="nodes")
    p.add_argument("-t", "--time-minutes", type=int, required=True,
                   help="walltime in minutes (the launcher stops a little before)")
    p.add_argument("-q", "--queue", required=True, help="queue (partition)")
    p.add_argument("-A", "--project", default=None,
                   help="project (allocation, account); default: settings.yml project (none: "
                        "the scheduler's default account, where the machine profile allows it)")
    p.add_argument("--job-mode", required=True, choices=["mpi", "serial"], help="launcher job mode")
    p.add_argument("--wf-filter", default="",
                   help="run only jobs whose workflow contains this (must match existing jobs)")
    p.add_argument("--sched-flags", default="", help="extra scheduler options (one directive line)")
    p.add_argument("--dry-run", action="store_true", help="print the job script; submit nothing")


def _check(cur: Any, args: argparse.Namespace, settings: dict) -> None:
    if args.wf_filter:
        from balsam.processing.transitions import wf_clause

        params: list[Any] = []
        cur.execute(f"SELECT 1 FROM {schema.JOB_TABLE} j WHERE true"
                    f"{wf_clause(args.wf_filter, params)} LIMIT 1", params)
        if cur.fetchone() is None:
            raise BalsamError(f"--wf-filter {args.wf_filter!r} matches no job's workflow "
                              "(see `balsam ls wf`); nothing submitted")
    queues = settings["queues"]
    if settings["scheduler"] != "local" and args.queue not in queues:
        raise BalsamError(f"queue {args.queue!r} is not in this DB's settings.yml queues "
                          f"({', '.join(queues) or 'none'}); nothing submitted")


def run(args: argparse.Namespace) -> int:
    from balsam.db import dbsettings
    from balsam.service import submitter

    path = db_path()
    settings = dbsettings.load(path)
    if args.project is None:
        args.project = settings["project"]
    with transaction(path) as (_, cur):
        _check(cur, args, settings)
    text = submitter.render_script(path, settings, project=args.project, queue=args.queue,
                                   nodes=args.nodes, minutes=args.time_minutes,
                                   job_mode=args.job_mode, wf_filter=args.wf_filter,
                                   sched_flags=args.sched_flags)
    if args.dry_run:
        sys.stdout.write(text)
        return 0
    from balsam.db.session import Database
    from balsam.platform import schedulers

    scheduler = schedulers.get(settings["scheduler"], os.path.join(path, "qsubmit"))
    with transaction(path) as (_, cur):
        cur.execute(f"""
            INSERT INTO {schema.QLAUNCH_TABLE} (scheduler_id, project, queue, nodes, wall_minutes,
                job_mode, wf_filter, sched_flags, command, state, prescheduled_only, from_balsam,
                raw_state, message, attempts, created_at)
            VALUES ('', %s, %s, %s, %s, %s, %s, %s, '', 'pending-submission', false, true, '', '',
                    0, now()) RETURNING id""",
                    [args.project, args.queue, args.nodes, args.time_minutes, args.job_mode,
                     args.wf_filter, args.sched_flags])
        rid = cur.fetchone()[0]
    db = Database(path, "balsam-submit-launch")
    log = logging.getLogger("balsam.submit-launch")
    try:
        done = submitter.submit_pending(db, path, settings, scheduler, log, ids=[rid],
                                        max_attempts=1)
        if not done:
            message = db.run(lambda c: (c.execute(
                f"SELECT message FROM {schema.QLAUNCH_TABLE} WHERE id = %s", [rid]),
                c.fetchone())[1][0])
            raise BalsamError(f"batch job {rid} was not submitted: {message or 'unknown reason'}")
    finally:
        db.close()
    print(f"Submit OK: batch job {rid} (qlaunch{rid}), scheduler id {done[0][1]}")
    return 0
