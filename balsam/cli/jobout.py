"""How commands that add or show jobs and apps print them: text, ``--quiet`` or ``--format json``.

``--quiet`` prints only the ids, one per line (jobs: the full UUID; apps: the number), for
``$(...)`` and pipes such as ``balsam job ... --quiet | balsam wait -``. ``--format json`` prints
one JSON list of objects with every field (ids as text, times in ISO 8601), the form of
``balsam ls --format json``. Either way stdout holds nothing else: the preview shown before a
confirmation prompt goes to stderr.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from balsam.cli import jobquery as jq
from balsam.core.reads import jobs as reads
from balsam.errors import BalsamError

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor


def add_output_flags(p: argparse.ArgumentParser, what: str = "jobs") -> None:
    """``--quiet`` and ``--format {text,json}`` (mutually exclusive)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quiet", "-q", action="store_true",
                       help=f"print only the ids of the {what}, one per line")
    group.add_argument("--format", choices=["text", "json"], default="text",
                       help=f"json: a list of the {what} with all their fields, for scripts")


def machine_output(args: argparse.Namespace) -> bool:
    """Whether stdout is reserved for ids or JSON."""
    return bool(getattr(args, "quiet", False)) or getattr(args, "format", "text") == "json"


def preview_stream(args: argparse.Namespace) -> TextIO:
    """Where a preview goes: stdout; when stdout is for ids or JSON, stderr if a prompt follows
    (``--yes`` not given), else nowhere."""
    if not machine_output(args):
        return sys.stdout
    return io.StringIO() if getattr(args, "yes", False) else sys.stderr


def job_dicts(rows: Sequence[dict[str, Any]], parents: Sequence[Sequence[str]] = ()) -> list[dict[str, Any]]:
    """Job rows as ``balsam ls --format json`` shows them (every column, then ``parents``: the
    row's own, else ``parents[n]``, else none)."""
    out = []
    for n, row in enumerate(rows):
        item = jq.jsonable({c: row.get(c) for c in reads.JOB_COLUMNS})
        given = row.get("parents", parents[n] if n < len(parents) else [])
        item["parents"] = [str(p) for p in given]
        out.append(item)
    return out


def full_jobs(cur: Cursor, ids: Sequence[Any]) -> list[dict[str, Any]]:
    """Every column and the parents of the jobs ``ids``, in creation order (for JSON output)."""
    rows = reads.jobs_by_ids(cur, ids)
    parents = reads.parents_of(cur, [r["job_id"] for r in rows])
    for row in rows:
        row["parents"] = parents.get(str(row["job_id"]), [])
    return rows


def print_jobs(args: argparse.Namespace, rows: Sequence[dict[str, Any]], text: str,
               parents: Sequence[Sequence[str]] = ()) -> None:
    """Print ``rows``' ids (``--quiet``), their JSON (``--format json``), or ``text``."""
    if getattr(args, "quiet", False):
        jq.write_out("".join(f"{r['job_id']}\n" for r in rows))
    elif getattr(args, "format", "text") == "json":
        jq.write_out(jq.dumps(job_dicts(rows, parents)))
    else:
        jq.write_out(text)


def print_apps(args: argparse.Namespace, apps: Sequence[dict[str, Any]], text: str) -> None:
    """Print ``apps``' numbers (``--quiet``), their JSON (``--format json``), or ``text``."""
    if getattr(args, "quiet", False):
        jq.write_out("".join(f"{a['id']}\n" for a in apps))
    elif getattr(args, "format", "text") == "json":
        jq.write_out(json.dumps(list(apps), indent=2, default=str))
    else:
        jq.write_out(text)


def check_quiet_listing(args: argparse.Namespace) -> None:
    """``balsam ls --quiet`` lists ids only: refuse the views it cannot be combined with."""
    if not getattr(args, "quiet", False):
        return
    clash = [flag for flag, on in (("--format json", args.format == "json"),
                                   ("--verbose", args.verbose), ("--history", args.history),
                                   ("--tree", args.tree), ("--by-states", args.by_states)) if on]
    if clash:
        raise BalsamError(f"--quiet prints only ids; it does not combine with {', '.join(clash)}")


def quiet_ids(cur: Cursor, table: str, column: str, where: str, params: list[Any]) -> str:
    """The ids of the matching rows, one per line, in listing order, at most ``BALSAM_LS_LIMIT``
    (a note on stderr says how many more matched); '' when none match."""
    limit = jq.ls_limit()
    ids = reads.first_ids(cur, table, column, where, params, limit)
    if len(ids) > limit:
        jq.hidden_notice(reads.count_where(cur, table, where, params) - limit, to_stderr=True)
        ids = ids[:limit]
    return "".join(f"{i}\n" for i in ids)


def full_apps(cur: Cursor, apps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every field of the applications ``apps`` (dicts with ``id``), by number."""
    return reads.apps_by_ids(cur, [a["id"] for a in apps])
