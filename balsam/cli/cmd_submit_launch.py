"""``balsam submit-launch``: submit one launcher batch job by hand (the service does it itself).

The checks and the submission are :func:`balsam.service.oneshot.submit_launch` (shared with
``dag.submit``). ``--dry-run`` prints the script and records nothing.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from balsam.cli.common import add_command, db_path, transaction


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


def run(args: argparse.Namespace) -> int:
    from balsam.db import dbsettings
    from balsam.service import oneshot, submitter

    path = db_path()
    settings = dbsettings.load(path)
    if args.dry_run:
        project = settings["project"] if args.project is None else args.project
        with transaction(path) as (_, cur):
            oneshot.check(cur, settings, args.queue, args.wf_filter)
        sys.stdout.write(submitter.render_script(
            path, settings, project=project, queue=args.queue, nodes=args.nodes,
            minutes=args.time_minutes, job_mode=args.job_mode, wf_filter=args.wf_filter,
            sched_flags=args.sched_flags))
        return 0
    rid, scheduler_id = oneshot.submit_launch(
        path, queue=args.queue, nodes=args.nodes, wall_minutes=args.time_minutes,
        job_mode=args.job_mode, project=args.project, wf_filter=args.wf_filter,
        sched_flags=args.sched_flags, settings=settings)
    print(f"Submit OK: batch job {rid} (qlaunch{rid}), scheduler id {scheduler_id}")
    return 0
