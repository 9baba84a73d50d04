"""Job transitions that need no compute node and no script, as batched state writes.

:func:`advance` moves jobs through their non-compute steps in one database write per kind of
move (not one per state), leaving to the transition workers (:mod:`balsam.processing.worker`)
exactly the steps that run something: stage-in, a preprocess script, a postprocess script or
error/timeout handler, stage-out.

The moves are the PARENTS and PURE rows of :data:`balsam.core.routing.ROUTES`; the state lists
of the queries are generated from that table and each pure row's condition is decided by
:data:`PURE_DECIDERS`. In words:

* **Parents.** CREATED jobs, and waiting jobs queued in ``core_jobwake`` because a parent
  reached a final state or their parents changed (the state writer queues them), are checked:
  every parent JOB_FINISHED (or none, or ``wait_for_parents`` off) -> READY if something must be
  staged in or linked from parents, STAGED_IN if only a preprocess script remains, PREPROCESSED
  otherwise; a parent FAILED or killed, or a missing application -> FAILED naming it; otherwise
  CREATED -> AWAITING_PARENTS. Waiting jobs are never scanned: the cost of a pass follows the
  edges that changed, not the number of waiting jobs.
* READY with nothing to stage -> STAGED_IN or PREPROCESSED; STAGED_IN with no preprocess ->
  PREPROCESSED.
* RUN_DONE with no postprocess -> POSTPROCESSED if files are to be staged out, else
  JOB_FINISHED; POSTPROCESSED with nothing to stage out -> JOB_FINISHED.
* RUN_ERROR with no error handler -> FAILED; RUN_TIMEOUT with no timeout handler ->
  RESTART_READY (``auto_timeout_retry``) or FAILED. A RUN_ERROR or RUN_TIMEOUT job whose failed
  runs exceed its retry limit (:mod:`balsam.core.retries`) -> FAILED saying so, handler or not
  (the transition workers leave such jobs alone). With a back-off (``launcher:
  retry_backoff_seconds``) a timed-out job stays RUN_TIMEOUT until it has waited its turn;
  nothing writes a job row when that turn comes, so a pass says when the first job it left
  waiting may move (:attr:`PassResult.retry_in`) and the loops that wait for notifications
  run a pass then (issue 16, session 21).

Jobs held by a session (a transition worker running their step) are left alone. Several
processes may run :func:`advance` at once: candidates are locked with SKIP LOCKED and every move
is a checked transition, so a job is never moved twice.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from balsam.core import launcher_moves, leases, lifecycle, retries, routing, schema
from balsam.core.retries import RetryPolicy
from balsam.core.routing import Actor, When, sql_in
from balsam.core.sql import like_contains
from balsam.core.states import State
from balsam.db.dbapi import Cursor, fetch_one
from balsam.defaults import PROCESSING_BATCH
from balsam.processing.transfers import slots

JOB, APP, DEP, WAKE = schema.JOB_TABLE, schema.APP_TABLE, schema.DEP_TABLE, schema.WAKE_TABLE
S = State

# The SQL state lists, from the routing table (:mod:`balsam.core.routing`).
_CREATED = sql_in([S.CREATED])
_FINISHED = sql_in([S.JOB_FINISHED])
_PARENT_BAD = sql_in([S.FAILED, S.USER_KILLED])
_PARENT_STATES = sql_in(routing.PARENT_STATES)
_PURE_STATES = sql_in(routing.PURE_STATES)
_HANDLER_STATES = sql_in(routing.HANDLER_STATES)
_CLAIMABLE = sql_in(routing.CLAIMABLE_STATES)

# What a job needs before it can run / after it ran (SQL over job j and its app a).
NEEDS_STAGE_IN = ("(j.stage_in_url <> '' OR " + slots.HAS_IN  # a str.format template
                  + " OR (j.input_files <> '' AND {has_parents}))")
NEEDS_PREPROCESS = "(COALESCE(a.preprocess, '') <> '')"
NEEDS_POSTPROCESS = "(COALESCE(a.postprocess, '') <> '')"
NEEDS_STAGE_OUT = f"((j.stage_out_url <> '' AND j.stage_out_files <> '') OR {slots.HAS_OUT})"
HANDLED_ERROR = f"(j.post_error_handler AND {NEEDS_POSTPROCESS})"
HANDLED_TIMEOUT = f"(j.post_timeout_handler AND {NEEDS_POSTPROCESS})"
HAS_PARENTS = f"EXISTS (SELECT 1 FROM {DEP} dd WHERE dd.child_id = j.job_id)"

READY_MESSAGE = "nothing to stage or preprocess: ready to run"


def wf_clause(wf_filter: Optional[str], params: list[Any], column: str = "j.workflow") -> str:
    """`` AND <column> LIKE %s`` for a workflow filter (substring match), appending the param."""
    if not wf_filter:
        return ""
    params.append(like_contains(wf_filter))
    return f" AND {column} LIKE %s"


def _candidates(cursor: Cursor, wf_filter: Optional[str], limit: int) -> list[str]:
    """Lock and return CREATED jobs and woken waiting jobs (consuming their wake rows)."""
    params: list[Any] = []
    wf = wf_clause(wf_filter, params)
    cursor.execute(f"""
        SELECT j.job_id FROM {JOB} j
        WHERE j.state = {_CREATED} AND j.session_id IS NULL{wf}
        LIMIT %s FOR NO KEY UPDATE OF j SKIP LOCKED""", params + [limit])
    ids = [str(r[0]) for r in cursor.fetchall()]
    params = []
    # The workflow is looked up per queued job (a correlated subquery is one index probe each):
    # a join would let the planner scan the whole job table.
    wf = wf_clause(wf_filter, params, column=f"(SELECT j.workflow FROM {JOB} j "
                                             "WHERE j.job_id = w2.job_id)")
    cursor.execute(f"""
        DELETE FROM {WAKE} w USING (
            SELECT w2.job_id FROM {WAKE} w2
            WHERE true{wf} LIMIT %s FOR UPDATE OF w2 SKIP LOCKED
        ) s WHERE w.job_id = s.job_id RETURNING w.job_id""", params + [limit])
    return list(dict.fromkeys(ids + [str(r[0]) for r in cursor.fetchall()]))


def _check_parents(cursor: Cursor, wf_filter: Optional[str], limit: int) -> dict[str, int]:
    ids = _candidates(cursor, wf_filter, limit)
    if not ids:
        return {"ready": 0, "to_stage": 0, "awaiting": 0, "failed": 0}
    cursor.execute(f"""
        SELECT j.job_id, j.state, j.application, a.id IS NULL,
               j.stage_in_url <> '' OR {slots.HAS_IN}
                   OR (j.input_files <> '' AND count(p.job_id) > 0),
               {NEEDS_PREPROCESS},
               count(p.job_id), count(p.job_id) FILTER (WHERE p.state = {_FINISHED}),
               string_agg(p.name || ' ' || left(p.job_id::text, 8) || ' (' || p.state || ')', ', ')
                   FILTER (WHERE p.state IN ({_PARENT_BAD}))
        FROM {JOB} j
        LEFT JOIN {APP} a ON a.name = j.application
        LEFT JOIN {DEP} d ON d.child_id = j.job_id AND j.wait_for_parents
        LEFT JOIN {JOB} p ON p.job_id = d.parent_id
        WHERE j.job_id = ANY(%s::uuid[]) AND j.state IN ({_PARENT_STATES})
          AND j.session_id IS NULL
        GROUP BY j.job_id, a.id""", [ids])
    moves: dict[State, list[str]] = {State.PREPROCESSED: [], State.READY: [], State.STAGED_IN: [],
                                     State.AWAITING_PARENTS: []}
    failed: dict[str, str] = {}
    for job_id, state, app, no_app, stage_in, preprocess, total, done, bad in cursor.fetchall():
        job_id = str(job_id)
        if no_app:
            failed[job_id] = f"application {app!r} does not exist"
        elif bad:
            failed[job_id] = f"parent job failed or was killed: {bad}"
        elif done == total:
            target = (State.READY if stage_in else State.STAGED_IN if preprocess
                      else State.PREPROCESSED)
            moves[target].append(job_id)
        elif state == State.CREATED.value:
            moves[State.AWAITING_PARENTS].append(job_id)
    t = lifecycle.transition
    return {
        "ready": len(t(cursor, moves[State.PREPROCESSED], State.PREPROCESSED, READY_MESSAGE)),
        "to_stage": len(t(cursor, moves[State.READY], State.READY,
                          "to be staged in"))
        + len(t(cursor, moves[State.STAGED_IN], State.STAGED_IN,
                "nothing to stage in: to be preprocessed")),
        "awaiting": len(t(cursor, moves[State.AWAITING_PARENTS], State.AWAITING_PARENTS,
                          "waiting for parents to finish")),
        "failed": len(t(cursor, list(failed), State.FAILED, failed)),
    }


@dataclass(frozen=True)
class _Facts:
    """What a processing pass knows of a job in a pure-move state (one row of its query)."""

    state: str
    stage_in: bool
    pre: bool
    post: bool
    stage_out: bool
    on_error: bool
    on_timeout: bool
    retry: bool
    failures: Optional[int]
    max_tries: int
    waited: float


_Decision = Optional[tuple[Optional[State], str]]
"""None: the route does not apply; (target, ""): move; (None, message): FAILED with message;
(None, ""): stay (backing off: a later pass retries it)."""


def _over_limit(f: _Facts, policy: RetryPolicy) -> _Decision:
    if f.failures is not None and f.failures > f.max_tries and (
            f.on_error or (f.state == S.RUN_TIMEOUT and (f.on_timeout or f.retry))):
        return None, retries.over_limit_message(f.failures, f.max_tries)
    return None


def _timeout_retry(f: _Facts, policy: RetryPolicy) -> _Decision:
    if f.on_timeout:
        return None
    # failures is counted for every RUN_TIMEOUT job (the query's CASE)
    if f.retry and float(f.waited) < policy.backoff(f.failures or 0):
        return None, ""
    if f.retry:
        return S.RESTART_READY, ""
    return None, "timed out; automatic retry is disabled"


PURE_DECIDERS: dict[When, Callable[[_Facts, RetryPolicy], _Decision]] = {
    When.OVER_RETRY_LIMIT: _over_limit,
    When.NO_STAGE_IN: lambda f, p: None if f.stage_in else (
        (S.STAGED_IN if f.pre else S.PREPROCESSED), ""),
    When.NO_PREPROCESS: lambda f, p: None if f.pre else (S.PREPROCESSED, ""),
    When.NO_POSTPROCESS: lambda f, p: None if f.post else (
        (S.POSTPROCESSED if f.stage_out else S.JOB_FINISHED), ""),
    When.NO_STAGE_OUT: lambda f, p: None if f.stage_out else (S.JOB_FINISHED, ""),
    When.UNHANDLED: lambda f, p: None if f.on_error else (
        None, "run error not handled (no post_error_handler)"),
    When.TIMEOUT_RETRY: _timeout_retry,
}
"""How a processing pass decides each pure route of :data:`balsam.core.routing.ROUTES`."""

_PURE_ROUTES: dict[str, list[routing.Route]] = {
    s.value: [r for r in routing.routes_from(s) if r.actor is Actor.PURE] for s in State}


RETRY_MARGIN_SECONDS = 0.05
"""Added to :attr:`PassResult.retry_in`: the database's clock decides, and the back-off must
have passed by it when the pass comes (else the job waits one more short look)."""


def _retry_in(f: _Facts, policy: RetryPolicy) -> float:
    """Seconds until a job left backing off (:func:`_timeout_retry`) has waited its turn."""
    return max(0.0, policy.backoff(f.failures or 0) - float(f.waited))


def _pure_moves(cursor: Cursor, wf_filter: Optional[str], limit: int,
                policy: RetryPolicy) -> tuple[dict[str, int], Optional[float]]:
    """Every other scriptless move, classified in one query and written per target state;
    (how many moved by kind, seconds until the first job left backing off may move)."""
    params: list[Any] = []
    wf = wf_clause(wf_filter, params)
    stage_in = NEEDS_STAGE_IN.format(has_parents=HAS_PARENTS)
    # Failures are counted only for jobs whose run ended badly (a few event rows each).
    cursor.execute(f"""
        SELECT j.job_id, j.state, {stage_in}, {NEEDS_PREPROCESS}, {NEEDS_POSTPROCESS},
               {NEEDS_STAGE_OUT}, {HANDLED_ERROR}, {HANDLED_TIMEOUT}, j.auto_timeout_retry,
               CASE WHEN j.state IN ({_HANDLER_STATES}) THEN {retries.FAILURES_SQL}
               END, {retries.limit_sql(policy.max_retries)},
               EXTRACT(EPOCH FROM clock_timestamp() - COALESCE(j.state_since, j.created_at))
        FROM {JOB} j LEFT JOIN {APP} a ON a.name = j.application
        WHERE j.state IN ({_PURE_STATES}) AND j.session_id IS NULL{wf}
        LIMIT %s""", params + [limit])
    moves: dict[tuple[str, State], list[str]] = {}
    failed: dict[str, str] = {}
    waits: list[float] = []
    for job_id, *facts in cursor.fetchall():
        job_id = str(job_id)
        f = _Facts(*facts)
        for route in _PURE_ROUTES.get(f.state, ()):  # the routing table's rows, in order
            decision = PURE_DECIDERS[route.when](f, policy)
            if decision is None:
                continue
            target, message = decision
            if target is not None:
                moves.setdefault((f.state, target), []).append(job_id)
            elif message:
                failed[job_id] = message
            else:  # staying: backing off before its retry
                waits.append(_retry_in(f, policy))
            break
    counts = {"finished": 0, "retry": 0, "failed_runs": 0, "other": 0}
    for (source, target), ids in sorted(moves.items(), key=lambda kv: (kv[0][0], kv[0][1].value)):
        moved = len(lifecycle.transition(cursor, ids, target, _MESSAGES[target],
                                         sources=[source]))
        key = {State.JOB_FINISHED: "finished", State.RESTART_READY: "retry"}.get(target, "other")
        counts[key] += moved
    counts["failed_runs"] = len(lifecycle.transition(cursor, list(failed), State.FAILED, failed))
    return counts, (min(waits) + RETRY_MARGIN_SECONDS if waits else None)


DEFAULT_POLICY = RetryPolicy()
"""The retry rules of a DB without ``launcher:`` retry settings (:mod:`balsam.defaults`)."""

_MESSAGES = {
    State.STAGED_IN: "nothing to stage in",
    State.PREPROCESSED: "nothing to stage or preprocess: ready to run",
    State.POSTPROCESSED: "no postprocess script: to be staged out",
    State.JOB_FINISHED: "nothing to postprocess or stage out",
    State.RESTART_READY: "automatic retry after a timeout",
}


FINISH_ON_RECORD = launcher_moves.FollowOn(
    routing.LAUNCHER_FOLLOW_ON,
    f"NOT {NEEDS_POSTPROCESS} AND NOT {NEEDS_STAGE_OUT}",
    _MESSAGES[State.JOB_FINISHED])
"""The RUN_DONE -> JOB_FINISHED route of a job with no postprocess script and nothing to stage
out (:data:`PURE_DECIDERS` ``NO_POSTPROCESS`` then ``NO_STAGE_OUT``), as a launcher takes it while
recording the run's end (:func:`balsam.core.launcher_moves.move`); the same message as this pass."""


