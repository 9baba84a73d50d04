"""What is happening now, on a DB-API cursor (Django-free): launcher sessions and the jobs they
run, batch jobs, recent state events. ``balsam top``, ``balsam ls queues`` and the dashboard read
these; every query is bounded by a small table, an index or a time window.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from balsam.core import batchstates, schema
from balsam.core.sql import fetch_dicts, scalar
from balsam.core.states import State, sql_in

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

JOB, EVENT = schema.JOB_TABLE, schema.EVENT_TABLE
SESSION, QLAUNCH = schema.SESSION_TABLE, schema.QLAUNCH_TABLE

FINAL_BATCH_STATES = batchstates.FINAL_ROW_ORDER
"""Batch-job row states that never change again (balsam.core.batchstates.FINAL_ROW_STATES)."""
_RUNNING = sql_in([State.RUNNING])


def _in(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def db_now(cur: Cursor) -> Any:
    """The database's clock."""
    cur.execute("SELECT now()")
    return scalar(cur)


def counts_by_workflow_state(cur: Cursor) -> list[tuple[str, str, int]]:
    """(workflow, state, count) for every pair present (an index-only scan of job_wf_state)."""
    cur.execute(f"SELECT workflow, state, count(*) FROM {JOB} GROUP BY workflow, state "
                "ORDER BY workflow, state")
    return [(w, s, int(n)) for w, s, n in cur.fetchall()]


def event_flow(cur: Cursor, seconds: float) -> dict[str, int]:
    """Net state events per state over the last ``seconds`` (incoming minus outgoing)."""
    cur.execute(f"""SELECT from_state, to_state, count(*) FROM {EVENT}
                    WHERE timestamp > now() - %s * interval '1 second'
                    GROUP BY from_state, to_state""", [seconds])
    flow: dict[str, int] = {}
    for src, dst, n in cur.fetchall():
        flow[dst] = flow.get(dst, 0) + int(n)
        flow[src] = flow.get(src, 0) - int(n)
    return flow


def live_sessions(cur: Cursor, modes: Optional[Sequence[str]] = None,
                  order: str = "started_at") -> list[dict[str, Any]]:
    """Launcher sessions not ended (of ``modes`` if given), ordered by ``order`` (``started_at``
    or ``id``), each with ``expired`` (its lease ran out) and ``running`` (the jobs it holds
    RUNNING, counted in one query over the state index)."""
    mode = f" AND job_mode IN ({_in(modes)})" if modes is not None else ""
    cur.execute(f"""
        SELECT id, hostname, pid, job_mode, label, scheduler_id, num_nodes, started_at, heartbeat,
               heartbeat + lease_seconds * interval '1 second' < now() AS expired
        FROM {SESSION} WHERE ended_at IS NULL{mode}
        ORDER BY {'id' if order == 'id' else 'started_at'}""")
    sessions = fetch_dicts(cur)
    running: dict[int, int] = {}
    if sessions:
        cur.execute(f"""SELECT session_id, count(*) FROM {JOB}
                        WHERE state = {_RUNNING} AND session_id = ANY(%s) GROUP BY session_id""",
                    [[s["id"] for s in sessions]])
        running = {sid: int(n) for sid, n in cur.fetchall()}
    for s in sessions:
        s["running"] = running.get(s["id"], 0)
    return sessions


def count_live_sessions(cur: Cursor, mode: str) -> int:
    """How many sessions of ``mode`` (e.g. ``processing``) have not ended."""
    cur.execute(f"SELECT count(*) FROM {SESSION} WHERE ended_at IS NULL AND job_mode = %s", [mode])
    return int(scalar(cur))


def unfinished_batch_jobs(cur: Cursor) -> list[dict[str, Any]]:
    """Batch jobs not in a final state, by id."""
    cur.execute(f"""SELECT id, scheduler_id, queue, nodes, wall_minutes, state, submitted_at
                    FROM {QLAUNCH}
                    WHERE state NOT IN ({_in(FINAL_BATCH_STATES)}) ORDER BY id""")
    return fetch_dicts(cur)


def recent_batch_jobs(cur: Cursor, limit: int = 30) -> list[dict[str, Any]]:
    """Batch jobs not ended, then the most recently ended ones, up to ``limit``."""
    cur.execute(f"""
        SELECT id, scheduler_id, queue, project, nodes, wall_minutes, job_mode, wf_filter, state,
               message, submitted_at, ended_at
        FROM {QLAUNCH} ORDER BY ended_at IS NOT NULL, ended_at DESC NULLS FIRST, id DESC
        LIMIT %s""", [limit])
    return fetch_dicts(cur)


def all_batch_jobs(cur: Cursor) -> list[dict[str, Any]]:
    """Every column of every batch-job row, by id (``balsam ls queues``)."""
    cur.execute(f"SELECT * FROM {QLAUNCH} ORDER BY id")
    return fetch_dicts(cur)


def recent_failures(cur: Cursor, states: Sequence[str], seconds: float, limit: int,
                    timeout_ms: int) -> Optional[list[dict[str, Any]]]:
    """The latest events into ``states`` of the last ``seconds``, newest first, with the job's
    name and id; None if the query took over ``timeout_ms`` (abandoned under a savepoint, so the
    caller's transaction goes on)."""
    from psycopg2.errors import QueryCanceled

    cur.execute("SAVEPOINT recent_failures")
    cur.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
    try:
        cur.execute(f"""SELECT e.timestamp, e.to_state, e.message, j.name, j.job_id
                        FROM {EVENT} e JOIN {JOB} j USING (job_id)
                        WHERE e.timestamp > now() - %s * interval '1 second'
                          AND e.to_state IN ({_in(states)})
                        ORDER BY e.timestamp DESC, e.id DESC LIMIT %s""", [seconds, limit])
        rows = fetch_dicts(cur)
    except QueryCanceled:
        cur.execute("ROLLBACK TO SAVEPOINT recent_failures")
        return None
    cur.execute("RELEASE SAVEPOINT recent_failures")
    cur.execute("SET LOCAL statement_timeout = 0")
    return rows


def open_transfers(cur: Cursor) -> list[dict[str, Any]]:
    """Open transfer items per (protocol, endpoint, direction) (partial indexes: only open
    items are read) and their active batches."""
    cur.execute(f"""
        SELECT i.protocol, i.endpoint, i.direction,
               count(*) FILTER (WHERE i.state = 'pending') AS pending,
               count(*) FILTER (WHERE i.state = 'active') AS active,
               count(DISTINCT i.batch_id) FILTER (WHERE i.state = 'active') AS batches
        FROM {schema.TRANSFER_ITEM_TABLE} i WHERE i.state IN ('pending', 'active')
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""")
    return fetch_dicts(cur)
