"""``balsam make_dummies N``: fill the database with N trivial jobs (for tests and benchmarks)."""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from typing import IO, Any

from balsam.cli import jobquery as jq
from balsam.cli.common import add_command, transaction
from balsam.cli.jobout import add_output_flags, job_dicts, machine_output
from balsam.core import schema
from balsam.errors import BalsamError

CHUNK = 10000
"""Jobs built and copied per step (bounds memory; one progress-bar tick each)."""
PROGRESS_MIN = 20000
"""Show a progress bar (stderr on a terminal only) from this many jobs up."""
BAR_WIDTH = 40
MAX_JOBS = 1_000_000
"""Most jobs one command adds: a typo with more digits would otherwise run for hours and fill
the disk (run the command again for more)."""
DUMMY_APP = {"name": "dummy", "description": "Added by balsam make_dummies", "executable": "echo",
             "preprocess": "", "envscript": "", "postprocess": ""}
"""The application the dummy jobs name (added unless one of its name exists)."""


def register(sub: Any) -> None:
    p = add_command(sub, "make_dummies", run, "add N dummy jobs (app `dummy`, workflow `dummy`)")
    p.add_argument("num", metavar="N", help=f"how many jobs to add (1 to {MAX_JOBS:,})")
    add_output_flags(p, "added jobs")


def count_arg(text: str) -> int:
    try:
        num = int(text.strip())
    except ValueError:
        num = 0
    if num < 1:
        raise BalsamError(f"N must be a positive whole number, not {text!r}")
    if num > MAX_JOBS:
        raise BalsamError(f"N is {num}: at most {MAX_JOBS:,} jobs per command (run it again for more)")
    return num


def progress(done: int, total: int) -> None:
    filled = BAR_WIDTH * done // total
    sys.stderr.write(f"\r[{'#' * filled}{' ' * (BAR_WIDTH - filled)}] {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def write_chunk(out: IO[str], args: argparse.Namespace, rows: list[dict[str, Any]], first: bool) -> None:
    """The ids (``--quiet``) or JSON items (``--format json``, the form of ``balsam ls``) of one
    chunk of new jobs, spooled to ``out`` until the transaction commits."""
    if args.quiet:
        out.write("".join(f"{r['job_id']}\n" for r in rows))
        return
    for n, item in enumerate(job_dicts(rows)):
        sep = "" if first and n == 0 else ","
        out.write(f"{sep}\n  " + jq.dumps(item).replace("\n", "\n  "))


def run(args: argparse.Namespace) -> int:
    from balsam.core.bulk import copy_jobs
    from balsam.core.writes.apps import ensure_app

    num = count_arg(args.num)
    show = num >= PROGRESS_MIN and sys.stderr.isatty()
    values = {"workflow": "dummy", "application": "dummy", "args": "hello",
              "node_packing_count": 64, "description": "Added by balsam make_dummies"}
    # Machine output is spooled to a file (flat memory for a million jobs) and printed only
    # once the jobs are committed.
    spool = tempfile.TemporaryFile("w+", encoding="utf-8") if machine_output(args) else None
    if spool is not None and args.format == "json":
        spool.write("[")
    with transaction() as (_, cur):
        ensure_app(cur, DUMMY_APP)
        for start in range(0, num, CHUNK):
            rows = [schema.new_job_row(dict(values, name=f"dummy{i}"))
                    for i in range(start, min(start + CHUNK, num))]
            copy_jobs(cur, rows)
            if spool is not None:
                write_chunk(spool, args, rows, start == 0)
            if show:
                progress(start + len(rows), num)
    if spool is None:
        print(f"Added {num} dummy jobs (application dummy, workflow dummy)")
        return 0
    if args.format == "json":
        spool.write("\n]\n")
    spool.seek(0)
    try:
        shutil.copyfileobj(spool, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        jq.write_out("")  # the reader went away (`| head`): write_out ends stdout quietly
    spool.close()
    return 0
