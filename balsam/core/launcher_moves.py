"""The launcher's batched moves: the other writer of job states, beside
:func:`balsam.core.lifecycle.transition`.

A launcher moves many jobs at once, each to its own target (RUNNING, a run's end, possibly
through RUNNING, and a pure follow-on such as RUN_DONE -> JOB_FINISHED), in one statement with
the same rules as :func:`~balsam.core.lifecycle.transition`: the allowed transition table
(:mod:`balsam.core.states`), row locks, an event per move with the analytics spans, holds
(:data:`~balsam.core.lifecycle.HELD_STATES`) and waking children
(:data:`~balsam.core.lifecycle.WAKE_CHILDREN_STATES`). :func:`moves_sql` gives the statement's
CTEs (the claim in :mod:`balsam.core.leases` joins them), :func:`move` runs it, as a prepared
statement per psycopg2 connection (:func:`execute_prepared`).
"""
from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from balsam.core import routing, schema
from balsam.core.lifecycle import HELD_STATES, RUN_NODES_SQL, WAKE_CHILDREN_STATES
from balsam.core.routing import sql_in
from balsam.core.sql import array_literal as array_literal  # re-exported
from balsam.core.states import State, allowed_sources
from balsam.db.dbapi import Cursor, fetch_one

JOB, EVENT, DEP, WAKE = schema.JOB_TABLE, schema.EVENT_TABLE, schema.DEP_TABLE, schema.WAKE_TABLE

_RUNNING = sql_in([State.RUNNING])

# Launcher moves with a target per job (RUNNING, or a run's end, possibly through RUNNING), for
# :func:`moves_sql`. The allowed (source, target) pairs come as two arrays; held states keep the
# hold. One time for the whole statement: a run that ended is never dated after a start it
# made room for. A move through RUNNING (a run that started and ended since the last write)
# updates the row once and records both events, RUNNING first. A move with a follow-on state
# (``then``: routing.LAUNCHER_FOLLOW_ON, e.g. RUN_DONE -> JOB_FINISHED) goes on to it in the same
# row update when the caller's condition ({follow}, SQL over job j and its app a) holds, and
# records that event too (last); a job reaching a WAKE_CHILDREN_STATES state wakes its children.
# Each requested job is read by its primary key, locked in id order (a LATERAL subquery the
# planner cannot flatten, OFFSET 0): the planner's statistics for ``session_id`` are those of
# the jobs before they were claimed, so "held by this session" looked like one row, and it
# joined the request to the session's whole hold from ``job_held`` -- at scale 100,000s of rows
# per statement of a few hundred (tests/test_launcher_moves_cost.py). The allowed-pair check is
# a per-row subquery for the same reason (a join to it doubled the lookups of RUNNING moves).
_MOVES_SQL = f"""t_req AS (
    SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[],
                         %s::text[], %s::text[])
        AS r(job_id, target, message, via, via_message, then_state, then_message)
), t_ok AS (
    SELECT * FROM unnest(%s::text[], %s::text[]) AS a(src, dst)
), t_old AS (
    SELECT j.job_id, j.state, r.target, r.message, r.via, r.via_message,
           CASE WHEN r.then_state <> '' AND ({{follow}}) THEN r.then_state ELSE '' END
               AS then_state, r.then_message,
           coalesce(j.state_since, j.created_at) AS since,
           CASE WHEN j.state = {_RUNNING} OR r.via = {_RUNNING} THEN {RUN_NODES_SQL} END AS nodes
    FROM (SELECT * FROM t_req ORDER BY job_id) r
    CROSS JOIN LATERAL (SELECT * FROM {JOB} j1 WHERE j1.job_id = r.job_id OFFSET 0) j
    {{app_join}}
    WHERE j.session_id = %s
      AND EXISTS (SELECT 1 FROM t_ok
                  WHERE t_ok.src = j.state AND t_ok.dst = coalesce(nullif(r.via, ''), r.target)
                  OFFSET 0)
      AND (r.via = '' OR EXISTS (SELECT 1 FROM t_ok b WHERE b.src = r.via AND b.dst = r.target))
    FOR UPDATE OF j
), t_upd AS (
    UPDATE {JOB} j SET state = coalesce(nullif(t_old.then_state, ''), t_old.target),
        state_since = statement_timestamp(),
        session_id = CASE WHEN t_old.target = ANY(%s::text[]) THEN j.session_id END
    FROM t_old WHERE j.job_id = t_old.job_id
    RETURNING j.job_id, t_old.state AS from_state, t_old.target, t_old.message, t_old.via,
              t_old.via_message, t_old.then_state, t_old.then_message, t_old.since,
              t_old.nodes, j.state_since AS at
), t_ev AS (
    INSERT INTO {EVENT} (job_id, timestamp, from_state, to_state, message, entered_at, nodes)
    SELECT job_id, at, from_state, to_state, message, entered_at, nodes FROM (
        SELECT job_id, at, from_state, via AS to_state, via_message AS message,
               since AS entered_at, NULL AS nodes, 0 AS step FROM t_upd WHERE via <> ''
        UNION ALL
        SELECT job_id, at, CASE WHEN via <> '' THEN via ELSE from_state END, target, message,
               CASE WHEN via <> '' THEN at ELSE since END, nodes, 1 FROM t_upd
        UNION ALL
        SELECT job_id, at, target, then_state, then_message, at, NULL, 2 FROM t_upd
        WHERE then_state <> ''
    ) e ORDER BY job_id, step
), t_wake AS (
    INSERT INTO {WAKE} (job_id)
    SELECT DISTINCT d.child_id FROM t_upd,
        LATERAL (SELECT child_id FROM {DEP} WHERE parent_id = t_upd.job_id OFFSET 0) d
    WHERE t_upd.then_state = ANY(%s::text[])
    ORDER BY d.child_id
    ON CONFLICT DO NOTHING
)"""
_APP_JOIN = f"LEFT JOIN {schema.APP_TABLE} a ON a.name = j.application"

