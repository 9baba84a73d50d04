"""The one writer of job states.

Every state change goes through :func:`transition`: one SQL statement that checks the allowed
transition table (:mod:`balsam.core.states`), locks the rows, writes the new state and records an
event (time, from, to, message) per job, in the caller's transaction. It works on any DB-API
cursor with ``%s`` parameters -- a Django cursor or a bare psycopg2 one -- so the ORM, the CLI
fast paths and the launcher share it.

Also here: removing jobs without stranding their children, and adding dependency edges without
cycles.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Union

from balsam.core import schema
from balsam.core.states import (
    WAITING_STATES,
    InvalidStateError,
    State,
    allowed_sources,
    validate_state,
)
from balsam.errors import BalsamError

JOB, EVENT, DEP = schema.JOB_TABLE, schema.EVENT_TABLE, schema.DEP_TABLE

Messages = Union[str, Mapping[Any, str]]

_TRANSITION_SQL = f"""
WITH req AS (
    SELECT * FROM unnest(%s::uuid[], %s::text[]) AS r(job_id, message)
), old AS (
    SELECT j.job_id, j.state, req.message
    FROM {JOB} j JOIN req ON j.job_id = req.job_id
    WHERE j.state = ANY(%s::text[])
    ORDER BY j.job_id
    FOR UPDATE OF j
), upd AS (
    UPDATE {JOB} j SET state = %s
    FROM old WHERE j.job_id = old.job_id
    RETURNING j.job_id, old.state AS from_state, old.message
), ev AS (
    INSERT INTO {EVENT} (job_id, timestamp, from_state, to_state, message)
    SELECT job_id, clock_timestamp(), from_state, %s, message FROM upd
)
SELECT job_id, from_state FROM upd
"""


def transition(
    cursor: Any,
    job_ids: Iterable[Any],
    new_state: Union[str, State],
    messages: Messages = "",
    *,
    user: bool = False,
    force: bool = False,
    sources: Union[Sequence[str], None] = None,
) -> list[tuple[str, str]]:
    """Move ``job_ids`` to ``new_state`` where allowed; return ``[(job_id, old_state)]`` of the
    jobs that moved.

    Jobs whose current state may not move to ``new_state`` are left unchanged (the caller compares
    the returned ids with what it asked for). ``messages`` is one message for all jobs or a
    mapping from job id to message. ``user`` applies the user rules (any state but RUNNING; a
    USER_KILLED job only with ``force``); ``sources`` narrows the allowed source states further.
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
    cursor.execute(_TRANSITION_SQL, [ids, msgs, sorted(allowed), target.value, target.value])
    return [(str(job_id), from_state) for job_id, from_state in cursor.fetchall()]


def transition_one(
    cursor: Any, job_id: Any, new_state: Union[str, State], message: str = "",
    *, user: bool = False, force: bool = False,
) -> str:
    """Move one job; return its previous state or raise :class:`InvalidStateError` saying why not."""
    moved = transition(cursor, [job_id], new_state, message, user=user, force=force)
    if moved:
        return moved[0][1]
    cursor.execute(f"SELECT state FROM {JOB} WHERE job_id = %s", [str(job_id)])
    row = cursor.fetchone()
    if row is None:
        raise InvalidStateError(f"job {job_id} does not exist")
    current, target = row[0], validate_state(new_state).value
    if current == State.USER_KILLED.value and target != current:
        raise InvalidStateError(f"job {str(job_id)[:8]} was killed by a user (USER_KILLED); "
                                "it is not changed unless forced")
    raise InvalidStateError(f"job {str(job_id)[:8]} cannot move from {current} to {target}")


def kill(cursor: Any, job_ids: Iterable[Any], recursive: bool = False,
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
                SELECT d.child_id FROM {DEP} d JOIN tree t ON d.parent_id = t.job_id
            ) SELECT job_id FROM tree""", [ids])
        ids = [str(r[0]) for r in cursor.fetchall()]
    moved = transition(cursor, ids, State.USER_KILLED, message,
                       sources=[s.value for s in State if s.value not in ("JOB_FINISHED", "FAILED",
                                                                           "USER_KILLED")])
    return [job_id for job_id, _ in moved]


def delete_jobs(cursor: Any, job_ids: Iterable[Any]) -> int:
    """Delete jobs; children that were still waiting on one of them (and are not deleted too)
    become FAILED with a message naming the removed parent, so nothing waits forever."""
    ids = [str(j) for j in job_ids]
    if not ids:
        return 0
    cursor.execute(f"""
        SELECT d.child_id, string_agg(p.name || ' ' || left(p.job_id::text, 8), ', ')
        FROM {DEP} d JOIN {JOB} p ON p.job_id = d.parent_id JOIN {JOB} c ON c.job_id = d.child_id
        WHERE d.parent_id = ANY(%s::uuid[]) AND NOT d.child_id = ANY(%s::uuid[])
          AND c.state = ANY(%s::text[])
        GROUP BY d.child_id""", [ids, ids, WAITING_STATES])
    orphans = {str(child): f"parent job removed: {names}" for child, names in cursor.fetchall()}
    if orphans:
        transition(cursor, list(orphans), State.FAILED, orphans, sources=WAITING_STATES)
    cursor.execute(f"DELETE FROM {JOB} WHERE job_id = ANY(%s::uuid[])", [ids])
    return int(cursor.rowcount)


def add_dependency(cursor: Any, parent_id: Any, child_id: Any) -> None:
    """Add the edge parent -> child.

    Refuses self-edges, duplicates, edges that would close a cycle (one recursive query over the
    parent's ancestors, so the cost follows the graph above the parent, not the table), and
    children that are already past waiting on parents.
    """
    parent, child = str(parent_id), str(child_id)
    if parent == child:
        raise BalsamError("a job cannot depend on itself")
    cursor.execute(f"SELECT job_id, state FROM {JOB} WHERE job_id IN (%s, %s) FOR UPDATE",
                   [parent, child])
    states = {str(r[0]): r[1] for r in cursor.fetchall()}
    for role, jid in (("parent", parent), ("child", child)):
        if jid not in states:
            raise BalsamError(f"{role} job {jid} does not exist")
    if states[child] not in WAITING_STATES:
        raise BalsamError(f"child job {child[:8]} is already {states[child]}: dependencies can only "
                          "be added to jobs that have not started")
    cursor.execute(f"SELECT 1 FROM {DEP} WHERE parent_id = %s AND child_id = %s", [parent, child])
    if cursor.fetchone():
        raise BalsamError(f"job {child[:8]} already depends on {parent[:8]}")
    cursor.execute(f"""
        WITH RECURSIVE up(job_id) AS (
            SELECT %s::uuid
            UNION
            SELECT d.parent_id FROM {DEP} d JOIN up ON d.child_id = up.job_id
        ) SELECT 1 FROM up WHERE job_id = %s::uuid LIMIT 1""", [parent, child])
    if cursor.fetchone():
        raise BalsamError(f"adding {parent[:8]} -> {child[:8]} would create a cycle")
    cursor.execute(f"INSERT INTO {DEP} (parent_id, child_id) VALUES (%s, %s)", [parent, child])


def set_parents(cursor: Any, child_id: Any, parent_ids: Iterable[Any]) -> None:
    """Replace the parents of a waiting job (each new edge checked as in :func:`add_dependency`)."""
    child = str(child_id)
    cursor.execute(f"DELETE FROM {DEP} WHERE child_id = %s", [child])
    for parent in dict.fromkeys(str(p) for p in parent_ids):
        add_dependency(cursor, parent, child)
