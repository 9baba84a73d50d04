"""The job flags shared by ``balsam job`` and ``balsam mkchild``, and the job fields they give."""
from __future__ import annotations

import argparse
import re
from typing import Any

from balsam.cli.common import add_yes_flag
from balsam.errors import BalsamError

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def add_job_flags(p: argparse.ArgumentParser, workflow_help: str = "workflow the job belongs to",
                  workflow_required: bool = True) -> None:
    """Add the flags describing a new job (``--name`` ... ``--env``, ``--yes``) to ``p``.

    The classic spellings (``--post_handle_error``, ``--wall-minutes``...) are hidden aliases:
    :mod:`balsam.cli.aliases`."""
    p.add_argument("--name", required=True, help="job name (with the workflow it names the job directory)")
    p.add_argument("--workflow", required=workflow_required, help=workflow_help)
    p.add_argument("--application", required=True, help="name of an existing application")
    ints = [("--wall-time-minutes", "1", "expected run time in minutes"),
            ("--num-nodes", "1", "compute nodes"),
            ("--coschedule-num-nodes", "0", "nodes to co-schedule (reserved)"),
            ("--node-packing-count", "1", "serial mode: jobs that may share one node"),
            ("--ranks-per-node", "1", "MPI ranks per node"),
            ("--threads-per-rank", "1", "threads per rank (sets OMP_NUM_THREADS if > 1)"),
            ("--threads-per-core", "1", "hardware threads per core"),
            ("--priority", "0", "launchers claim higher priorities first; may be negative"),
            ("--max-retries", "-1", "failed runs (errors with a handler, timeouts) retried at "
             "most; -1: the DB's launcher.max_retries")]
    for flag, default, text in ints:
        p.add_argument(flag, default=default, metavar="N", help=f"{text} (default {default})")
    p.add_argument("--description", nargs="*", default=[], help="free text")
    p.add_argument("--mpi-flags", nargs="*", default=[], help="extra flags for the MPI launch command")
    p.add_argument("--args", nargs="*", default=[], help="arguments appended to the app's executable")
    p.add_argument("--post-handle-error", action="store_true",
                   help="let the app's postprocess script handle a run error")
    p.add_argument("--post-handle-timeout", action="store_true",
                   help="let the app's postprocess script handle a timeout")
    p.add_argument("--disable-auto-timeout-retry", action="store_true",
                   help="do not restart the job automatically after a timeout")
    p.add_argument("--input-files", nargs="*", default=[],
                   help="glob patterns of files to link in from parent jobs (default: none)")
    p.add_argument("--url-in", default="", help="URL or path staged into the job directory")
    p.add_argument("--url-out", default="", help="URL or path the output files are staged out to")
    p.add_argument("--stage-out-files", nargs="*", default=[], help="glob patterns of files to stage out")
    p.add_argument("--env", action="append", default=[], metavar="VAR=VAL",
                   help="environment variable for the job (repeatable)")
    add_yes_flag(p, "add the job without asking")


def environ_vars(entries: list[str]) -> str:
    """The classic ``VAR1=v1:VAR2=v2`` text of ``--env`` entries, each checked."""
    for entry in entries:
        key, sep, val = entry.partition("=")
        if not sep or not _ENV_NAME.match(key):
            raise BalsamError(f"--env {entry!r} is not of the form VAR=VALUE (VAR a variable name)")
        if ":" in val:
            raise BalsamError(f"--env {entry!r}: the value may not contain ':' (it separates variables)")
    return ":".join(entries)


def job_values(args: argparse.Namespace) -> dict[str, Any]:
    """The new job's fields from the command line (checked later by ``schema.new_job_row``)."""
    for flag in ("name", "workflow", "application"):
        if not getattr(args, flag).strip():
            raise BalsamError(f"--{flag} may not be empty")
    return {
        "name": args.name, "workflow": args.workflow, "application": args.application,
        "wall_time_minutes": args.wall_time_minutes, "num_nodes": args.num_nodes,
        "coschedule_num_nodes": args.coschedule_num_nodes,
        "node_packing_count": args.node_packing_count, "ranks_per_node": args.ranks_per_node,
        "threads_per_rank": args.threads_per_rank, "threads_per_core": args.threads_per_core,
        "description": " ".join(args.description), "mpi_flags": " ".join(args.mpi_flags),
        "args": " ".join(args.args), "post_error_handler": args.post_handle_error,
        "post_timeout_handler": args.post_handle_timeout,
        "auto_timeout_retry": not args.disable_auto_timeout_retry,
        "input_files": " ".join(args.input_files), "stage_in_url": args.url_in,
        "stage_out_url": args.url_out, "stage_out_files": " ".join(args.stage_out_files),
        "environ_vars": environ_vars(args.env), "priority": args.priority,
        "max_retries": args.max_retries,
    }
