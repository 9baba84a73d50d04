"""The launcher's batched reads and writes of ``core_jobpayload`` (Python-function tasks).

The payload table (migration 0011; :mod:`balsam.site.pyfunc` says what it holds) is read and
written per task by the function runner when it runs on its own (MPI mode, a shell preamble).
Serial mode's warm workers need no database connection for a task that is small enough: the
master reads the task's job fields and arguments with its claim (:func:`inline_tasks`, one
statement per claim), the work order carries them to the warm worker, and the warm worker's
outcome comes back through its worker rank to the master, which writes it in the same
transaction as the task's end (:func:`store_outcomes`, one statement per status flush), so a
result is durable when its RUN_DONE is. Larger arguments or outcomes (over
:data:`balsam.defaults.PYFUNC_INLINE_BYTES`) keep the runner's own database path.

Plain DB-API with ``%s`` parameters; no Django, no cloudpickle (the bytes are passed on, never
loaded here).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional

from balsam.core import schema
from balsam.db.dbapi import Cursor

PAYLOAD_TABLE = "core_jobpayload"

TaskRow = tuple[str, str, str, str, Optional[bytes]]
"""What a function task needs from the database: (application, tags, data, parameters -- the
three JSON columns as text --, the cloudpickled ``run()`` arguments or None if the job has no
payload row)."""

OutcomeRow = tuple[str, bool, bytes, str, str]
"""One run's outcome as the master writes it: (job id, failed, cloudpickled value or exception,
traceback text, worker ``host:pid``)."""


def inline_tasks(cursor: Cursor, job_ids: Sequence[str], max_bytes: int) -> dict[str, TaskRow]:
    """The :data:`TaskRow` of each of ``job_ids`` whose arguments and JSON columns each take
    at most ``max_bytes`` (the others, and jobs that do not exist, are absent: their runner reads
    them itself)."""
    if not job_ids or max_bytes <= 0:
        return {}
    cursor.execute(
        f"SELECT j.job_id::text, j.application, j.tags::text, j.data::text, "
        f"j.parameters::text, p.args FROM {schema.JOB_TABLE} j "
        f"LEFT JOIN {PAYLOAD_TABLE} p ON p.job_id = j.job_id "
        f"WHERE j.job_id = ANY(%s::uuid[]) AND coalesce(octet_length(p.args), 0) <= %s "
        f"AND pg_column_size(j.parameters) + pg_column_size(j.tags) "
        f"+ pg_column_size(j.data) <= %s", [list(job_ids), max_bytes, max_bytes])
    return {job_id: (app, tags, data, params, None if args is None else bytes(args))
            for job_id, app, tags, data, params, args in cursor.fetchall()}


def store_outcomes(cursor: Cursor, outcomes: Iterable[OutcomeRow]) -> int:
    """Write the outcomes of runs (replacing earlier runs'), one statement; the number of
    payload rows written. A job listed twice keeps its last outcome."""
    latest = {row[0]: row for row in outcomes}
    if not latest:
        return 0
    rows = list(latest.values())
    cursor.execute(
        f"UPDATE {PAYLOAD_TABLE} p SET result = v.result, failed = v.failed, "
        f"traceback = v.traceback, worker = v.worker, finished_at = now() "
        f"FROM unnest(%s::uuid[], %s::bytea[], %s::boolean[], %s::text[], %s::text[]) "
        f"AS v(job_id, result, failed, traceback, worker) WHERE p.job_id = v.job_id",
        [[r[0] for r in rows], [memoryview(r[2]) for r in rows], [bool(r[1]) for r in rows],
         [r[3] for r in rows], [r[4] for r in rows]])
    return cursor.rowcount