LAUNCHER_MOVES = routing.LAUNCHER_MOVES
"""The targets :func:`moves_sql` takes, each from these sources only (and as the allowed
table says): starting a held runnable job, recording the end of its run."""

Move = Union[tuple[Any, State, str], tuple[Any, State, str, State, str]]
"""(job id, target, message) or (job id, end target, message, RUNNING, RUNNING's message)."""


@dataclass(frozen=True)
class FollowOn:
    """A pure move a launcher makes in the same statement as the end it records
    (:data:`balsam.core.routing.LAUNCHER_FOLLOW_ON`): ``states`` maps an end state to the next
    one, taken where ``condition`` (SQL over job ``j`` and its application ``a``, from the
    processing code that owns the route's condition) holds, with ``message`` on its event."""

    states: Mapping[State, State]
    condition: str
    message: str


def moves_sql(moves: Sequence[Move], holder: int,
              follow: Union[FollowOn, None] = None) -> tuple[str, list[Any]]:
    """(CTEs ``t_req``, ``t_ok``, ``t_old``, ``t_upd``, ``t_ev``, ``t_wake``, their parameters)
    moving jobs held by session ``holder``, each to its own target, in one statement.
    ``moves`` are (job id, target in :data:`LAUNCHER_MOVES`, message), or (job id, a run's end,
    message, ``State.RUNNING``, its message) for a run that started and ended since the last
    write. A job whose state does not allow its move is left unchanged; ``t_upd`` returns
    (job_id, from_state, target, ...) of those moved. The same rules as
    :func:`balsam.core.lifecycle.transition` (events, analytics spans, holds). With ``follow``,
    a job whose end has a follow-on state and meets its condition goes on to it in the same row
    update (``t_upd.then_state``; its event is recorded after the end's; children are woken as
    ``transition`` does)."""
    ids, targets, messages, vias, via_messages, thens, then_messages = [], [], [], [], [], [], []
    hops: set[State] = set()
    follows: dict[State, tuple[str, str]] = {}  # end -> (follow-on state, its message) or ""
    for move in moves:
        target = move[1]
        if target not in follows:
            hops.add(target)
            then = follow.states.get(target) if follow is not None else None
            if then is not None and target not in allowed_sources(then):
                raise ValueError(f"{target.value} -> {then.value} is not an allowed move")
            follows[target] = ((then.value, follow.message) if then is not None
                               and follow is not None else ("", ""))
        ids.append(str(move[0]))
        targets.append(target.value)
        messages.append(move[2])
        if len(move) == 5:
            hops.add(State.RUNNING)
            vias.append(move[3].value)
            via_messages.append(move[4])
        else:
            vias.append("")
            via_messages.append("")
        then_state, then_message = follows[target]
        thens.append(then_state)
        then_messages.append(then_message)
    srcs, dsts = _pair_arrays(frozenset(hops))
    return _sql_of(follow.condition if follow is not None else None), [
        array_literal(ids), array_literal(targets), array_literal(messages), array_literal(vias),
        array_literal(via_messages), array_literal(thens), array_literal(then_messages),
        srcs, dsts, holder, _HELD, _WAKE]


_HELD, _WAKE = array_literal(list(HELD_STATES)), array_literal(list(WAKE_CHILDREN_STATES))


@functools.cache
def _sql_of(condition: Union[str, None]) -> str:
    """The statement's CTEs for a follow-on ``condition`` (None: no follow-on moves)."""
    return _MOVES_SQL.format(follow=condition if condition is not None else "false",
                             app_join=_APP_JOIN if condition is not None else "")


