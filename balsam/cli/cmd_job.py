"""``balsam job``: add one job (Django-free: this command must answer in well under 200 ms)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from balsam.cli.common import add_command, confirm, fetch_dicts, transaction
from balsam.cli.jobflags import add_job_flags, job_values
from balsam.cli.jobout import add_output_flags, preview_stream, print_jobs
from balsam.core import schema
from balsam.errors import NotFound

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


def insert_job(cur: Any, row: dict[str, Any]) -> None:
    """One INSERT naming every column (``data`` as JSON text)."""
    from balsam.cli.jobquery import JOB_COLUMNS

    values = [json.dumps(row[c]) if isinstance(row[c], dict) else row[c] for c in JOB_COLUMNS]
    values[0] = str(values[0])
    cur.execute(f"INSERT INTO {schema.JOB_TABLE} ({', '.join(JOB_COLUMNS)}) "
                f"VALUES ({', '.join(['%s'] * len(JOB_COLUMNS))})", values)


def show_new_job(cur: Any, db_path: str, row: dict[str, Any], parents: list[str],
                 out: Any = None) -> None:
    """Print the job about to be added; :class:`NotFound` if its application does not exist."""
    from balsam.core.render import job_repr

    out = out or sys.stdout
    cur.execute(f"SELECT {', '.join(schema.APP_DEFAULTS)} FROM {schema.APP_TABLE} WHERE name = %s",
                [row["application"]])
    apps = fetch_dicts(cur)
    if not apps:
        raise NotFound(f"application {row['application']!r} does not exist (see `balsam ls apps`)")
    workdir = schema.working_directory(db_path, row["workflow"], row["name"], row["job_id"],
                                       row["user_workdir"])
    print(job_repr(dict(row, parents=parents), apps[0], workdir), file=out)


def run(args: argparse.Namespace) -> int:
    from balsam.cli.jobquery import user_errors

    if args.from_file is not None or args.array is not None:
        from balsam.cli.campaign import run_many

        return run_many(args)
    with user_errors():
        row = schema.new_job_row(job_values(args))
    with transaction() as (db_path, cur):
        show_new_job(cur, db_path, row, [], preview_stream(args))
        if not args.yes:
            cur.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE workflow = %s", [row["workflow"]])
            print(f'[INFO]: The workflow "{row["workflow"]}" currently has {cur.fetchone()[0]} jobs '
                  "in the database", file=preview_stream(args))
            if not confirm("Add this job to the database?", False):
                print("aborted: job not added", file=sys.stderr)
                return 1
        insert_job(cur, row)
    print_jobs(args, [row], f"Added job {schema.cute_id(row['name'], row['job_id'])} to the database")
    return 0
