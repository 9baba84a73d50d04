"""``balsam ls [jobs|apps|wf|queues|transfers]``: list what is in the database (Django-free, fast)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Optional

from balsam.cli import jobquery as jq
from balsam.cli.common import add_command, transaction
from balsam.cli.jobout import check_quiet_listing, quiet_ids
from balsam.core import schema
from balsam.core.reads import jobs as reads
from balsam.core.render import table, table_of_columns
from balsam.errors import BalsamError

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor, PlainCursor

EPILOG = """Job views, by precedence: --history > --tree > --by-states > table (or --verbose).
Environment: BALSAM_LS_FIELDS=f1:f2 adds job columns to the table; BALSAM_LS_LIMIT=N (default
5000) caps how many objects are shown."""
FLAGS = ("name", "id", "state", "wf", "verbose", "history", "tree", "by_states", "quiet")
ALLOWED = {"apps": {"name", "id", "verbose", "quiet"}, "wf": {"wf"}, "queues": {"verbose"},
           "transfers": {"id", "state", "wf", "verbose", "quiet"}}
"""Flags each non-job listing understands (``ls wf --wf X`` of an existing X lists its jobs)."""


def register(sub: Any) -> None:
    p = add_command(sub, "ls", run, "list jobs, applications, workflows, queued batch jobs or "
                    "transfers", epilog=EPILOG)
    p.add_argument("objects", nargs="?", default="jobs",
                   choices=["jobs", "apps", "wf", "queues", "transfers"],
                   help="what to list (default: jobs); transfers: the stage-in/out items "
                        "(--state pending|active|done|failed, --id JOB, --verbose: the batches)")
    p.add_argument("--name", help="name contains this text (case-insensitive)")
    p.add_argument("--id", help="job id (or part of one); for apps, the application's number")
    p.add_argument("--state", help="jobs in exactly this state")
    p.add_argument("--wf", help="workflow contains this text; `ls wf --wf X`: the jobs of workflow X")
    p.add_argument("--verbose", action="store_true", help="every field of each object")
    p.add_argument("--history", action="store_true", help="each job's state history")
    p.add_argument("--tree", action="store_true", help="the dependency forest of the matching jobs")
    p.add_argument("--by-states", action="store_true", help="how many matching jobs are in each state")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="json: a list of objects with all their fields, for scripts")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="only the ids of the matching jobs (apps: their numbers), one per line")


def run(args: argparse.Namespace) -> int:
    check_quiet_listing(args)
    if args.format == "json" and (args.history or args.tree):
        raise BalsamError("--format json lists objects or --by-states counts; it does not combine "
                          "with --history or --tree")
    with transaction() as (db_path, cur):
        if args.objects == "jobs":
            text = jobs_view(cur, db_path, args, args.wf)
        elif args.objects == "wf" and args.wf is not None and reads.workflow_exists(cur, args.wf):
            text = jobs_view(cur, db_path, args, None, wf_exact=args.wf)
        else:
            flags = [f for f in FLAGS if getattr(args, f) not in (None, False)]
            bad = [f"--{f.replace('_', '-')}" for f in flags if f not in ALLOWED[args.objects]]
            if bad:
                raise BalsamError(f"{', '.join(bad)} cannot be used with `balsam ls {args.objects}`")
            text = {"apps": apps_view, "wf": wf_view, "queues": queues_view,
                    "transfers": transfers_view}[args.objects](cur, args)
    jq.write_out(text)
    return 0


def history_note(row: dict[str, Any], tries: dict[str, tuple[int, int]]) -> str:
    """The header note of a job's history: its priority and retry use."""
    failures, limit = tries.get(str(row["job_id"]), (0, 0))
    return (f"  (priority {row['priority']}; {failures} failed run(s) counted, "
            f"max_retries {limit})")


def jobs_view(cur: PlainCursor, db_path: str, args: argparse.Namespace, wf: Optional[str],
              wf_exact: Optional[str] = None) -> str:
    where, params = reads.job_where(args.name, args.id, args.state, wf, wf_exact)
    if args.quiet:
        return quiet_ids(cur, reads.JOB, "job_id", where, params)
    if args.by_states and not (args.history or args.tree):
        counts = reads.state_counts(cur, where, params)
        if args.format == "json":
            return jq.dumps(counts)
        return "\n".join(f"{s:>16} {n}" for s, n in counts.items()) or "No jobs found matching query"
    limit = jq.ls_limit()
    if args.history:
        rows, total = reads.fetch_jobs(cur, where, params, ["job_id", "name", "created_at",
                                                         "priority"], limit)
        hist = reads.histories(cur, rows)
        from balsam.core import retries  # dataclasses -> inspect: ~5 ms the plain listing skips
        from balsam.core.tunables import Tunables
        from balsam.db import dbsettings
        max_retries = Tunables.from_settings(dbsettings.load(db_path)["launcher"]).max_retries
        tries = retries.usage(cur, [r["job_id"] for r in rows], max_retries)
        text = "\n".join(f"Job {r['name']} [{r['job_id']}]{history_note(r, tries)}\n"
                         f"{'-' * 60}{hist[str(r['job_id'])]}\n" for r in rows)
    elif args.tree:
        where = f"{where} AND {reads.NO_PARENTS}" if where else f" WHERE {reads.NO_PARENTS}"
        rows, total = reads.fetch_jobs(cur, where, params, ["job_id", "name", "state"], limit)
        if not rows:
            return "No jobs without parents found matching query"
        text = "\n".join(reads.tree_lines(cur, rows))
    elif args.format == "json":
        jq.stream_jobs_json(cur, where, params, limit)  # written as fetched: flat memory
        return ""
    elif args.verbose:
        rows, total = reads.fetch_jobs(cur, where, params, jq.LS_FIELDS, limit)
        apps = reads.apps_by_name(cur)
        text = "\n".join(jq.job_verbose(r, apps, db_path) for r in rows)
    else:
        columns = jq.ls_fields()
        values, total = reads.fetch_job_columns(cur, where, params, columns, limit)
        if "parents" in columns:
            at = columns.index("parents")
            values[at] = [",".join(p[:8] for p in parents) for parents in values[at]]
        rows = values[0]
        text = table_of_columns(values, columns, len(rows))
    if not rows:
        return "No jobs found matching query"
    return text + jq.hidden_notice(total - len(rows))


def apps_view(cur: Cursor, args: argparse.Namespace) -> str:
    where, params = reads.app_where(args.name, args.id)
    if args.quiet:
        return quiet_ids(cur, reads.APP, "id", where, params)
    apps = reads.app_rows(cur, where, params)
    if args.format == "json":
        return jq.dumps(apps)
    if not apps:
        return "No applications found matching query"
    if args.verbose:
        return "\n".join(f"Application {a['id']}:\n" + "\n".join(
            f"{k:>12}: {a[k]}" for k in schema.APP_DEFAULTS) + "\n" for a in apps)
    return table(apps, ["id", "name", "executable", "description"])


def wf_view(cur: Cursor, args: argparse.Namespace) -> str:
    where, params = reads.job_where(wf=args.wf)
    rows = reads.workflow_counts(cur, where, params)
    if args.format == "json":
        return jq.dumps(rows)
    if not rows:
        return "No workflows found matching query"
    return table(rows, ["workflow", "jobs"])


def transfers_view(cur: Cursor, args: argparse.Namespace) -> str:
    from balsam.cli.lstransfers import transfers_view as view

    return view(cur, args)


def queues_view(cur: Cursor, args: argparse.Namespace) -> str:
    from balsam.cli.lsqueues import queues_view as view

    return view(cur, args)
