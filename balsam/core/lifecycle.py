"""The one writer of job states, with its batched half for launchers,
:mod:`balsam.core.launcher_moves` (no other module writes a job's state).

Every state change goes through :func:`transition` (or a launcher's batch of starts and run ends
through :func:`balsam.core.launcher_moves.move`, on the same rules): one SQL statement that
checks the allowed transition table (:mod:`balsam.core.states`), locks the rows, writes the new
state and records an event (time, from, to, message) per job, in the caller's transaction. It
works on any DB-API cursor with ``%s`` parameters -- a Django cursor or a bare psycopg2 or
psycopg 3 one (a statement whose rows are read is alone in its ``execute``) -- so the ORM, the
CLI fast paths and the launcher share it.

Also here: removing jobs without stranding their children, and adding dependency edges without
cycles. (:mod:`balsam.core.killed_starts` writes history without changing a state: the run of a
serial start refused because a user killed the job first, and the mark on an MPI-mode RUNNING
visit that was no run.) A user may move a job a live launcher holds only by killing it
(:data:`LIVE_HOLDER_SQL`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

from balsam.core import schema
from balsam.core.routing import sql_in
from balsam.core.states import (
    END_STATES,
    RUNNABLE_STATES,
    WAITING_STATES,
    InvalidStateError,
    State,
    allowed_sources,
    validate_state,
)
from balsam.db.dbapi import Cursor, fetch_one
from balsam.errors import BalsamError

JOB, EVENT, DEP, WAKE = schema.JOB_TABLE, schema.EVENT_TABLE, schema.DEP_TABLE, schema.WAKE_TABLE
SESSION = schema.SESSION_TABLE

Messages = Union[str, Mapping[Any, str]]

# A job is held by a launcher session (``session_id``) only while it is claimed, RUNNING, or just
# USER_KILLED while running (so its launcher finds it and stops the process): every other target
# state releases the hold in the same statement.
HELD_STATES = (State.RUNNING.value, State.USER_KILLED.value)

# A job reaching one of these states changes what its waiting children may do (run, or fail):
# the same statement queues the children for the parent check (``core_jobwake``).
WAKE_CHILDREN_STATES = (State.JOB_FINISHED.value, State.FAILED.value, State.USER_KILLED.value)
_WAKE_CHILDREN_SQL = f""", wk AS (
    INSERT INTO {WAKE} (job_id)
    SELECT DISTINCT d.child_id FROM upd,
        LATERAL (SELECT child_id FROM {DEP} WHERE parent_id = upd.job_id OFFSET 0) d
    ORDER BY d.child_id
    ON CONFLICT DO NOTHING
)"""
# A user putting jobs (back) in AWAITING_PARENTS: they are checked again.
_WAKE_SELF_SQL = f""", wk AS (
    INSERT INTO {WAKE} (job_id) SELECT job_id FROM upd ORDER BY job_id ON CONFLICT DO NOTHING
)"""

# A user may move a job a live launcher holds only by killing it: any other target releases the
# hold, and a job released while its launcher runs it (or starts it: serial mode records RUNNING
# after the start) could be claimed and run a second time by another launcher; the first one's
# writes would be refused and its run left out of the history. A launcher holds jobs claimed in a
# runnable state, RUNNING or just killed (a transition worker holds jobs in the states it
# processes, and a handler script may set its own job's state: not refused). Live: open and
# within its lease, as the sweep counts it (balsam.core.leases.sweep); once the lease expired the
# holder is gone for Balsam too.
LIVE_HOLDER_SQL = f"""(j.state IN ({sql_in([*RUNNABLE_STATES, *HELD_STATES])})
    AND EXISTS (SELECT 1 FROM {SESSION} s WHERE s.id = j.session_id
    AND s.ended_at IS NULL AND greatest(s.heartbeat, pg_postmaster_start_time())
        + make_interval(secs => s.lease_seconds) > now()))"""
"""SQL: job ``j`` is held by a live launcher session."""

_RUNNING = sql_in([State.RUNNING])
RUN_NODES_SQL = ("CASE WHEN j.num_nodes = 1 AND j.ranks_per_node = 1 "
                 "THEN 1.0 / j.node_packing_count ELSE j.num_nodes END")
"""The nodes a running job (alias ``j``) occupies: ``num_nodes`` for an MPI job, ``1 / packing``
of a node for a serial one (``num_nodes == 1 and ranks_per_node == 1``)."""

# Besides the state, the statement keeps each visit's time span on single rows for the analytics
# (balsam.core.analytics): the job's ``state_since`` becomes the event's time, the event gets
# ``entered_at`` = when the job entered the state it leaves, and an event leaving RUNNING gets the
# ``nodes`` the run occupied.
_TRANSITION_SQL = f"""
WITH req AS (
    SELECT * FROM unnest(%s::uuid[], %s::text[]) AS r(job_id, message)
), old AS (
    SELECT j.job_id, j.state, req.message, coalesce(j.state_since, j.created_at) AS since,
           CASE WHEN j.state = {_RUNNING} THEN {RUN_NODES_SQL} END AS nodes
    FROM {JOB} j JOIN req ON j.job_id = req.job_id
    WHERE j.state = ANY(%s::text[]) {{holder}}{{live}}
    ORDER BY j.job_id
    FOR UPDATE OF j
), upd AS (
    UPDATE {JOB} j SET state = %s, state_since = clock_timestamp() {{release}}
    FROM old WHERE j.job_id = old.job_id
    RETURNING j.job_id, old.state AS from_state, old.message, old.since, old.nodes,
              j.state_since AS at
), ev AS (
    INSERT INTO {EVENT} (job_id, timestamp, from_state, to_state, message, entered_at, nodes)
    SELECT job_id, at, from_state, %s, message, since, nodes FROM upd
){{wake}}
SELECT job_id, from_state FROM upd
"""


# The children of one node of a recursive walk. ``OFFSET 0`` keeps the planner from flattening
# the subquery into a hash join that scans the whole edge table once per level (quadratic on a
# long chain); this way every level is one index lookup.
_CHILDREN_OF = f"LATERAL (SELECT child_id FROM {DEP} WHERE parent_id = {{node}}.job_id OFFSET 0)"


def transition(
    cursor: Cursor,
    job_ids: Iterable[Any],
    new_state: Union[str, State],
    messages: Messages = "",
    *,
    user: bool = False,
    force: bool = False,
    sources: Union[Sequence[str], None] = None,
    holder: Union[int, None] = None,
) -> list[tuple[str, str]]:
    """Move ``job_ids`` to ``new_state`` where allowed; return ``[(job_id, old_state)]`` of the
    jobs that moved.

    Jobs whose current state may not move to ``new_state`` are left unchanged (the caller compares
    the returned ids with what it asked for). ``messages`` is one message for all jobs or a
    mapping from job id to message. ``user`` applies the user rules (any state but RUNNING; a
    USER_KILLED job only with ``force``); ``sources`` narrows the allowed source states further;
    ``holder`` moves only jobs held by that launcher session. Moving to a state other than
    RUNNING or USER_KILLED releases the job's session hold; hence a ``user`` request leaves
    alone the jobs a live launcher holds (:data:`LIVE_HOLDER_SQL`), unless it kills them.
    """
    target = validate_state(new_state)
    allowed = {s.value for s in allowed_sources(target, user=user, force=force)}
    if sources is not None:
        allowed &= {validate_state(s).value for s in sources}
    ids = [str(j) for j in job_ids]
    if not ids or not allowed:
        return []
    if isinstance(messages, str):
        msgs = [messages] * len(ids)
    else:
        by_id = {str(k): v for k, v in messages.items()}
        msgs = [by_id.get(i, "") for i in ids]
    wake = ""
    if target.value in WAKE_CHILDREN_STATES:
        wake = _WAKE_CHILDREN_SQL
    elif target is State.AWAITING_PARENTS and user:
        wake = _WAKE_SELF_SQL
    sql = _TRANSITION_SQL.format(
        holder="AND j.session_id = %s" if holder is not None else "",
        release="" if target.value in HELD_STATES else ", session_id = NULL", wake=wake,
        live=f" AND NOT {LIVE_HOLDER_SQL}" if user and target is not State.USER_KILLED else "")
    params: list[Any] = [ids, msgs, sorted(allowed)]
    if holder is not None:
        params.append(holder)
    cursor.execute(sql, params + [target.value, target.value])
    return [(str(job_id), from_state) for job_id, from_state in cursor.fetchall()]


def transition_one(
    cursor: Cursor, job_id: Any, new_state: Union[str, State], message: str = "",
    *, user: bool = False, force: bool = False,
) -> str:
    """Move one job; return its previous state or raise :class:`InvalidStateError` saying why not."""
    moved = transition(cursor, [job_id], new_state, message, user=user, force=force)
    if moved:
        return moved[0][1]
    cursor.execute(f"SELECT j.state, j.session_id, {LIVE_HOLDER_SQL} FROM {JOB} j "
                   "WHERE j.job_id = %s", [str(job_id)])
    row = cursor.fetchone()
    if row is None:
        raise InvalidStateError(f"job {job_id} does not exist")
    (current, holder, live), target = row, validate_state(new_state).value
    if user and live and target != State.USER_KILLED.value and target != current:
        raise InvalidStateError(f"job {str(job_id)[:8]} is held by the live launcher session "
                                f"{holder}: it can only be killed until that launcher releases "
                                "it (moved, it could run twice)")
    if current == State.USER_KILLED.value and target != current:
        raise InvalidStateError(f"job {str(job_id)[:8]} was killed by a user (USER_KILLED); "
                                "it is not changed unless forced")
    if user and current == State.RUNNING.value and target != current:
        raise InvalidStateError(f"job {str(job_id)[:8]} is RUNNING in a launcher: kill it, or force "
                                "the change if that launcher is gone")
    raise InvalidStateError(f"job {str(job_id)[:8]} cannot move from {current} to {target}")


def kill(cursor: Cursor, job_ids: Iterable[Any], recursive: bool = False,
         message: str = "Killed by user") -> list[str]:
    """Mark jobs (and with ``recursive`` all their descendants) USER_KILLED; return the ids killed.

    Jobs already in a final state are left as they are.
    """
    ids = [str(j) for j in job_ids]
    if recursive and ids:
        cursor.execute(f"""
            WITH RECURSIVE tree(job_id) AS (
                SELECT unnest(%s::uuid[])
                UNION
                SELECT d.child_id FROM tree, {_CHILDREN_OF.format(node="tree")} d
            ) SELECT job_id FROM tree""", [ids])
        ids = [str(r[0]) for r in cursor.fetchall()]
    moved = transition(cursor, ids, State.USER_KILLED, message,
                       sources=[s.value for s in State if s.value not in END_STATES])
    return [job_id for job_id, _ in moved]


def delete_jobs(cursor: Cursor, job_ids: Iterable[Any]) -> int:
    """Delete jobs; children that were still waiting on one of them (and are not deleted too)
    become FAILED with a message naming the removed parent, so nothing waits forever.

    A job a live launcher holds (:data:`LIVE_HOLDER_SQL`: claimed, RUNNING, or killed and not
    yet let go) is not deleted: its launcher would no longer find it, so neither a kill nor
    its end could reach it and its task would run on unwatched. InvalidStateError naming one
    such job and how many there are; the caller's transaction then removes nothing."""
    ids = [str(j) for j in job_ids]
    if not ids:
        return 0
    _refuse_live_holds(cursor, ids)
    cursor.execute(f"""
        SELECT d.child_id, string_agg(p.name || ' ' || left(p.job_id::text, 8), ', ')
        FROM {DEP} d JOIN {JOB} p ON p.job_id = d.parent_id JOIN {JOB} c ON c.job_id = d.child_id
        WHERE d.parent_id = ANY(%s::uuid[]) AND NOT d.child_id = ANY(%s::uuid[])
          AND c.state = ANY(%s::text[])
        GROUP BY d.child_id""", [ids, ids, WAITING_STATES])
    orphans = {str(child): f"parent job removed: {names}" for child, names in cursor.fetchall()}
    if orphans:
        transition(cursor, list(orphans), State.FAILED, orphans, sources=WAITING_STATES)
    # Not deleted if a launcher claimed it since the check (the row is re-checked under its
    # lock); then refused as above, and the caller's transaction rolls back.
    cursor.execute(f"DELETE FROM {JOB} j WHERE j.job_id = ANY(%s::uuid[]) "
                   f"AND NOT {LIVE_HOLDER_SQL}", [ids])
    deleted = int(cursor.rowcount)
    if deleted < len(ids):
        _refuse_live_holds(cursor, ids)
    return deleted


