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
from collections.abc import Sequence
from typing import Any, Optional

from balsam.core import copyfmt, lifecycle, schema

COLUMNS: tuple[str, ...] = tuple(schema.JOB_SYSTEM_COLUMNS) + tuple(schema.JOB_DEFAULTS)

CHUNK_ROWS = 2000
"""Rows encoded per piece of the COPY stream (~0.5 MB of text): bounds memory for millions of
jobs, and small enough that the server works on one piece while the next is encoded."""

_INT_RANGE = {0: (0, 2**31 - 1), 1: (1, 2**31 - 1)}


def _check(column: str) -> Any:
    """What a canonical value of ``column`` is, for :func:`copyfmt.check_rows`."""
    if column in schema.JOB_SYSTEM_COLUMNS:
        return None  # set by Balsam; PostgreSQL rejects a malformed one
    if column in ("environ_vars", "input_files"):
        return frozenset({""})  # a non-empty one is checked by the Python normaliser
    if column == "state":
        from balsam.core.states import STATES

        return frozenset(STATES)
    if column in schema.INT_FIELDS:
        return _INT_RANGE[1 if column in schema.POSITIVE_FIELDS else 0]
    return type(schema.JOB_DEFAULTS[column])


CHECKS: tuple[Any, ...] = tuple(_check(c) for c in COLUMNS)


def normalize_rows(jobs: list[dict]) -> int:
    """Validate and convert, in place, every settable field of each job dict, exactly as
    :func:`schema.normalize_job_values` does (it raises on the first bad value); returns the
    number of rows that needed converting."""
    return copyfmt.check_rows(jobs, COLUMNS, CHECKS, schema.normalize_job_values)


class _CopyStream:
    """A file-like source for ``copy_expert``: each ``read()`` validates (unless ``normalized``)
    and encodes the next chunk of rows.

    psycopg2 turns an exception raised in ``read()`` into a generic "COPY failed" error; the
    original is kept in :attr:`error` so the caller can raise it instead.
    """

    def __init__(self, jobs: list[dict], chunk_rows: int, normalized: bool) -> None:
        self.jobs = jobs
        self.chunk_rows = chunk_rows
        self.normalized = normalized
        self.next_row = 0
        self.error: Optional[BaseException] = None

    def read(self, size: int = -1) -> bytes:
        start = self.next_row
        if start >= len(self.jobs):
            return b""
        end = self.next_row = start + self.chunk_rows
        try:
            if not self.normalized:
                normalize_rows(self.jobs[start:end])
            return copyfmt.encode_dicts(self.jobs, COLUMNS, start, end)
        except BaseException as exc:
            self.error = exc
            raise

    readline = read


def copy_jobs(cursor: Any, jobs: Sequence[dict], normalized: bool = False) -> int:
    """Insert full job rows (``schema.new_job_row`` dicts, or models' ``__dict__``s) with COPY;
    returns the count. Each dict is validated and normalised in place (:func:`normalize_rows`)
    as it is sent, unless the caller says it already was (``normalized``).

    Run it inside a transaction: on any error (the first invalid value raises its own
    ``FieldError``) the caller's rollback leaves no row behind. Jobs created in a state other
    than CREATED get a CREATED -> state event, as if moved there.
    """
    jobs = jobs if type(jobs) is list else list(jobs)
    raw = getattr(cursor, "cursor", cursor)  # a Django CursorWrapper wraps the psycopg2 cursor
    stream = _CopyStream(jobs, CHUNK_ROWS, normalized)
    sql = (f"COPY {schema.JOB_TABLE} ({', '.join(COLUMNS)}) FROM STDIN "
           "WITH (FORMAT text, ENCODING 'UTF8')")
    # Through a Django cursor, server errors become Django's (IntegrityError ...), as in the ORM.
    django_db = getattr(cursor, "db", None)
    try:
        with django_db.wrap_database_errors if django_db is not None else contextlib.nullcontext():
            raw.copy_expert(sql, stream)
    except Exception:
        if stream.error is not None:
            raise stream.error from None
        raise
    lifecycle.record_created(cursor, [(j["job_id"], j["state"]) for j in jobs
                                      if j["state"] != "CREATED"])
    return len(jobs)


def insert_edges(cursor: Any, edges: Sequence[tuple[Any, Any]]) -> None:
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
