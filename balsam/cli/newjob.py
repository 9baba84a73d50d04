"""What ``balsam job``, ``balsam mkchild`` and ``balsam job --from-file`` share: showing a job
about to be added and inserting one row (Django-free, as those commands must be)."""
from __future__ import annotations

import json
import sys
from typing import Any

from balsam.core import schema
from balsam.core.sql import fetch_dicts
from balsam.errors import NotFound


def insert_job(cur: Any, row: dict[str, Any]) -> None:
    """One INSERT naming every column (``data`` as JSON text)."""
    from balsam.core.reads.jobs import JOB_COLUMNS

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