def _refuse_live_holds(cursor: Cursor, ids: list[str]) -> None:
    """InvalidStateError if a live launcher holds any of ``ids`` (see :func:`delete_jobs`)."""
    cursor.execute(f"SELECT count(*) OVER (), j.job_id, j.name, j.session_id FROM {JOB} j "
                   f"WHERE j.job_id = ANY(%s::uuid[]) AND {LIVE_HOLDER_SQL} LIMIT 1", [ids])
    row = cursor.fetchone()
    if row is not None:
        count, job_id, name, session = row
        more = f" (and {count - 1} more)" if count > 1 else ""
        raise InvalidStateError(
            f"job {name} {str(job_id)[:8]}{more} is held by the live launcher session {session}: "
            "kill it first (`balsam kill`) and remove it once that launcher lets it go; "
            "nothing removed")


GRAPH_LOCK_KEY = 0x6A0B_5A11
"""Transaction-level advisory lock taken by :func:`add_dependency`: edges between existing jobs
are added one transaction at a time, so two concurrent additions can never close a cycle that
neither saw. (A fixed number: Python's ``hash()`` of a string differs per process.)"""


def add_dependency(cursor: Cursor, parent_id: Any, child_id: Any) -> None:
    """Add the edge parent -> child.

    Refuses bad ids, self-edges, duplicates, edges that would close a cycle, and children that
    are already past waiting on parents (:class:`BalsamError` naming the problem). The cycle check
    is one recursive query over the child's descendants, so its cost follows the graph below the
    child (usually nothing: a new job), not the size of the table or the depth above the parent.
    Two round trips; holds :data:`GRAPH_LOCK_KEY` until the caller's transaction ends.
    """
    try:
        parent, child = str(schema.parse_uuid(parent_id)), str(schema.parse_uuid(child_id))
    except schema.FieldError as exc:
        raise BalsamError(str(exc))
    if parent == child:
        raise BalsamError("a job cannot depend on itself")
    # One statement, not two joined by ';': psycopg 3 returns the first statement's rows. The
    # next statement's snapshot is taken after the lock is held, whatever order this one runs in.
    cursor.execute(f"SELECT j.job_id, j.state FROM (SELECT pg_advisory_xact_lock(%s)) lock, "
                   f"{JOB} j WHERE j.job_id IN (%s, %s) FOR UPDATE OF j",
                   [GRAPH_LOCK_KEY, parent, child])
    states = {str(r[0]): r[1] for r in cursor.fetchall()}
    for role, jid in (("parent", parent), ("child", child)):
        if jid not in states:
            raise BalsamError(f"{role} job {jid} does not exist")
    if states[child] not in WAITING_STATES:
        raise BalsamError(f"child job {child[:8]} is already {states[child]}: dependencies can only "
                          "be added to jobs that have not started")
    # The edge closes a cycle iff the parent is already reachable from the child.
    cursor.execute(f"""
        WITH RECURSIVE down(job_id) AS (
            SELECT %(child)s::uuid
            UNION
            SELECT d.child_id FROM down, {_CHILDREN_OF.format(node="down")} d
        ), flags AS (
            SELECT EXISTS(SELECT 1 FROM {DEP} WHERE parent_id = %(parent)s AND child_id = %(child)s)
                       AS duplicate,
                   EXISTS(SELECT 1 FROM down WHERE job_id = %(parent)s::uuid) AS cycle
        ), ins AS (
            INSERT INTO {DEP} (parent_id, child_id)
            SELECT %(parent)s, %(child)s FROM flags WHERE NOT duplicate AND NOT cycle
        ), wk AS (
            INSERT INTO {WAKE} (job_id)
            SELECT %(child)s FROM flags WHERE NOT duplicate AND NOT cycle ON CONFLICT DO NOTHING
        ) SELECT duplicate, cycle FROM flags""", {"parent": parent, "child": child})
    duplicate, cycle = fetch_one(cursor)
    if duplicate:
        raise BalsamError(f"job {child[:8]} already depends on {parent[:8]}")
    if cycle:
        raise BalsamError(f"adding {parent[:8]} -> {child[:8]} would create a cycle")


