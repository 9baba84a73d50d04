"""``balsam rm {jobs|apps}``: remove jobs or applications from the database."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from balsam.cli.common import add_command, confirm, transaction
from balsam.cli.jobout import add_output_flags, full_apps, full_jobs, machine_output, print_apps, print_jobs
from balsam.cli.progress import Steps
from balsam.core import schema
from balsam.core.reads import jobs as reads
from balsam.core.reads.apps import app_uses
from balsam.core.reads.jobs import find_job
from balsam.core.writes.apps import delete_apps
from balsam.errors import BalsamError, NotFound

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

EPILOG = """Jobs still waiting on a removed job are marked FAILED (they would wait forever).
A job a live launcher holds (claimed, running, or killed and not yet let go) is not removed:
kill it first, then remove it once its launcher let it go (or its lease expired).
Working directories are left on disk. Without a terminal the answer is read from standard
input (`echo y | balsam rm ...`). Answering no to the prompt removes nothing and exits
with status 1; errors exit with status 2 and remove nothing."""
SHOW_AT_MOST = 10


def register(sub: Any) -> None:
    p = add_command(sub, "rm", run, "remove jobs or applications", epilog=EPILOG)
    p.add_argument("objects", choices=["jobs", "apps", "job", "app"], help="what to remove")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--name", help="names containing this text (case-insensitive; '' = all)")
    which.add_argument("--id", help="one job by id prefix, or one application by number")
    which.add_argument("--all", action="store_true", help="every job (or every application)")
    p.add_argument("--wf-filter", metavar="WF", help="only jobs whose workflow contains WF "
                   "(as everywhere: `ls --wf`, `launcher --wf-filter`)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--force", action="store_true",
                   help="as --yes; for apps, also remove apps that jobs still use")
    add_output_flags(p, "removed jobs or applications (as they were)")


def run(args: argparse.Namespace) -> int:
    jobs = args.objects in ("jobs", "job")
    if not jobs and args.wf_filter is not None:
        raise BalsamError("--wf-filter applies to jobs only")
    with transaction() as (_, cur):
        found = select_jobs(cur, args) if jobs else select_apps(cur, args)
        kind = "jobs" if jobs else "applications"
        if not found:
            (print_jobs if jobs else print_apps)(args, [], f"No {kind} matching query: nothing "
                                                 "removed")
            return 0
        if not jobs:
            check_apps_unused(cur, found, args.force)
        if not confirm(f"PERMANENTLY remove {len(found)} {kind}?", args.yes or args.force):
            print("aborted: nothing removed", file=sys.stderr)
            return 1
        if args.format == "json":  # every field, read before the rows go
            found = full_jobs(cur, [f["job_id"] for f in found]) if jobs else full_apps(cur, found)
        failed = remove_jobs(cur, found) if jobs else remove_apps(cur, found)
    labels = [schema.cute_id(f["name"], f["job_id"]) if jobs else f"{f['name']} ({f['id']})"
              for f in found[:SHOW_AT_MOST]]
    more = f" and {len(found) - SHOW_AT_MOST} more" if len(found) > SHOW_AT_MOST else ""
    (print_jobs if jobs else print_apps)(args, found, f"Removed {len(found)} {kind}: "
                                         f"{', '.join(labels)}{more}")
    if failed:
        print(f"{failed} jobs waiting on a removed job were marked FAILED",
              file=sys.stderr if machine_output(args) else sys.stdout)
    return 0


def select_jobs(cur: Cursor, args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.id is not None:
        job = find_job(cur, args.id, "job_id, name, workflow")
        if args.wf_filter is not None and args.wf_filter not in job["workflow"]:
            raise NotFound(f"job {args.id!r} is not in a workflow containing {args.wf_filter!r}")
        return [job]
    where, params = reads.job_where(name=args.name, wf=args.wf_filter)
    return reads.job_labels(cur, where, params)


DELETE_CHUNK = 20_000
"""Jobs deleted per statement by ``rm`` (progress is shown between chunks on a terminal)."""


def remove_jobs(cur: Cursor, found: list[dict[str, Any]]) -> int:
    """Delete the jobs; return how many waiting children were failed because of it."""
    from balsam.core import lifecycle

    ids = [str(f["job_id"]) for f in found]
    failed = reads.waiting_children(cur, ids)
    # In chunks, all in the command's one transaction, so a terminal shows progress on big
    # removals (a child removed in a later chunk may be failed first: it goes all the same).
    chunks = [ids[i:i + DELETE_CHUNK] for i in range(0, len(ids), DELETE_CHUNK)]
    steps = Steps("removing", len(chunks)) if len(chunks) > 1 else None
    for n, chunk in enumerate(chunks):
        if steps is not None:
            steps.step(f"{n * DELETE_CHUNK + len(chunk):,} of {len(ids):,} jobs")
        lifecycle.delete_jobs(cur, chunk)
    if steps is not None:
        steps.done()
    return failed


def select_apps(cur: Cursor, args: argparse.Namespace) -> list[dict[str, Any]]:
    where, params = reads.app_where(None if args.all else args.name, args.id)
    found = reads.app_rows(cur, where, params)
    if args.id is not None and not found:
        raise NotFound(f"no application numbered {args.id}")
    return found


def check_apps_unused(cur: Cursor, apps: list[dict[str, Any]], force: bool) -> None:
    """Refuse to remove apps that jobs still use, unless forced."""
    used = app_uses(cur, [a["name"] for a in apps])
    if used and not force:
        uses = ", ".join(f"{name!r} by {count} jobs" for name, count in used)
        raise BalsamError(f"applications still in use ({uses}): remove those jobs first, "
                          "or pass --force")


def remove_apps(cur: Cursor, apps: list[dict[str, Any]]) -> int:
    delete_apps(cur, [a["id"] for a in apps])
    return 0
