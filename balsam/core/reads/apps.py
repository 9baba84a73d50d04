"""Application reads on a DB-API cursor for the commands that write jobs and applications
(``balsam job``, ``mkchild``, ``app``, ``modify``, ``rm``). Django-free, like the whole read layer;
the listings of applications are in :mod:`balsam.core.reads.jobs`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from balsam.core import schema
from balsam.core.sql import fetch_dicts
from balsam.errors import NotFound

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

APP = schema.APP_TABLE


def app_defaults(cur: Cursor, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{name: the app's fields (:data:`schema.APP_DEFAULTS`)} for those of ``names`` that exist."""
    cur.execute(f"SELECT {', '.join(schema.APP_DEFAULTS)} FROM {APP} WHERE name = ANY(%s)",
                [list(names)])
    return {a["name"]: a for a in fetch_dicts(cur)}


def find_app(cur: Cursor, text: str) -> dict[str, Any]:
    """``{id, name}`` of the app numbered ``text`` if it is a number and such an app exists,
    else of the one named ``text``; :class:`NotFound` if neither."""
    if text.strip().isdigit():
        cur.execute(f"SELECT id, name FROM {APP} WHERE id = %s", [int(text)])
        rows = fetch_dicts(cur)
        if rows:
            return rows[0]
    cur.execute(f"SELECT id, name FROM {APP} WHERE name = %s", [text])
    rows = fetch_dicts(cur)
    if not rows:
        raise NotFound(f"no application numbered or named {text!r} (see `balsam ls apps`)")
    return rows[0]


def app_exists(cur: Cursor, name: str, other_than: Optional[int] = None) -> bool:
    """True if an app is named ``name`` (apart from the one numbered ``other_than``)."""
    cur.execute(f"SELECT 1 FROM {APP} WHERE name = %s AND id IS DISTINCT FROM %s",
                [name, other_than])
    return cur.fetchone() is not None


def app_uses(cur: Cursor, names: Sequence[str]) -> list[tuple[str, int]]:
    """[(app name, number of jobs using it)] for the apps of ``names`` that jobs use, by name."""
    cur.execute(f"SELECT application, count(*) FROM {schema.JOB_TABLE} WHERE application = ANY(%s) "
                "GROUP BY application ORDER BY application", [list(names)])
    return [(str(name), int(count)) for name, count in cur.fetchall()]