def record_created(cursor: Cursor, jobs: Iterable[tuple[Any, str]]) -> None:
    """Record the ``CREATED -> state`` event of new jobs inserted directly in another state.

    ``jobs`` are ``(job_id, state)`` pairs; those in CREATED get no event (a job's creation is its
    ``created_at``). The event is dated ``created_at`` (the job spent no time in CREATED), which
    is also when it entered its state (its ``state_since`` is left NULL, meaning ``created_at``).
    """
    moved = [(str(j), s) for j, s in jobs if s != State.CREATED.value]
    if moved:
        cursor.execute(
            f"INSERT INTO {EVENT} (job_id, timestamp, from_state, to_state, message, entered_at) "
            f"SELECT t.id, j.created_at, {sql_in([State.CREATED])}, t.st, 'created in this state', "
            "j.created_at "
            f"FROM unnest(%s::uuid[], %s::text[]) AS t(id, st) JOIN {JOB} j ON j.job_id = t.id",
            [[j for j, _ in moved], [s for _, s in moved]])
    waiting = [j for j, s in moved if s == State.AWAITING_PARENTS.value]
    if waiting:  # the parent check looks at CREATED jobs and at woken ones only
        cursor.execute(f"INSERT INTO {WAKE} (job_id) SELECT unnest(%s::uuid[]) "
                       "ON CONFLICT DO NOTHING", [waiting])


