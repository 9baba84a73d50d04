"""What ``balsam job``, ``balsam mkchild`` and ``balsam job --from-file`` share: showing a job
about to be added (Django-free, as those commands must be; the row is written by
:func:`balsam.core.writes.jobs.insert_job`)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Optional, TextIO

from balsam.core import schema
from balsam.core.reads.apps import app_defaults
from balsam.errors import NotFound

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor


def show_new_job(cur: Cursor, db_path: str, row: dict[str, Any], parents: list[str],
                 out: Optional[TextIO] = None) -> None:
    """Print the job about to be added; :class:`NotFound` if its application does not exist."""
    from balsam.core.render import job_repr

    out = out or sys.stdout
    app = app_defaults(cur, [row["application"]]).get(row["application"])
    if app is None:
        raise NotFound(f"application {row['application']!r} does not exist (see `balsam ls apps`)")
    workdir = schema.working_directory(db_path, row["workflow"], row["name"], row["job_id"],
                                       row["user_workdir"])
    print(job_repr(dict(row, parents=parents), app, workdir), file=out)
