"""Application row writes on a DB-API cursor: add, change a field, rename, remove."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from balsam.core import schema
from balsam.core.reads.apps import app_exists
from balsam.core.sql import fetch_dicts
from balsam.errors import BalsamError

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

APP = schema.APP_TABLE


def _check_columns(columns: Sequence[str]) -> None:
    unknown = [c for c in columns if c not in schema.APP_DEFAULTS]
    if unknown:
        raise ValueError(f"not application fields: {unknown}")  # a caller's bug, not user input


def create_app(cur: Cursor, values: Mapping[str, Any]) -> dict[str, Any]:
    """Insert an application (``values``: checked fields of :data:`schema.APP_DEFAULTS`, with a
    ``name``); returns its row (``id`` first). BalsamError if the name is taken."""
    cols = list(values)
    _check_columns(cols)
    if app_exists(cur, values["name"]):
        raise BalsamError(f"an application named {values['name']!r} already exists")
    cur.execute(f"INSERT INTO {APP} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) "
                "RETURNING id, " + ", ".join(cols), [values[c] for c in cols])
    return fetch_dicts(cur)[0]


def ensure_app(cur: Cursor, values: Mapping[str, Any]) -> None:
    """Insert an application unless one of its name exists (then leave that one as it is)."""
    cols = list(values)
    _check_columns(cols)
    cur.execute(f"INSERT INTO {APP} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) "
                "ON CONFLICT (name) DO NOTHING", [values[c] for c in cols])


def set_app_field(cur: Cursor, app_id: int, attr: str, value: Any) -> None:
    """Set one checked field (not ``name``: :func:`rename_app`) of the app numbered ``app_id``."""
    _check_columns([attr])
    if attr == "name":
        raise ValueError("set_app_field cannot rename: use rename_app")  # a caller's bug
    cur.execute(f"UPDATE {APP} SET {attr} = %s WHERE id = %s", [value, app_id])


def rename_app(cur: Cursor, app_id: int, old: str, new: str) -> int:
    """Rename the app numbered ``app_id`` from ``old`` to ``new`` (a checked name), and the jobs
    that use it with it; returns how many jobs were renamed. BalsamError if ``new`` is taken."""
    if app_exists(cur, new, other_than=app_id):
        raise BalsamError(f"an application named {new!r} already exists")
    cur.execute(f"UPDATE {schema.JOB_TABLE} SET application = %s WHERE application = %s", [new, old])
    renamed = cur.rowcount
    cur.execute(f"UPDATE {APP} SET name = %s WHERE id = %s", [new, app_id])
    return renamed


def delete_apps(cur: Cursor, app_ids: Sequence[int]) -> None:
    """Remove the applications numbered ``app_ids`` (their jobs are the caller's concern)."""
    cur.execute(f"DELETE FROM {APP} WHERE id = ANY(%s)", [list(app_ids)])