def check_new_edges(cursor: Cursor, edges: Sequence[tuple[Any, Any]],
                    new_jobs: Mapping[str, str]) -> list[tuple[str, str]]:
    """Check the edges (parent, child) of jobs about to be inserted together; return them as
    distinct string pairs.

    ``new_jobs`` maps each new job id to its state. Every child must be new and waiting, every
    parent new or existing, and the edges among new jobs must form no cycle (edges from existing
    jobs to new ones cannot close a cycle). Raises :class:`BalsamError` naming the problem.
    """
    pairs = list(dict.fromkeys((str(schema.parse_uuid(p)), str(c)) for p, c in edges))
    for parent, child in pairs:
        if parent == child:
            raise BalsamError(f"job {child[:8]} cannot depend on itself")
        if new_jobs.get(child) not in WAITING_STATES:
            raise BalsamError(f"child job {child[:8]} is {new_jobs.get(child, 'not new')}: "
                              "dependencies can only be added to jobs that have not started")
    outside = sorted({p for p, _ in pairs if p not in new_jobs})
    if outside:
        cursor.execute(f"SELECT job_id FROM {JOB} WHERE job_id = ANY(%s::uuid[]) FOR KEY SHARE",
                       [outside])
        missing = set(outside) - {str(r[0]) for r in cursor.fetchall()}
        if missing:
            raise BalsamError(f"parent job {min(missing)} does not exist")
    inner = [(p, c) for p, c in pairs if p in new_jobs]
    indegree = dict.fromkeys(new_jobs, 0)
    children: dict[str, list[str]] = {}
    for parent, child in inner:
        indegree[child] += 1
        children.setdefault(parent, []).append(child)
    ready = [j for j, n in indegree.items() if n == 0]
    seen = 0
    while ready:
        job = ready.pop()
        seen += 1
        for child in children.get(job, ()):
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    if seen != len(indegree):
        stuck = min(j for j, n in indegree.items() if n)
        raise BalsamError(f"the parents given to the new jobs would create a cycle (through job "
                          f"{stuck[:8]})")
    return pairs


def set_parents(cursor: Cursor, child_id: Any, parent_ids: Iterable[Any]) -> None:
    """Replace the parents of a waiting job (each new edge checked as in :func:`add_dependency`)."""
    child = str(child_id)
    cursor.execute(f"DELETE FROM {DEP} WHERE child_id = %s; INSERT INTO {WAKE} (job_id) "
                   "VALUES (%s) ON CONFLICT DO NOTHING", [child, child])
    for parent in dict.fromkeys(str(p) for p in parent_ids):
        add_dependency(cursor, parent, child)
