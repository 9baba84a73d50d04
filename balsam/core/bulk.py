"""Bulk insertion of jobs through PostgreSQL COPY (used by ``BalsamJob.objects.bulk_create``).

Every row is validated exactly as ``save()`` validates (:func:`schema.normalize_job_values`):
a value already in canonical form costs one type test in the Cython kernel, any other row goes
through the Python normaliser, which converts it or raises. Rows are validated and encoded in
chunks of :data:`CHUNK_ROWS` while they are streamed to the server, so memory holds one chunk of
COPY text at a time and the server stores one chunk while the next is prepared. A bad value in
any row aborts the COPY; the caller's transaction then leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Optional

from balsam.core import copyfmt, lifecycle, schema
from balsam.core.states import STATES, State
from balsam.db import driver
from balsam.db.dbapi import Cursor

COLUMNS: tuple[str, ...] = tuple(schema.JOB_SYSTEM_COLUMNS) + tuple(schema.JOB_DEFAULTS)

_STATE = itemgetter("state")

CHUNK_ROWS = 2000
"""Rows encoded per piece of the COPY stream (~0.5 MB of text): bounds memory for millions of
jobs, and small enough that the server works on one piece while the next is encoded."""

def _check(column: str) -> Any:
    """What a canonical value of ``column`` is, for :func:`copyfmt.check_rows`."""
    if column in schema.JOB_SYSTEM_COLUMNS:
        return None  # set by Balsam; PostgreSQL rejects a malformed one
    if column in ("environ_vars", "input_files"):
        return frozenset({""})  # a non-empty one is checked by the Python normaliser
    if column == "state":
        return frozenset(STATES)
    if column in schema.INT_FIELDS:
        return (schema.int_low(column), 2**31 - 1)
    return type(schema.JOB_DEFAULTS[column])


CHECKS: tuple[Any, ...] = tuple(_check(c) for c in COLUMNS)


def normalize_rows(jobs: list[dict[str, Any]]) -> int:
    """Validate and convert, in place, every settable field of each job dict, exactly as
    :func:`schema.normalize_job_values` does (it raises on the first bad value); returns the
    number of rows that needed converting."""
    return copyfmt.check_rows(jobs, COLUMNS, CHECKS, schema.normalize_job_values)


def _chunks(jobs: list[dict[str, Any]], chunk_rows: int, normalized: bool,
            failure: list[BaseException],
            check: Optional[Callable[[list[dict[str, Any]]], None]] = None) -> Iterator[bytes]:
    """The COPY text of ``jobs``, ``chunk_rows`` at a time, each chunk checked (``check``) and
    validated (unless ``normalized``) just before it is encoded. An error is also appended to
    ``failure``: psycopg2 turns an exception raised while it reads the stream into a generic
    "COPY failed" error, and the caller raises the original instead."""
    for start in range(0, len(jobs), chunk_rows):
        end = start + chunk_rows
        try:
            if check is not None:
                check(jobs[start:end])
            if not normalized:
                normalize_rows(jobs[start:end])
            chunk = copyfmt.encode_dicts(jobs, COLUMNS, start, end)
        except BaseException as exc:
            failure.append(exc)
            raise
        yield chunk


def copy_jobs(cursor: Cursor, jobs: Sequence[dict[str, Any]], normalized: bool = False,
              check: Optional[Callable[[list[dict[str, Any]]], None]] = None) -> int:
    """Insert full job rows (``schema.new_job_row`` dicts, or models' ``__dict__``s) with COPY;
    returns the count. Each dict is validated and normalised in place (:func:`normalize_rows`)
    as it is sent, unless the caller says it already was (``normalized``); ``check``, if given,
    is called on each chunk of rows before that (it raises to refuse them), so the server
    stores one chunk while the next is checked.

    Run it inside a transaction: on any error (the first invalid value raises its own
    ``FieldError``) the caller's rollback leaves no row behind. Jobs created in a state other
    than CREATED get a CREATED -> state event, as if moved there.
    """
    jobs = jobs if type(jobs) is list else list(jobs)
    failure: list[BaseException] = []
    sql = (f"COPY {schema.JOB_TABLE} ({', '.join(COLUMNS)}) FROM STDIN "
           "WITH (FORMAT text, ENCODING 'UTF8')")
    # Through a Django cursor, server errors become Django's (IntegrityError ...), as in the ORM.
    django_db = getattr(cursor, "db", None)
    try:
        with django_db.wrap_database_errors if django_db is not None else contextlib.nullcontext():
            driver.copy_in(cursor, sql, _chunks(jobs, CHUNK_ROWS, normalized, failure, check))
    except Exception:
        if failure:
            raise failure[0] from None
        raise
    created = State.CREATED.value
    states = list(map(_STATE, jobs))  # a C loop: most bulk inserts are all CREATED
    if states.count(created) != len(states):
        lifecycle.record_created(cursor, [(j["job_id"], s) for j, s in zip(jobs, states)
                                          if s != created])
    return len(jobs)


def insert_edges(cursor: Cursor, edges: Sequence[tuple[Any, Any]]) -> None:
    """Insert dependency edges (parent, child) in one statement, without cycle checks: used for
    edges among jobs being created together, whose children are all new."""
    if not edges:
        return
    cursor.execute(
        f"INSERT INTO {schema.DEP_TABLE} (parent_id, child_id) "
        "SELECT * FROM unnest(%s::uuid[], %s::uuid[])",
        [[str(p) for p, _ in edges], [str(c) for _, c in edges]])


# ---- fast random job ids ----------------------------------------------------------------------

_POOL: list[uuid.UUID] = []
_POOL_SIZE = 4096


def uuid4() -> uuid.UUID:
    """A random (version 4) UUID, like :func:`uuid.uuid4` but three times cheaper: the random
    bytes are read from ``os.urandom`` for 4096 ids at a time, and the ids are made by the kernel
    (:func:`copyfmt.uuids_from_bytes`). The pool is emptied in a forked child, so parent and
    child never hand out the same id."""
    try:
        return _POOL.pop()
    except IndexError:
        _POOL.extend(copyfmt.uuids_from_bytes(os.urandom(16 * _POOL_SIZE)))
        return _POOL.pop()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_POOL.clear)
