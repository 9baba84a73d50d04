"""Launcher sessions' idle slots: how serial-mode launchers on one database see each other's
idle slots once the campaign's runnable work is all claimed.

Each launcher's first claims take up to ``serial_prefetch_per_slot`` jobs per slot, so several
launchers split a campaign unequally; near its end one whose own work ran out idled while
another held work queued behind its running tasks (issue 16, session 19: 80-87% busy while work
remained). A master whose claims find nothing and whose slots idle writes how many
(:func:`publish`, only when the number changes); a master holding queued work beyond its slots
reads the others' (:func:`wanted`) and gives some back (:mod:`balsam.launcher.serial_share`).
Only live sessions count (not ended, lease fresh). Every function takes a DB-API cursor and
works in the caller's transaction.
"""
from __future__ import annotations

from balsam.core import schema
from balsam.db.dbapi import Cursor, fetch_one

SESSION = schema.SESSION_TABLE


def publish(cursor: Cursor, session_id: int, slots: int) -> None:
    """Say that ``session_id`` has ``slots`` idle slots and nothing to claim (0: none)."""
    cursor.execute(f"UPDATE {SESSION} SET idle_slots = %s WHERE id = %s AND idle_slots <> %s",
                   [max(0, int(slots)), session_id, max(0, int(slots))])


def wanted(cursor: Cursor, session_id: int) -> tuple[int, int]:
    """(idle slots of the other live serial sessions, live serial sessions with none idle,
    this one included): how much work the others could start now, and among how many it may
    come from (transition workers' and MPI-mode sessions never give work back)."""
    cursor.execute(
        f"SELECT coalesce(sum(idle_slots) FILTER (WHERE id <> %s), 0), "
        f"count(*) FILTER (WHERE idle_slots = 0 OR id = %s) FROM {SESSION} "
        "WHERE job_mode = 'serial' AND ended_at IS NULL "
        "AND heartbeat > now() - lease_seconds * interval '1 second'",
        [session_id, session_id])
    idle, holders = fetch_one(cursor)
    return int(idle), max(1, int(holders))
