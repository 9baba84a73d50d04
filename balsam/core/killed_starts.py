"""Runs that began under a launcher but whose RUNNING was refused because a user killed the job
first: recorded in the job's history all the same.

Serial mode records RUNNING after a task started, in batches (:mod:`balsam.launcher.modes`).
A user's kill that lands in between moves the held job from its runnable state (PREPROCESSED,
RESTART_READY) to USER_KILLED, so the batch's move to RUNNING is refused
(``status.Written.not_started``) and the launcher stops the task -- but the run happened.
:func:`record` writes it, in the transaction that found the refusal, from the time each start
(and an end noted in the same batch) was noted: ``age`` seconds before the statement, on the
server's clock (no clock of a compute node is compared with the server's). Two shapes, each a
whole history with every event one visit of its ``from_state`` (the analytics' rule) and ids
in time order (every reader orders events by id):

* **Started before the kill** (the usual case: a user kills a task they saw start). The kill's
  event row becomes the start (``runnable -> RUNNING``, dated at the start, "... (recorded after
  the kill)") and the kill is appended after it, leaving RUNNING (``RUNNING -> USER_KILLED``,
  the kill's own time and message, the run's nodes), or, if the task's end was noted before the
  kill, the end then the kill (``RUNNING -> RUN_DONE`` ..., ``RUN_DONE -> USER_KILLED``).
* **Started after the kill** (the launcher started a queued task before it learned of the
  kill). The kill stays first; the run is appended: ``USER_KILLED -> RUNNING`` ("started before
  the launcher learned of the kill") and ``RUNNING -> USER_KILLED`` when the launcher learned
  (this statement) or, if earlier, when the task's end was noted; ``state_since`` follows.

The job stays USER_KILLED and held (its launcher stops the task and drops the hold as for any
kill); it is not retried (final), and runs, runtimes and utilisation count the run. (The
``USER_KILLED -> RUNNING`` event leaves a final state, which the retry count reads as a reset:
harmless, as only a user's forced change, a later event, can move the job again.) Writing the
same refusal twice changes nothing: only a job whose last event is a kill from a runnable state
is rewritten.

**No run that did not happen.** MPI mode records RUNNING *before* a launch, some jobs ahead of
a free node (:mod:`balsam.launcher.mpi_mode`); a user's kill of such a job before its launch
leaves ``... -> RUNNING -> USER_KILLED`` although no process ran. The launcher drops the job
(it is not launched) and :func:`record_unlaunched`, in the transaction that drops its hold,
marks the kill's event: its message ends with
:data:`balsam.core.retries.NOT_STARTED_SUFFIX` (as the RUN_TIMEOUT of a job ready ahead that a
launcher's stop kept from starting) and it carries no nodes. The analytics count no run, no
runtime and no busy node for a RUNNING visit whose leaving event says so
(:mod:`balsam.core.analytics`). If the launcher dies before it marks the kill, the sweep of
its session does, from what its watchdog reports it launched (:mod:`balsam.core.launch_reports`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from balsam.core import schema
from balsam.core.lifecycle import RUN_NODES_SQL
from balsam.core.retries import NOT_STARTED_SUFFIX
from balsam.core.states import RUNNABLE_STATES, State, sql_in
from balsam.db.dbapi import Cursor

JOB, EVENT = schema.JOB_TABLE, schema.EVENT_TABLE
_RUNNING, _KILLED = sql_in([State.RUNNING]), sql_in([State.USER_KILLED])

AFTER_KILL_SUFFIX = " (recorded after the kill)"
"""Ends the message of a RUNNING event written by :func:`record` for a start before the kill."""
BEFORE_LEARNED_SUFFIX = " (started before the launcher learned of the kill)"
"""Ends the message of a RUNNING event written by :func:`record` for a start after the kill."""
STOPPED_MESSAGE = ("stopped by the launcher: the job was killed by a user before its start "
                   "was recorded")
ENDED_MESSAGE = "the run ended before the launcher learned of the kill: "

# k: the refused runs of killed jobs this session holds whose last event is still the kill from
# a runnable state (so a second write finds nothing), with the start (and a noted end) dated
# ``age`` seconds before the statement, never before the claimed state was entered. mode 'A':
# started before the kill, ended after it (or not yet); 'E': started and ended before it; 'B':
# started after it. The statement rewrites the kill's row into the start (A, E), appends the
# rest in order (ids in time order) and moves ``state_since`` to a B run's stop.
_RECORD_SQL = f"""
WITH r AS (
    SELECT * FROM unnest(%s::uuid[], %s::float8[], %s::text[], %s::text[], %s::float8[])
        AS r(job_id, start_age, end_state, end_message, end_age)
), k0 AS (
    SELECT j.job_id, e.id AS kill_id, e.from_state AS held_state, e.timestamp AS killed_at,
           e.message AS kill_message, {RUN_NODES_SQL} AS nodes, r.end_state, r.end_message,
           greatest(statement_timestamp() - make_interval(secs => r.start_age), e.entered_at)
               AS started_at, r.end_age
    FROM (SELECT * FROM r ORDER BY job_id) r
    JOIN {JOB} j ON j.job_id = r.job_id
    CROSS JOIN LATERAL (SELECT * FROM {EVENT} e1 WHERE e1.job_id = j.job_id
                        ORDER BY e1.id DESC LIMIT 1) e
    WHERE j.session_id = %s AND j.state = {_KILLED} AND e.to_state = {_KILLED}
      AND e.from_state = ANY(%s::text[])
    FOR UPDATE OF j
), k1 AS (
    SELECT k0.*, CASE WHEN end_state <> '' THEN greatest(
               statement_timestamp() - make_interval(secs => end_age), started_at) END AS ended_at
    FROM k0
), k AS (
    SELECT k1.*, CASE WHEN started_at >= killed_at THEN 'B'
                      WHEN ended_at < killed_at THEN 'E' ELSE 'A' END AS mode
    FROM k1
), k_start AS (
    UPDATE {EVENT} e SET to_state = {_RUNNING}, timestamp = k.started_at,
        message = %s::text, nodes = NULL
    FROM k WHERE e.id = k.kill_id AND k.mode <> 'B'
), k_ev AS (
    INSERT INTO {EVENT} (job_id, timestamp, from_state, to_state, message, entered_at, nodes)
    SELECT job_id, ts, from_state, to_state, message, entered_at, nodes FROM (
        SELECT job_id, killed_at AS ts, {_RUNNING} AS from_state, {_KILLED} AS to_state,
               kill_message AS message, started_at AS entered_at, nodes, 1 AS step
        FROM k WHERE mode = 'A'
        UNION ALL
        SELECT job_id, ended_at, {_RUNNING}, end_state, end_message, started_at, nodes, 1
        FROM k WHERE mode = 'E'
        UNION ALL
        SELECT job_id, killed_at, end_state, {_KILLED}, kill_message, ended_at, NULL, 2
        FROM k WHERE mode = 'E'
        UNION ALL
        SELECT job_id, started_at, {_KILLED}, {_RUNNING}, %s::text, killed_at, NULL, 1
        FROM k WHERE mode = 'B'
        UNION ALL
        SELECT job_id, coalesce(ended_at, statement_timestamp()), {_RUNNING}, {_KILLED},
               CASE WHEN ended_at IS NULL THEN %s::text ELSE %s::text || end_state END,
               started_at, nodes, 2
        FROM k WHERE mode = 'B'
    ) s ORDER BY job_id, step
), k_job AS (
    UPDATE {JOB} j SET state_since = coalesce(k.ended_at, statement_timestamp())
    FROM k WHERE j.job_id = k.job_id AND k.mode = 'B'
)
SELECT job_id, mode FROM k ORDER BY job_id
"""


def record(cursor: Cursor, session_id: int, start_ages: Mapping[str, float],
           start_message: str,
           ends: Mapping[str, tuple[State, str, float]] | None = None) -> dict[str, str]:
    """Record the runs of ``start_ages`` (job id -> seconds since its start was noted) whose
    RUNNING was refused because a user killed the job while session ``session_id`` held it
    (see the module docstring); ``ends`` gives a run's end noted in the same batch (job id ->
    (end state, message, seconds since it was noted)). Jobs refused for another reason are left
    alone. One statement, in the caller's transaction; returns {job id: 'A' | 'E' | 'B'} of the
    runs recorded (started before the kill, started and ended before it, started after it)."""
    return _record(cursor, session_id, start_ages, start_message, ends or {},
                   (start_message + AFTER_KILL_SUFFIX, start_message + BEFORE_LEARNED_SUFFIX,
                    STOPPED_MESSAGE))


def record_lost(cursor: Cursor, session_id: int, job_ids: Sequence[str], start_message: str,
                end_message: str) -> list[str]:
    """Record the runs of ``job_ids`` a dead ensemble started and never recorded (when is not
    known: :func:`balsam.core.leases.record_lost_starts` dates such runs when it records them,
    ``start_message`` saying so) whose jobs a user killed while session ``session_id`` held
    them: ``USER_KILLED -> RUNNING -> USER_KILLED`` (``end_message``), dated now. Returns the
    ids recorded."""
    return list(_record(cursor, session_id, dict.fromkeys(job_ids, 0.0), start_message, {},
                        (start_message, start_message, end_message)))


def _record(cursor: Cursor, session_id: int, start_ages: Mapping[str, float], start_message: str,
            ends: Mapping[str, tuple[State, str, float]],
            messages: tuple[str, str, str]) -> dict[str, str]:
    """:func:`record`, with the messages of a start before the kill, of a start after it and of
    the stop of a run started after it."""
    if not start_ages:
        return {}
    ids = sorted(start_ages)
    end_of = [ends.get(j) for j in ids]
    params: list[Any] = [
        ids, [max(0.0, float(start_ages[j])) for j in ids],
        [e[0].value if e else "" for e in end_of], [e[1] if e else "" for e in end_of],
        [max(0.0, float(e[2])) if e else 0.0 for e in end_of],
        session_id, list(RUNNABLE_STATES), *messages, ENDED_MESSAGE]
    cursor.execute(_RECORD_SQL, params)
    return {str(job_id): mode for job_id, mode in cursor.fetchall()}



# u: the jobs of ``ids`` this session still holds, killed by a user, whose last event is the kill
# leaving RUNNING and not marked yet (so a second write finds nothing); their row locked as every
# writer of their events locks it.
_UNLAUNCHED_SQL = f"""
WITH u AS (
    SELECT j.job_id, e.id AS kill_id
    FROM {JOB} j
    CROSS JOIN LATERAL (SELECT * FROM {EVENT} e1 WHERE e1.job_id = j.job_id
                        ORDER BY e1.id DESC LIMIT 1) e
    WHERE j.job_id = ANY(%s::uuid[]) AND j.session_id = %s AND j.state = {_KILLED}
      AND e.from_state = {_RUNNING} AND e.to_state = {_KILLED}
      AND right(e.message, %s) <> %s
    ORDER BY j.job_id
    FOR UPDATE OF j
)
UPDATE {EVENT} e SET message = e.message || %s, nodes = NULL FROM u WHERE e.id = u.kill_id
RETURNING e.job_id
"""


def record_unlaunched(cursor: Cursor, session_id: int, job_ids: Sequence[str]) -> list[str]:
    """Mark the RUNNING visits of ``job_ids`` -- recorded RUNNING by session ``session_id``
    ahead of their launch, killed by a user before it, never launched -- as runs that did not
    happen (see the module docstring): the kill's event message gets
    :data:`~balsam.core.retries.NOT_STARTED_SUFFIX`, its nodes none. Call it before the hold
    is dropped, in that transaction; jobs in any other case are left alone. Returns the ids
    marked."""
    if not job_ids:
        return []
    cursor.execute(_UNLAUNCHED_SQL, [sorted(job_ids), session_id, len(NOT_STARTED_SUFFIX),
                                     NOT_STARTED_SUFFIX, NOT_STARTED_SUFFIX])
    return [str(r[0]) for r in cursor.fetchall()]


def killed_among(cursor: Cursor, job_ids: Sequence[str]) -> list[str]:
    """The jobs of ``job_ids`` a user killed (USER_KILLED): their tasks must be stopped."""
    cursor.execute(f"SELECT job_id FROM {schema.JOB_TABLE} WHERE job_id = ANY(%s::uuid[]) "
                   "AND state = %s", [list(job_ids), State.USER_KILLED.value])
    return [str(r[0]) for r in cursor.fetchall()]
