"""Job transitions that need no compute node, as batched state writes.

:func:`advance` moves every job that needs no script and no data movement through its
non-compute steps in one database write per kind of move (not one per state):

* CREATED / AWAITING_PARENTS: all parents JOB_FINISHED (or none, or ``wait_for_parents`` off)
  -> PREPROCESSED; a parent FAILED, killed, or a missing application -> FAILED naming it;
  otherwise CREATED -> AWAITING_PARENTS.
* RUN_DONE with no postprocess and nothing to stage out -> JOB_FINISHED.
* RUN_ERROR with no error handler -> FAILED.
* RUN_TIMEOUT with no timeout handler -> RESTART_READY (``auto_timeout_retry``) or FAILED.

Jobs that need stage-in, input-file links, a preprocess or postprocess script, a handler or
stage-out are left where they are for the script-running transitions (a later issue). Several
processes may run :func:`advance` at once: every move is a checked transition, so a job is
never moved twice.
"""
from __future__ import annotations

from typing import Any, Optional

from balsam.core import lifecycle, schema
from balsam.core.states import State
from balsam.defaults import PROCESSING_BATCH

JOB, APP, DEP = schema.JOB_TABLE, schema.APP_TABLE, schema.DEP_TABLE

# Jobs these predicates match wait for the script-running transitions. (Input-file links matter
# only for jobs with parents: checked where the parents are counted.)
_NEEDS_SCRIPT_BEFORE = "(j.stage_in_url <> '' OR COALESCE(a.preprocess, '') <> '')"
_NEEDS_SCRIPT_AFTER = ("(COALESCE(a.postprocess, '') <> '' "
                       "OR (j.stage_out_url <> '' AND j.stage_out_files <> ''))")


def _wf_clause(wf_filter: Optional[str], params: list[Any]) -> str:
    if not wf_filter:
        return ""
    params.append("%" + wf_filter.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
    return " AND j.workflow LIKE %s"


def _check_parents(cursor: Any, wf_filter: Optional[str], limit: int) -> dict[str, int]:
    params: list[Any] = []
    wf = _wf_clause(wf_filter, params)
    cursor.execute(f"""
        SELECT j.job_id, j.state, j.application, a.id IS NULL,
               {_NEEDS_SCRIPT_BEFORE} OR (j.input_files <> '' AND count(p.job_id) > 0),
               count(p.job_id), count(p.job_id) FILTER (WHERE p.state = 'JOB_FINISHED'),
               string_agg(p.name || ' ' || left(p.job_id::text, 8) || ' (' || p.state || ')', ', ')
                   FILTER (WHERE p.state IN ('FAILED', 'USER_KILLED'))
        FROM {JOB} j
        LEFT JOIN {APP} a ON a.name = j.application
        LEFT JOIN {DEP} d ON d.child_id = j.job_id AND j.wait_for_parents
        LEFT JOIN {JOB} p ON p.job_id = d.parent_id
        WHERE j.state IN ('CREATED', 'AWAITING_PARENTS'){wf}
        GROUP BY j.job_id, a.id
        LIMIT %s""", params + [limit])
    ready: list[str] = []
    waiting: list[str] = []
    failed: dict[str, str] = {}
    for job_id, state, app, no_app, needs_script, total, done, bad in cursor.fetchall():
        job_id = str(job_id)
        if no_app:
            failed[job_id] = f"application {app!r} does not exist"
        elif bad:
            failed[job_id] = f"parent job failed or was killed: {bad}"
        elif done == total:
            if not needs_script:
                ready.append(job_id)
        elif state == State.CREATED.value:
            waiting.append(job_id)
    counts = {
        "ready": len(lifecycle.transition(cursor, ready, State.PREPROCESSED,
                                          "nothing to stage or preprocess: ready to run")),
        "awaiting": len(lifecycle.transition(cursor, waiting, State.AWAITING_PARENTS,
                                             "waiting for parents to finish")),
        "failed": len(lifecycle.transition(cursor, list(failed), State.FAILED, failed)),
    }
    return counts


def _after_run(cursor: Any, wf_filter: Optional[str], limit: int) -> dict[str, int]:
    params: list[Any] = []
    wf = _wf_clause(wf_filter, params)
    cursor.execute(f"""
        SELECT j.job_id, j.state, {_NEEDS_SCRIPT_AFTER}, COALESCE(a.postprocess, '') <> '',
               j.post_error_handler, j.post_timeout_handler, j.auto_timeout_retry
        FROM {JOB} j LEFT JOIN {APP} a ON a.name = j.application
        WHERE j.state IN ('RUN_DONE', 'RUN_ERROR', 'RUN_TIMEOUT'){wf}
        LIMIT %s""", params + [limit])
    finished, retry, failed = [], [], {}
    for job_id, state, needs_after, has_post, on_error, on_timeout, retry_ok in cursor.fetchall():
        job_id = str(job_id)
        if state == State.RUN_DONE.value:
            if not needs_after:
                finished.append(job_id)
        elif state == State.RUN_ERROR.value:
            if not (on_error and has_post):
                failed[job_id] = "run error not handled (no post_error_handler)"
        elif not (on_timeout and has_post):
            if retry_ok:
                retry.append(job_id)
            else:
                failed[job_id] = "timed out; automatic retry is disabled"
    return {
        "finished": len(lifecycle.transition(cursor, finished, State.JOB_FINISHED,
                                             "nothing to postprocess or stage out")),
        "retry": len(lifecycle.transition(cursor, retry, State.RESTART_READY,
                                          "automatic retry after a timeout")),
        "failed_runs": len(lifecycle.transition(cursor, list(failed), State.FAILED, failed)),
    }


def advance(cursor: Any, wf_filter: Optional[str] = None,
            limit: int = PROCESSING_BATCH) -> dict[str, int]:
    """One processing pass in the caller's transaction; returns how many jobs moved, by kind."""
    counts = _check_parents(cursor, wf_filter, limit)
    counts.update(_after_run(cursor, wf_filter, limit))
    return counts


def outstanding(cursor: Any, session_id: Optional[int], wf_filter: Optional[str], *,
                serial: bool, max_nodes: int) -> int:
    """How many jobs a launcher could still run or advance: runnable and unheld (or held by
    ``session_id``) jobs it can fit, and fitting jobs waiting on processing this module does.
    A non-persistent launcher exits only when this is 0 and it runs nothing."""
    params: list[Any] = [max_nodes]
    fit = "j.num_nodes <= %s" + (" AND j.num_nodes = 1 AND j.ranks_per_node = 1" if serial else "")
    wf = _wf_clause(wf_filter, params)
    params.append(session_id)
    cursor.execute(f"""
        SELECT count(*) FROM {JOB} j LEFT JOIN {APP} a ON a.name = j.application
        WHERE {fit}{wf} AND (
            (j.state IN ('PREPROCESSED', 'RESTART_READY')
                AND (j.session_id IS NULL OR j.session_id = %s))
            OR (j.state IN ('CREATED', 'AWAITING_PARENTS') AND NOT {_NEEDS_SCRIPT_BEFORE})
            OR (j.state = 'RUN_DONE' AND NOT {_NEEDS_SCRIPT_AFTER})
            OR (j.state IN ('RUN_ERROR', 'RUN_TIMEOUT')
                AND NOT (COALESCE(a.postprocess, '') <> ''
                         AND (j.post_error_handler OR j.post_timeout_handler))))""", params)
    return int(cursor.fetchone()[0])
