"""Small SQL helpers shared by every reader and writer of the tables (Django-free, stdlib only):
rows as dicts from a DB-API cursor, and LIKE patterns from user text."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Optional


def column_names(cur: Any) -> list[str]:
    """The column names of ``cur``'s last result."""
    return [d[0] for d in cur.description]


def as_dicts(names: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """``rows`` as dicts keyed by ``names`` (for rows fetched in batches)."""
    return [dict(zip(names, row)) for row in rows]


def fetch_dicts(cur: Any) -> list[dict[str, Any]]:
    """Every remaining row of ``cur``'s last result as a dict keyed by column name."""
    return as_dicts(column_names(cur), cur.fetchall())


def fetch_dict(cur: Any) -> Optional[dict[str, Any]]:
    """The next row of ``cur``'s last result as a dict, or None if there is none."""
    row = cur.fetchone()
    return None if row is None else dict(zip(column_names(cur), row))


def like_contains(text: str) -> str:
    """A LIKE pattern matching values that contain ``text`` literally (``\\``, ``%``, ``_``
    escaped with the default escape character)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
