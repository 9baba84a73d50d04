"""``balsam dep PARENT CHILD``: make CHILD wait for PARENT to finish."""
from __future__ import annotations

import argparse
from typing import Any

from balsam.cli.common import add_command, transaction
from balsam.cli.jobout import add_output_flags, full_jobs, print_jobs
from balsam.core import schema
from balsam.core.reads.jobs import find_job

EPILOG = """With --quiet the two ids are printed (parent, then child); with --format json the
two jobs as `balsam ls --format json` shows them, the child's parents including the new one."""


def register(sub: Any) -> None:
    p = add_command(sub, "dep", run, "add a dependency: CHILD runs after PARENT finishes",
                    epilog=EPILOG)
    p.add_argument("parent", help="job id (or a prefix matching exactly one job)")
    p.add_argument("child", help="job id (or a prefix matching exactly one job)")
    add_output_flags(p, "parent and child jobs")


def run(args: argparse.Namespace) -> int:
    from balsam.core import lifecycle

    with transaction() as (_, cur):
        parent = find_job(cur, args.parent, "job_id, name")
        child = find_job(cur, args.child, "job_id, name")
        lifecycle.add_dependency(cur, parent["job_id"], child["job_id"])
        rows = [parent, child]
        if args.format == "json":
            by_id = {str(r["job_id"]): r for r in full_jobs(cur, [parent["job_id"], child["job_id"]])}
            rows = [by_id[str(parent["job_id"])], by_id[str(child["job_id"])]]
    print_jobs(args, rows, f"Created link {schema.cute_id(parent['name'], parent['job_id'])} --> "
               f"{schema.cute_id(child['name'], child['job_id'])}")
    return 0