@dataclass(frozen=True)
class PassResult:
    """What one processing pass did (:func:`advance_pass`)."""

    moved: dict[str, int]
    """How many jobs moved, by kind (:func:`advance`)."""
    retry_in: Optional[float]
    """Seconds until the first job the pass left backing off (RUN_TIMEOUT, waiting for its
    retry's back-off) may move -- no statement announces that moment, so a loop waiting for
    notifications runs a pass then --; None: no job waits."""


def advance_pass(cursor: Cursor, wf_filter: Optional[str] = None,
                 limit: int = PROCESSING_BATCH, policy: RetryPolicy = DEFAULT_POLICY
                 ) -> PassResult:
    """One processing pass in the caller's transaction: what moved, and when a job left
    backing off may move. ``policy``: the DB's retry settings (the limit of jobs that have
    none, the back-off)."""
    counts = _check_parents(cursor, wf_filter, limit)
    pure, retry_in = _pure_moves(cursor, wf_filter, limit, policy)
    counts.update(pure)
    return PassResult(counts, retry_in)


def advance(cursor: Cursor, wf_filter: Optional[str] = None, limit: int = PROCESSING_BATCH,
            policy: RetryPolicy = DEFAULT_POLICY) -> dict[str, int]:
    """One processing pass in the caller's transaction (:func:`advance_pass`); returns how
    many jobs moved, by kind."""
    return advance_pass(cursor, wf_filter, limit, policy).moved


