"""``balsam which``: the active Balsam DB, the DBs this user knows, a DB's path by name, and a
job's working directory (what ``bcd`` changes into). Only ``--workdir`` needs a running server."""
from __future__ import annotations

import argparse
import os
from typing import Any

from balsam.cli.common import add_command
from balsam.errors import BalsamError


def register(sub: Any) -> None:
    p = add_command(sub, "which", run, "show the active Balsam DB, list known DBs, or find one by name")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--list", action="store_true",
                       help="list the known Balsam DBs (~/.balsam/databases.json, pruned)")
    group.add_argument("--name", metavar="S",
                       help="print the path of the DB named S: a path, a directory name, or a unique "
                            "part of an indexed path")
    group.add_argument("--workdir", metavar="JOBID-PREFIX",
                       help="print the working directory of the job whose id starts with JOBID-PREFIX")


def run(args: argparse.Namespace) -> int:
    from balsam.db import index

    if args.list:
        _print_index(index.read())
    elif args.name is not None:
        if not args.name.strip():
            raise BalsamError("--name needs a DB name or path")
        print(index.resolve(args.name.strip()))
    elif args.workdir is not None:
        print(_workdir(args.workdir))
    elif os.environ.get("BALSAM_DB_PATH", "").strip():
        _print_current()
    else:
        print("No Balsam DB is active (`source balsamactivate NAME` activates one). Known DBs:")
        _print_index(index.read())
    return 0


def _print_index(paths: list[str]) -> None:
    if not paths:
        print("No Balsam DBs are known yet: create one with `balsam init PATH`")
    for path in paths:
        print(path)


def _print_current() -> None:
    from balsam.cli.common import db_path
    from balsam.db import serverinfo

    path = db_path()
    info = serverinfo.read(path)
    print(f"Current Balsam DB: {path}")
    if info.get("host") and info.get("port"):
        print(f"  server: {info['host']}:{info['port']} (pid {info.get('pid') or 'unknown'})")
    else:
        print("  server: not running (no host recorded in server-info)")
    print(f"  database: {info.get('database', serverinfo.DATABASE_NAME)}")
    print(f"  owner: {info.get('owner')}; server runs as: {info.get('server_account')}")
    print(f"  PostgreSQL: {info.get('pg_version')} ({info.get('pg_bin')})")


def _workdir(prefix: str) -> str:
    from balsam.cli.common import transaction
    from balsam.core import schema
    from balsam.core.reads.jobs import find_job

    if not prefix.strip():
        raise BalsamError("give a job id prefix (usage: bcd JOBID-PREFIX)")
    with transaction() as (path, cur):
        job = find_job(cur, prefix, columns="job_id, workflow, name, user_workdir")
    return schema.working_directory(path, job["workflow"], job["name"], job["job_id"],
                                    job["user_workdir"])
