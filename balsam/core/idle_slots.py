"""Launcher sessions' idle slots: how serial-mode launchers on one database see each other's
idle slots once the campaign's runnable work is all claimed.

Each launcher's first claims take up to ``serial_prefetch_per_slot`` jobs per slot, so several
launchers split a campaign unequally; near its end one whose own work ran out idled while
another held work queued behind its running tasks (issue 16, session 19: 80-87% busy while work
remained). A master whose claims find nothing and whose slots idle writes how many
(:func:`publish`, only when the number changes); a master holding queued work beyond its slots
reads the others' (:func:`wanted`) and gives some back (:mod:`balsam.launcher.serial_share`).
A new non-zero number is notified (:data:`balsam.defaults.IDLE_SLOTS_NOTIFY_CHANNEL`), so that
holders give at once. Only live sessions count (not ended, lease fresh). A serial launcher with
nothing left of its own does not exit while such a session holds work it could be given
(:func:`givable`). Every function takes a DB-API cursor and works in the caller's transaction.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

from balsam import defaults
from balsam.core import claim_sql, leases, schema
from balsam.core.sql import like_contains
from balsam.db.dbapi import Cursor, fetch_one

SESSION = schema.SESSION_TABLE
JOB = schema.JOB_TABLE
LIVE = ("{s}ended_at IS NULL AND {s}heartbeat > now() - {s}lease_seconds * interval '1 second'")
"""A session is live while it is open and its lease is fresh (``{s}``: the table's alias)."""


def publish(cursor: Cursor, session_id: int, slots: int, fresh: bool = False) -> None:
    """Say that ``session_id`` has ``slots`` idle slots and nothing to claim (0: none); a new
    number above 0 is notified on :data:`balsam.defaults.IDLE_SLOTS_NOTIFY_CHANNEL` (at commit).
    ``fresh``: the caller's first word on the row (a new master: an earlier ensemble's number
    may be there), written and notified even if the row already says it."""
    slots = max(0, int(slots))
    same = "" if fresh else " AND idle_slots <> %s"
    cursor.execute(f"UPDATE {SESSION} SET idle_slots = %s WHERE id = %s{same}",
                   [slots, session_id] + ([] if fresh else [slots]))
    if slots and cursor.rowcount:
        cursor.execute(f"NOTIFY {defaults.IDLE_SLOTS_NOTIFY_CHANNEL}")


def wanted(cursor: Cursor, session_id: int) -> tuple[int, int]:
    """(idle slots of the other live serial sessions, live serial sessions with none idle,
    this one included): how much work the others could start now, and among how many it may
    come from (transition workers' and MPI-mode sessions never give work back)."""
    cursor.execute(
        f"SELECT coalesce(sum(idle_slots) FILTER (WHERE id <> %s), 0), "
        f"count(*) FILTER (WHERE idle_slots = 0 OR id = %s) FROM {SESSION} "
        f"WHERE job_mode = 'serial' AND {LIVE.format(s='')}",
        [session_id, session_id])
    idle, holders = fetch_one(cursor)
    return int(idle), max(1, int(holders))


def givable(cursor: Cursor, session_id: int, *, wf_filter: Optional[str] = None,
            tags: Optional[Mapping[str, str]] = None,
            gpus_per_node: Optional[int] = None,
            max_wall_minutes: Optional[float] = None) -> int:
    """How many jobs other live serial sessions hold claimed and not started (a runnable
    state, not RUNNING) that ``session_id``'s serial launcher could run (one node, one rank;
    ``wf_filter``, ``tags``, GPUs and the time it has left, ``max_wall_minutes``, as it
    claims: :func:`balsam.core.claim_sql.statement`; work given back that its claims would not
    take never becomes its own). Such work is queued behind their running
    tasks (or in hand for a moment) and is given back to a launcher whose slots idle
    (:mod:`balsam.launcher.serial_share`): it is work this launcher can still receive. RUNNING
    work is never given back and is not counted; neither are dead sessions' holds (lease
    expired: a sweep releases them, :func:`balsam.core.leases.holders_elsewhere`)."""
    params: list[Any] = [session_id]
    where = "j.num_nodes = 1 AND j.ranks_per_node = 1"
    if wf_filter:
        where += " AND j.workflow LIKE %s"
        params.append(like_contains(wf_filter))
    where += leases.tags_clause(tags, params)
    if gpus_per_node is not None:
        where += " AND " + claim_sql.gpu_condition(True, gpus_per_node, params)
    if max_wall_minutes is not None:  # the claim's own bound (claim_sql._filters)
        where += " AND j.wall_time_minutes <= least(floor(%s::numeric), 2147483647)::integer"
        params.append(max_wall_minutes)
    cursor.execute(f"""
        SELECT count(*) FROM {JOB} j JOIN {SESSION} s ON s.id = j.session_id
        WHERE s.id <> %s AND s.job_mode = 'serial' AND {LIVE.format(s='s.')}
          AND j.state IN {claim_sql.RUNNABLE_SQL} AND {where}""", params)
    return int(fetch_one(cursor)[0])
