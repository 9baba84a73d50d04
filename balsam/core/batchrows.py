"""The one writer of batch-job row states (``core_queuedlaunch.state``), SQL on any DB-API cursor.

Every move is checked against :data:`balsam.core.batchstates.ROW_TRANSITIONS` first: the
submitter's claim and outcomes, the status sync, the service's cancels and a user's cancel
request all call :func:`move` or :func:`move_allowed`; a move the table does not allow is one
:class:`~balsam.core.batchstates.BatchStateError` and nothing is written. Rows are created
``pending-submission`` (the planner, ``submit-launch``, ``BatchJob.objects.create``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from balsam.core import batchstates, schema
from balsam.core.batchstates import PENDING_DELETION, BatchStateError
from balsam.db.dbapi import Cursor

QL = schema.QLAUNCH_TABLE
COLUMNS = frozenset({"scheduler_id", "raw_state", "message", "minutes_left", "attempts", "command",
                     "submitted_at", "ended_at"})
"""The columns a move may write with the state."""


def move(cursor: Cursor, row_id: int, target: str, *, current: Optional[str] = None,
         keep_cancel: bool = False, **values: Any) -> str:
    """Write ``target`` (and the columns ``values``) into row ``row_id``; returns the state
    written.

    ``current`` is the row's state if the caller holds the row locked and knows it; else the
    row is read and locked here. With ``keep_cancel``, a row the user asked to cancel meanwhile
    (``pending-deletion``) keeps that state (its other columns are written all the same, so that
    a scheduler id reaches the cancel). Raises BatchStateError, writing nothing, if the move is
    not allowed, the row does not exist, or it is no longer in ``current``."""
    if not values.keys() <= COLUMNS:
        raise ValueError(f"not a batch-job column to write: {', '.join(sorted(values.keys() - COLUMNS))}")
    if current is None:
        cursor.execute(f"SELECT state FROM {QL} WHERE id = %s FOR UPDATE", [row_id])
        found = cursor.fetchone()
        if found is None:
            raise BatchStateError(f"no batch job {row_id}")
        current = str(found[0])
    if keep_cancel and current == PENDING_DELETION:
        target = current
    try:
        batchstates.check_move(current, target)
    except BatchStateError as exc:
        raise BatchStateError(f"batch job {row_id}: {exc}") from None
    sets = "".join(f", {column} = %s" for column in values)
    cursor.execute(f"UPDATE {QL} SET state = %s{sets} WHERE id = %s AND state = %s",
                   [target, *values.values(), row_id, current])
    if cursor.rowcount != 1:
        raise BatchStateError(f"batch job {row_id} is no longer {current} (not moved to {target})")
    return target


def move_allowed(cursor: Cursor, ids: Sequence[int], target: str) -> int:
    """Move those rows of ``ids`` from whose state :data:`~balsam.core.batchstates.ROW_TRANSITIONS`
    allows ``target`` (the others are left as they are); returns how many moved."""
    if target not in batchstates.ROW_STATES:
        raise BatchStateError(f"unknown batch-job state {target!r}")
    allowed = sorted(batchstates.sources(target))
    cursor.execute(f"UPDATE {QL} SET state = %s WHERE id = ANY(%s) AND state = ANY(%s)",
                   [target, list(ids), allowed])
    return int(cursor.rowcount)