PROCESSABLE = sql_in(routing.PROCESSING_STATES)


def outstanding(cursor: Cursor, session_id: Optional[int], wf_filter: Optional[str], *,
                serial: bool, max_nodes: int, processing: bool = True,
                tags: Optional[Mapping[str, str]] = None,
                gpus_per_node: Optional[int] = None) -> int:
    """How many jobs a launcher could still run or help along: runnable and unheld (or held by
    ``session_id``) jobs it can fit, and -- when it runs processing -- every job still to be
    processed (waiting on parents, to be staged, pre- or postprocessed, handled). A
    non-persistent launcher exits only when this is 0 and it runs nothing. ``tags``: only jobs
    whose tags hold these (:func:`balsam.core.leases.tags_clause`), and ``gpus_per_node`` (None:
    any) only jobs whose GPUs fit (:func:`balsam.core.leases.gpu_condition`), as the launcher
    claims."""
    params: list[Any] = [max_nodes]
    fit = "j.num_nodes <= %s" + (" AND j.num_nodes = 1 AND j.ranks_per_node = 1" if serial else "")
    if gpus_per_node is not None:
        fit += " AND " + leases.gpu_condition(serial, gpus_per_node, params)
    params.append(session_id)
    todo = f" OR j.state IN ({PROCESSABLE})" if processing else ""
    wf = wf_clause(wf_filter, params) + leases.tags_clause(tags, params)
    cursor.execute(f"""
        SELECT count(*) FROM {JOB} j
        WHERE (({fit} AND j.state IN ({_CLAIMABLE})
                AND (j.session_id IS NULL OR j.session_id = %s)){todo}){wf}""", params)
    return int(fetch_one(cursor)[0])
