"""``balsam job``: add one job (Django-free: this command must answer in well under 200 ms)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from balsam.cli.common import add_command, confirm, transaction
from balsam.cli.jobflags import add_job_flags, job_values
from balsam.cli.jobout import add_output_flags, preview_stream, print_jobs
from balsam.cli.newjob import show_new_job
from balsam.core import schema
from balsam.core.reads import jobs as reads
from balsam.core.writes.jobs import insert_job

EPILOG = """Unless --yes is given, the job is shown and you are asked to confirm; answering no
adds nothing and exits with status 1. Errors (unknown application, bad values) exit with status 2
and add nothing.

Many jobs at once: --from-file FILE (CSV with a header line, or JSON lines; `-` is stdin) adds
one job per row: a column named like a job field (num_nodes, args, data, ...) sets it for that
row, and {column} in --name/--args/--description/--url-in/--url-out/--env is replaced by the
row's value ({i}: the row's index from 0). --array N (0..N-1) or A-B[:STEP] adds one job per
index ({i}). Every such job has BALSAM_ARRAY_INDEX in its environment. Rows are checked before
anything is written (a bad one is named by its line) and go in with one COPY: all or none."""


def register(sub: Any) -> None:
    p = add_command(sub, "job", run, "add a job to the database", epilog=EPILOG)
    add_job_flags(p)
    p.add_argument("--from-file", metavar="FILE", help="one job per row of FILE (CSV or JSON lines)")
    p.add_argument("--array", metavar="N|A-B[:STEP]", help="one job per index, {i} in templates")
    add_output_flags(p)


def run(args: argparse.Namespace) -> int:
    if args.from_file is not None or args.array is not None:
        from balsam.cli.campaign import run_many

        return run_many(args)
    with reads.user_errors():
        row = schema.new_job_row(job_values(args))
    with transaction() as (db_path, cur):
        show_new_job(cur, db_path, row, [], preview_stream(args))
        if not args.yes:
            size = reads.workflow_size(cur, row["workflow"])
            print(f'[INFO]: The workflow "{row["workflow"]}" currently has {size} jobs '
                  "in the database", file=preview_stream(args))
            if not confirm("Add this job to the database?", False):
                print("aborted: job not added", file=sys.stderr)
                return 1
        insert_job(cur, row)
    print_jobs(args, [row], f"Added job {schema.cute_id(row['name'], row['job_id'])} to the database")
    return 0
