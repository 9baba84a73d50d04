"""Small SQL helpers shared by every reader and writer of the tables (Django-free, stdlib only):
rows as dicts from a DB-API cursor, and LIKE patterns from user text."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor


def column_names(cur: Cursor) -> list[str]:
    """The column names of ``cur``'s last result; LookupError if the statement returns no rows."""
    if cur.description is None:
        raise LookupError("the statement returns no rows")
    return [d[0] for d in cur.description]


def as_dicts(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """``rows`` as dicts keyed by ``names`` (for rows fetched in batches)."""
    return [dict(zip(names, row)) for row in rows]


def fetch_dicts(cur: Cursor) -> list[dict[str, Any]]:
    """Every remaining row of ``cur``'s last result as a dict keyed by column name."""
    return as_dicts(column_names(cur), cur.fetchall())


def fetch_dict(cur: Cursor) -> Optional[dict[str, Any]]:
    """The next row of ``cur``'s last result as a dict, or None if there is none."""
    row = cur.fetchone()
    return None if row is None else dict(zip(column_names(cur), row))


def scalar(cur: Cursor) -> Any:
    """The first value of the one row of ``cur``'s last statement (an aggregate without GROUP
    BY, ``SELECT EXISTS``); LookupError if it returned no row."""
    row = cur.fetchone()
    if row is None:
        raise LookupError("the statement returned no row")
    return row[0]


def like_contains(text: str) -> str:
    """A LIKE pattern matching values that contain ``text`` literally (``\\``, ``%``, ``_``
    escaped with the default escape character)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def array_literal(values: Sequence[str]) -> str:
    """PostgreSQL's text form of a one-dimensional array of ``values`` (every element
    double-quoted, ``"`` and ``\\`` escaped, so every string -- empty, ``NULL``, braces, commas
    -- stays that string), to pass as ONE parameter cast to an array type (``%s::uuid[]``,
    ``%s::text[]``). psycopg2 sends a Python list as ``ARRAY['a', 'b', ...]``, an expression of
    one literal per element that the server parses and coerces element by element: for a
    launcher's moves of 1,024 jobs (seven such arrays) ~4-6% of the server's CPU per task, and
    ~1-3 ms of the client's Python per array (issue 16)."""
    if not values:
        return "{}"
    text = '","'.join(values)
    if '"' in text or "\\" in text:
        text = '","'.join(v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return '{"' + text + '"}'
