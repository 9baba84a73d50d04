"""Job row writes on a DB-API cursor (not states: :mod:`balsam.core.lifecycle` writes those)."""
from __future__ import annotations

import json
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from balsam.core import schema
from balsam.core.reads.jobs import JOB_COLUMNS

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

JOB = schema.JOB_TABLE


def _stored(value: Any) -> Any:
    """A value as the job table stores it: a dict (``data``) as JSON text."""
    return json.dumps(value) if isinstance(value, dict) else value


def insert_job(cur: Cursor, row: dict[str, Any]) -> None:
    """One INSERT naming every column of a row from :func:`schema.new_job_row`."""
    values = [_stored(row[c]) for c in JOB_COLUMNS]
    values[0] = str(values[0])
    cur.execute(f"INSERT INTO {JOB} ({', '.join(JOB_COLUMNS)}) "
                f"VALUES ({', '.join(['%s'] * len(JOB_COLUMNS))})", values)


def set_job_field(cur: Cursor, job_id: Any, attr: str, value: Any) -> Any:
    """Set the field ``attr`` (a column of :data:`schema.JOB_DEFAULTS`, not ``state``) of one job to
    a value :func:`schema.check_field` returned; returns the value as stored."""
    if attr not in schema.JOB_DEFAULTS or attr == "state":
        raise ValueError(f"set_job_field cannot set {attr!r}")  # a caller's bug, not user input
    stored = _stored(value)
    cur.execute(f"UPDATE {JOB} SET {attr} = %s WHERE job_id = %s", [stored, str(job_id)])
    return stored


def lock_jobs(cur: Cursor, job_ids: Collection[str]) -> set[str]:
    """The ids of ``job_ids`` that exist, locked against removal until the transaction ends
    (``FOR KEY SHARE``: new children may point at them)."""
    cur.execute(f"SELECT job_id FROM {JOB} WHERE job_id = ANY(%s::uuid[]) FOR KEY SHARE",
                [list(job_ids)])
    return {str(r[0]) for r in cur.fetchall()}
