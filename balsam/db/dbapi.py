"""The DB-API (PEP 249) cursor and connection as Balsam's code uses them, as static types.

Every SQL function in Balsam takes a cursor it does not own (:mod:`balsam.core.lifecycle`,
:mod:`balsam.core.leases`, the analytics, the launchers' and service's transactions). At run time
that cursor is one of: a psycopg2 cursor (the Django-free paths, :mod:`balsam.db.connect`), the
counting proxy of :class:`balsam.db.database.Database`, or Django's ``CursorWrapper`` over
psycopg2 or psycopg 3 (:mod:`balsam.db.driver`). :class:`Cursor` is the part they share and
Balsam uses: ``%s`` parameters, rows as tuples. Driver-specific operations (``COPY``) go through
:func:`balsam.db.driver.copy_in`, which finds the driver's own cursor.

These are :class:`typing.Protocol` classes: nothing is registered or wrapped, and importing this
module imports no driver and no Django (it lives in ``db``, the layer every other one may use).
``tests/test_typing.py`` checks that psycopg 3's cursor and connection satisfy them.
:func:`fetch_one` and :func:`column_names` read a result where the types alone cannot say that a
row or a column list is there.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Optional, Protocol, TypeVar, Union

Row = tuple[Any, ...]
"""A result row: Balsam never asks a driver for dict rows."""
Params = Union[Sequence[Any], Mapping[str, Any]]
"""Values for the ``%s`` (or ``%(name)s``) placeholders of one statement."""

_C = TypeVar("_C", bound="ManagedCursor")


class Cursor(Protocol):
    """A DB-API cursor borrowed for one transaction: the caller opens and commits it."""

    @property
    def description(self) -> Optional[Sequence[Any]]:
        """One entry per result column (its name first), None before a query returning rows."""

    @property
    def rowcount(self) -> int:
        """Rows the last statement produced or changed (-1 if unknown)."""

    def execute(self, sql: str, params: Optional[Params] = None, /) -> object:
        """Run one statement."""

    def executemany(self, sql: str, params_seq: Iterable[Params], /) -> object:
        """Run one statement once per parameter set."""

    def fetchone(self) -> Optional[Row]:
        """The next row, None when there are no more."""

    def fetchmany(self, size: int = ..., /) -> list[Row]:
        """Up to ``size`` next rows."""

    def fetchall(self) -> list[Row]:
        """The remaining rows."""

    def close(self) -> object:
        """Release the cursor."""


class ManagedCursor(Cursor, Protocol):
    """A cursor that is also a context manager (closed on exit), as ``connection.cursor()`` gives."""

    def __enter__(self: _C) -> _C:
        """The cursor itself."""

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType], /) -> object:
        """Close the cursor."""


class Connection(Protocol):
    """A DB-API connection Balsam owns: opens cursors, commits or rolls back, closes."""

    autocommit: bool

    @property
    def closed(self) -> Union[bool, int]:
        """Truthy once closed (psycopg2 gives an int, psycopg 3 a bool)."""

    def cursor(self) -> ManagedCursor:
        """A new cursor in this connection's current transaction."""

    def commit(self) -> object:
        """Commit the current transaction."""

    def rollback(self) -> object:
        """Roll back the current transaction."""

    def close(self) -> object:
        """Close the connection."""



class NamedCursorConnection(Protocol):
    """A connection that opens named (server-side) cursors: psycopg2's ``cursor(name=...)``."""

    def cursor(self, name: str) -> Cursor:
        """A server-side cursor: rows are fetched in batches as they are read."""


class PlainCursor(Cursor, Protocol):
    """A cursor of a plain psycopg2 connection (the CLI's, :mod:`balsam.db.connect`): its
    connection opens server-side cursors, for listings read in batches with flat memory."""

    @property
    def connection(self) -> NamedCursorConnection:
        """The connection the cursor belongs to."""


def fetch_one(cursor: Cursor) -> Row:
    """The row of a statement that always returns exactly one (an aggregate without GROUP BY,
    ``INSERT ... RETURNING`` of one row, ``SELECT`` of expressions); LookupError if it gave none."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("the statement returned no row")
    return row


def column_names(cursor: Cursor) -> list[str]:
    """The names of the last query's result columns; LookupError if it returned no rows."""
    if cursor.description is None:
        raise LookupError("the statement returns no rows")
    return [column[0] for column in cursor.description]
