"""Bulk insertion of jobs through PostgreSQL COPY (used by ``BalsamJob.objects.bulk_create``)."""
from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

from balsam.core import schema
from balsam.core.copyfmt import encode_rows

COLUMNS: list[str] = ["job_id", "created_at", "tick", "queued_launch_id"] + list(schema.JOB_DEFAULTS)
CHUNK_ROWS = 20000
"""Rows encoded per COPY chunk: bounds memory for millions of jobs."""


_DATA = COLUMNS.index("data")


def _row(job: Mapping[str, Any]) -> list[Any]:
    # str() of the UUIDs and aware datetimes (done by the encoder) is valid COPY input.
    out = [job[c] for c in COLUMNS]
    data = out[_DATA]
    out[_DATA] = json.dumps(data) if data else "{}"
    return out


def copy_jobs(cursor: Any, jobs: Sequence[Mapping[str, Any]]) -> int:
    """COPY full job rows (``schema.new_job_row`` dicts, or a model's ``__dict__``); returns the count.

    Jobs created in a state other than CREATED get a CREATED -> state event, as if moved there.
    """
    raw = getattr(cursor, "cursor", cursor)  # a Django CursorWrapper wraps the psycopg2 cursor
    sql = f"COPY {schema.JOB_TABLE} ({', '.join(COLUMNS)}) FROM STDIN"
    for start in range(0, len(jobs), CHUNK_ROWS):
        chunk = [_row(j) for j in jobs[start:start + CHUNK_ROWS]]
        raw.copy_expert(sql, io.StringIO(encode_rows(chunk)))
    moved = [j for j in jobs if j["state"] != "CREATED"]
    if moved:
        cursor.execute(
            f"INSERT INTO {schema.EVENT_TABLE} (job_id, timestamp, from_state, to_state, message) "
            "SELECT id, clock_timestamp(), 'CREATED', st, 'created in this state' "
            "FROM unnest(%s::uuid[], %s::text[]) AS t(id, st)",
            [[str(j["job_id"]) for j in moved], [j["state"] for j in moved]])
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