@functools.cache
def _pair_arrays(hops: frozenset[State]) -> tuple[str, str]:
    """The allowed (source, target) pairs into ``hops``, as two array literals."""
    ordered = sorted({pair for hop in hops for pair in _pairs_into(hop)})
    return array_literal([p[0] for p in ordered]), array_literal([p[1] for p in ordered])


@functools.cache
def _pairs_into(target: State) -> frozenset[tuple[str, str]]:
    """The (source, target) pairs a launcher may move a job along into ``target``."""
    return frozenset((src.value, target.value) for src in allowed_sources(target)
                     if src.value in LAUNCHER_MOVES[target])


def move(cursor: Cursor, moves: Sequence[Move], holder: int,
         follow: Union[FollowOn, None] = None) -> list[tuple[str, str, str]]:
    """Make ``moves`` (:func:`moves_sql`) in one statement; [(job id, from state, state now)]
    of the jobs moved (the state now is the follow-on state where one was taken)."""
    if not moves:
        return []
    ctes, params = moves_sql(moves, holder, follow)
    sql = (f"WITH {ctes} SELECT job_id::text, from_state, "  # text: no uuid.UUID per row
           "coalesce(nullif(then_state, ''), target) FROM t_upd")
    execute_prepared(cursor, "balsam_move_follow" if follow is not None else "balsam_move",
                     sql, params)
    return [(j, f, t) for j, f, t in cursor.fetchall()]


_PREPARED: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()
_UNKNOWN = ""
"""A first PREPARE + EXECUTE failed: whether the statement exists is asked once."""
_PLACEHOLDER = re.compile(r"%s((?:::[a-z_]+(?:\[\])?)?)")


@functools.lru_cache(maxsize=64)
def _prepared_texts(name: str, sql: str) -> tuple[str, str]:
    """(``EXECUTE name(...)``, ``PREPARE name AS ...; EXECUTE ...``) for ``sql``: worked out
    once per text, not per call (a regular expression over a few kB of SQL)."""
    casts = _PLACEHOLDER.findall(sql)
    run = f"EXECUTE {name}({', '.join('%s' + c for c in casts)})"
    pieces = _PLACEHOLDER.split(sql)  # text, cast, text, cast, ..., text
    numbered = "".join(piece if i % 2 == 0 else f"${i // 2 + 1}{piece}"
                       for i, piece in enumerate(pieces))
    return run, f"PREPARE {name} AS {numbered}; {run}"


_GENERIC = "SET LOCAL plan_cache_mode = force_generic_plan; "
"""Sent before an ``EXECUTE`` whose plan must be the generic one (:func:`execute_prepared`'s
``generic``): it lasts until the transaction ends."""


def execute_prepared(cursor: Cursor, name: str, sql: str, params: Sequence[Any], *,
                     generic: bool = False) -> None:
    """Execute ``sql`` (``%s`` placeholders, each cast where its type is not clear) as the
    prepared statement ``name`` of the cursor's psycopg2 connection: planned once per
    connection, not per call (the moves statement takes ~3-12 ms to plan, as much as writing
    ~100 jobs; a launcher with K writers makes K times more, smaller statements). The first
    call sends ``PREPARE`` and ``EXECUTE`` in one ``execute`` (still one statement's round
    trip; psycopg2 returns the last one's rows). A prepared statement outlives a rolled-back
    transaction; a new connection (after a reconnection) prepares it again. Other cursors
    execute ``sql`` as it is (psycopg 3 prepares repeated statements by itself).

    ``generic``: plan once, for every call (``plan_cache_mode = force_generic_plan`` for the
    rest of the caller's transaction, in the same round trip). PostgreSQL otherwise keeps
    planning a statement whose generic plan it prices above its custom ones: a ``LIMIT $n``
    is priced as 10% of the rows, so the claim was planned at every call (issue 16)."""
    conn = getattr(cursor, "connection", None)
    if not type(conn).__module__.startswith("psycopg2"):
        cursor.execute(sql, params)
        return
    prepared = _PREPARED.setdefault(conn, {})
    if prepared.get(name) == _UNKNOWN:  # a first call failed: was the PREPARE done?
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = %s", [name])
        if fetch_one(cursor)[0]:
            prepared[name] = sql
        else:
            del prepared[name]
    if prepared.get(name, sql) != sql:  # the name was prepared with another text
        cursor.execute(sql, params)
        return
    run, prepare = _prepared_texts(name, sql)
    if generic:
        run, prepare = _GENERIC + run, _GENERIC + prepare
    if name in prepared:
        cursor.execute(run, params)
        return
    try:
        cursor.execute(prepare, params)
    except BaseException:
        prepared[name] = _UNKNOWN
        raise
    prepared[name] = sql
