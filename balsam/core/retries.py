"""Retry limits: how many failed runs a job has used and whether it may run again.

A job's ``max_retries`` (-1: the DB's ``launcher.max_retries`` setting) bounds how many times a
failed run -- RUN_ERROR, or RUN_TIMEOUT -- is retried, automatically after a timeout or by an
error/timeout handler. Failures are counted from the job's events (a few rows per job, read
through the ``event_job_id`` index), so nothing else has to keep a counter in step. A RUN_TIMEOUT
recorded because the launcher itself stopped at its time limit (the allocation's walltime) is
not the job's fault and is not counted. A job whose failures exceed its limit goes to FAILED
with the reason instead of being retried or handed to its handler.

A user resetting a job -- moving it out of a final state (FAILED, JOB_FINISHED, USER_KILLED), which
only a user can do (``balsam modify ID state READY``, ``job.update_state``) -- gives it its whole
limit again: only the failures after the job's newest such event count. That event is found
through the same index, among the same few rows, so the count costs one more index probe.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from balsam.core import schema
from balsam.core.states import END_STATES, State, sql_in
from balsam.db.dbapi import Cursor
from balsam.defaults import MAX_RETRIES, RETRY_BACKOFF_SECONDS

WALLTIME_STOP_REASON = "the launcher's time limit was reached"
"""The launcher's stop reason at the end of its time (``--time-limit-minutes`` or the
allocation's walltime, less the margin)."""

STOP_MESSAGE_PREFIX = "stopped by the launcher: "
"""How a launcher's RUN_TIMEOUT message for the tasks it stopped begins (then the reason)."""

WALLTIME_STOP_MESSAGE = STOP_MESSAGE_PREFIX + WALLTIME_STOP_REASON
"""The RUN_TIMEOUT message of a run cut off by the walltime: such runs use up no retries."""

NOT_STARTED_SUFFIX = " (before its start: it did not run)"
"""Ends the RUN_TIMEOUT message of a job a launcher recorded RUNNING ahead of a free node (MPI
mode's ready-ahead, :mod:`balsam.launcher.mpi_mode`) and stopped before its process started:
it did not run, so it uses up no retry."""


assert "'" not in NOT_STARTED_SUFFIX and "%" not in NOT_STARTED_SUFFIX
NO_RUN_SQL = (f"({{e}}.to_state IN ({sql_in([State.RUN_TIMEOUT, State.USER_KILLED])}) "
              f"AND right({{e}}.message, {len(NOT_STARTED_SUFFIX)}) = '{NOT_STARTED_SUFFIX}')")
"""SQL (format ``e``: the alias of an event leaving RUNNING): the RUNNING visit it ends was no
run -- a job recorded RUNNING ahead of its launch (MPI mode) that a launcher's stop, a user's
kill or the sweep of its dead launcher's session found not started (:data:`NOT_STARTED_SUFFIX`,
:func:`balsam.core.killed_starts.record_unlaunched`, :mod:`balsam.core.launch_reports`). The
state first: the long messages (a RUN_ERROR's output tail) are not read. The analytics count no
run for it (:mod:`balsam.core.analytics_scope`), nor does a task's attempt number
(``BALSAM_JOB_ATTEMPT``, :data:`RUNS_SQL`)."""

RUNS_SQL = f"""(SELECT count(*) FILTER (WHERE e.to_state = '{State.RUNNING.value}')
    - count(*) FILTER (WHERE e.from_state = '{State.RUNNING.value}' AND {NO_RUN_SQL.format(e='e')})
    FROM {schema.EVENT_TABLE} e WHERE e.job_id = j.job_id)"""
"""SQL: the runs job ``j`` had -- its RUNNING visits less those that were no run
(:data:`NO_RUN_SQL`) --, read at its claim (a few rows, by the ``event_job_id`` index) so that a
task knows its attempt number (``BALSAM_JOB_ATTEMPT`` = this + 1)."""


BACKOFF_MAX_FACTOR = 64
"""The back-off doubles per failed run up to this many times ``backoff_seconds``."""


@dataclass(frozen=True)
class RetryPolicy:
    """The DB-wide retry rules (``launcher:`` settings, read through
    :meth:`balsam.core.tunables.Tunables.retry_policy`): the limit of jobs whose
    ``max_retries`` is -1, and the back-off before a timed-out job is retried automatically."""

    max_retries: int = MAX_RETRIES
    backoff_seconds: float = RETRY_BACKOFF_SECONDS

    def backoff(self, failures: int) -> float:
        """Seconds a job with ``failures`` counted failed runs waits before its retry."""
        if self.backoff_seconds <= 0 or failures <= 0:
            return 0.0
        return float(self.backoff_seconds * min(2 ** (failures - 1), BACKOFF_MAX_FACTOR))


def _literal(text: str) -> str:
    """``text`` as an SQL string literal (no ``%``: the SQL is run with parameters)."""
    assert "%" not in text
    return "'" + text.replace("'", "''") + "'"


RESET_SQL = f"""(SELECT max(r.id) FROM {schema.EVENT_TABLE} r WHERE r.job_id = j.job_id
    AND r.from_state IN ({', '.join(_literal(s) for s in END_STATES)}))"""
"""SQL: the id of job ``j``'s newest event leaving a final state (a user's reset), or NULL."""

FAILURES_SQL = f"""(SELECT count(*) FROM {schema.EVENT_TABLE} e WHERE e.job_id = j.job_id
    AND e.id > COALESCE({RESET_SQL}, 0)
    AND (e.to_state = '{State.RUN_ERROR.value}' OR (e.to_state = '{State.RUN_TIMEOUT.value}'
    AND left(e.message, {len(WALLTIME_STOP_MESSAGE)}) <> {_literal(WALLTIME_STOP_MESSAGE)}
    AND right(e.message, {len(NOT_STARTED_SUFFIX)}) <> {_literal(NOT_STARTED_SUFFIX)})))"""
"""SQL: the failed runs of job ``j`` since its last reset that count against its retry limit
(not walltime stops, not stops of jobs that never started)."""


def limit_sql(default: int) -> str:
    """SQL: job ``j``'s retry limit, ``default`` (the DB's setting) where it has none (-1)."""
    return f"(CASE WHEN j.max_retries >= 0 THEN j.max_retries ELSE {int(default)} END)"


def over_limit_sql(default: int) -> str:
    """SQL: true when job ``j`` (in RUN_ERROR or RUN_TIMEOUT) may not be retried again."""
    return f"({FAILURES_SQL} > {limit_sql(default)})"


def over_limit_message(failures: int, limit: int) -> str:
    """The FAILED message of a job that used up its retries."""
    return (f"retry limit reached: {failures} failed run(s) (errors and timeouts, walltime stops "
            f"not counted), max_retries {limit}")


def usage(cursor: Cursor, job_ids: Sequence[Any], default: int) -> dict[str, tuple[int, int]]:
    """{job id: (failed runs counted, retry limit)} of ``job_ids``; ``default``: the DB's
    ``launcher.max_retries``. One query."""
    if not job_ids:
        return {}
    cursor.execute(f"SELECT j.job_id, {FAILURES_SQL}, {limit_sql(default)} "
                   f"FROM {schema.JOB_TABLE} j WHERE j.job_id = ANY(%s::uuid[])",
                   [[str(j) for j in job_ids]])
    return {str(job_id): (int(failures), int(limit)) for job_id, failures, limit
            in cursor.fetchall()}
