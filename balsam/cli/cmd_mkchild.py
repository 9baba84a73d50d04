"""``balsam mkchild``: from inside a running job, add a job that depends on it.

Classic Balsam 0.5 crashed here (its handler read flags this parser did not define); this one
shares the flags of ``balsam job`` (:mod:`balsam.cli.jobflags`). Django-free, like ``balsam job``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from balsam.cli.common import add_command, confirm, transaction
from balsam.cli.jobflags import add_job_flags, job_values
from balsam.cli.jobout import add_output_flags, preview_stream, print_jobs
from balsam.core import schema
from balsam.core.reads.jobs import job_detail
from balsam.errors import BalsamError, NotFound

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

EPILOG = """Needs BALSAM_JOB_ID (set by the launcher for a job's process and its scripts): the new
job becomes a child of that job, in its workflow unless --workflow is given, and in its batch job
(queued launch). Unless --yes is given, the job is shown and you are asked to confirm.
Classic flags: --wall-minutes is --wall-time-minutes; --preprocessor and --postprocessor are
accepted for old scripts but a job has no scripts of its own (its application's preprocess and
postprocess run), so a value given is reported on stderr and not stored."""
OBSOLETE = ("preprocessor", "postprocessor")
"""Classic ``mkchild`` flags that set job fields Balsam 0.5 had already removed."""


def register(sub: Any) -> None:
    p = add_command(sub, "mkchild", run, "add a child of the current job (inside a job)",
                    epilog=EPILOG)
    add_job_flags(p, workflow_help="workflow of the new job (default: the current job's)",
                  workflow_required=False)
    for name in OBSOLETE:
        p.add_argument(f"--{name}", default="", metavar="SCRIPT",
                       help="obsolete classic flag: accepted and ignored (the application's "
                            f"{name[:-2]} script runs)")
    add_output_flags(p)


def current_job_id() -> str:
    """The job this command runs in (``BALSAM_JOB_ID``); one-line errors if unset or malformed."""
    text = os.environ.get("BALSAM_JOB_ID", "").strip()
    if not text:
        raise BalsamError("BALSAM_JOB_ID is not set: mkchild adds a child of the job it runs in "
                          "(outside a job, use `balsam job` and `balsam dep`)")
    try:
        return str(schema.parse_uuid(text))
    except schema.FieldError:
        raise BalsamError(f"BALSAM_JOB_ID={text!r} is not a job id (UUID)")


def fetch_job(cur: Cursor, job_id: str) -> dict[str, Any]:
    """The job ``job_id`` (BALSAM_JOB_ID); NotFound if it is not in the database."""
    job = job_detail(cur, job_id)
    if job is None:
        raise NotFound(f"BALSAM_JOB_ID names job {job_id}, which is not in the database")
    return job


def run(args: argparse.Namespace) -> int:
    from balsam.cli.newjob import show_new_job
    from balsam.core import bulk, lifecycle
    from balsam.core.reads.jobs import user_errors
    from balsam.core.writes.jobs import insert_job

    parent_id = current_job_id()
    for name in OBSOLETE:
        if getattr(args, name):
            print(f"balsam mkchild: warning: --{name} is obsolete and ignored (set the "
                  f"application's script: `balsam app --{name[:-2]}`)", file=sys.stderr)
    with transaction() as (db_path, cur):
        parent = fetch_job(cur, parent_id)
        if args.workflow is None:
            args.workflow = parent["workflow"]
        with user_errors():
            row = schema.new_job_row(job_values(args))
        row["queued_launch_id"] = parent["queued_launch_id"]
        show_new_job(cur, db_path, row, [str(parent["job_id"])], preview_stream(args))
        if not confirm("Add this job to the database?", args.yes):
            print("aborted: job not added", file=sys.stderr)
            return 1
        insert_job(cur, row)
        edges = lifecycle.check_new_edges(cur, [(parent["job_id"], row["job_id"])],
                                          {str(row["job_id"]): row["state"]})
        bulk.insert_edges(cur, edges)
    print_jobs(args, [row], f"Added job {schema.cute_id(row['name'], row['job_id'])} as a child of "
               f"{schema.cute_id(parent['name'], parent['job_id'])}", [[str(parent["job_id"])]])
    return 0
