"""``balsam dep PARENT CHILD``: make CHILD wait for PARENT to finish."""
from __future__ import annotations

import argparse
from typing import Any

from balsam.cli.common import add_command, find_job, transaction
from balsam.core import schema


def register(sub: Any) -> None:
    p = add_command(sub, "dep", run, "add a dependency: CHILD runs after PARENT finishes")
    p.add_argument("parent", help="job id (or a prefix matching exactly one job)")
    p.add_argument("child", help="job id (or a prefix matching exactly one job)")


def run(args: argparse.Namespace) -> int:
    from balsam.core import lifecycle

    with transaction() as (_, cur):
        parent = find_job(cur, args.parent, "job_id, name")
        child = find_job(cur, args.child, "job_id, name")
        lifecycle.add_dependency(cur, parent["job_id"], child["job_id"])
    print(f"Created link {schema.cute_id(parent['name'], parent['job_id'])} --> "
          f"{schema.cute_id(child['name'], child['job_id'])}")
    return 0
