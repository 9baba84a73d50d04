"""Batch-job states from the scheduler into our ``core_queuedlaunch`` rows, once per cycle.

:func:`sync` makes one status call for the user's jobs. Each of our rows with a scheduler id and
no final state takes the listed job's normalised ``state``, ``raw_state`` and ``minutes_left``
(and ``ended_at`` once final). A row whose job is no longer listed gets its final state from
``final_status`` (``finished`` when the scheduler no longer knows) and ``ended_at``; rows
submitted after the status call was made are left for the next cycle. The user's other batch
jobs are returned (not stored) for ``balsam ls queues``. A failing status command is logged and
the cycle skipped: it never raises.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Optional

from balsam.core import batchrows, schema
from balsam.core.batchstates import CANCELLED, FINISHED, IN_FLIGHT, BatchStateError
from balsam.db.database import Database
from balsam.db.dbapi import Cursor
from balsam.platform.schedulers import BatchJobStatus, Scheduler, SchedulerError
from balsam.service.policy import CANCEL_SENT, FINAL_ROW_STATES, PENDING, PENDING_DELETION, SUBMITTING

QL = schema.QLAUNCH_TABLE


def apply_status(cursor: Cursor, scheduler: Scheduler, listed: dict[str, BatchJobStatus],
                 asked_at: datetime, log: logging.Logger) -> dict[str, Any]:
    """Write ``listed`` (a status answer obtained at ``asked_at``) into our rows, in the
    caller's transaction; returns ``{"updated", "ended", "foreign"}`` (module docstring)."""
    skip = sorted(FINAL_ROW_STATES | {PENDING, SUBMITTING})
    cursor.execute(f"""
        SELECT id, scheduler_id, state, submitted_at FROM {QL}
        WHERE from_balsam AND scheduler_id <> '' AND NOT state = ANY(%s) ORDER BY id FOR UPDATE""",
                   [skip])
    rows = cursor.fetchall()
    cursor.execute(f"SELECT scheduler_id FROM {QL} WHERE scheduler_id <> ''")
    ours = {r[0] for r in cursor.fetchall()}
    updated = ended = 0
    now = datetime.now(timezone.utc)
    for rid, sched_id, state, submitted_at in rows:
        job: Optional[BatchJobStatus] = listed.get(sched_id)
        if job is None:
            if submitted_at is not None and submitted_at > asked_at:
                continue
            try:
                job = scheduler.final_status(sched_id)
            except SchedulerError as exc:
                log.warning("batch job %d (%s): no final status: %s", rid, sched_id, exc)
            if job is None or not job.is_final:
                job = BatchJobStatus(sched_id, FINISHED, job.raw_state if job else "")
        if state == PENDING_DELETION and not job.is_final:
            continue  # a cancel is on its way: the row says so until the job has ended
        final: dict[str, Any] = {"ended_at": now} if job.is_final else {}
        try:
            batchrows.move(cursor, rid, job.state, current=state, raw_state=job.raw_state,
                           minutes_left=job.minutes_left, **final)
        except BatchStateError as exc:  # nothing written: the other rows still sync
            log.error("%s; row left as it is", exc)
            continue
        updated += 1
        if job.is_final:
            ended += 1
            log.info("batch job %d (%s) ended: %s", rid, sched_id, job.raw_state or job.state)
    foreign = [job for sid, job in sorted(listed.items()) if sid not in ours]
    return {"updated": updated, "ended": ended, "foreign": foreign}


def cancel_requested(db: Database, scheduler: Scheduler, log: logging.Logger) -> int:
    """Act on the users' cancel requests (``pending-deletion`` rows): a row never submitted
    becomes ``cancelled``; a submitted one is cancelled with the scheduler once (``raw_state``
    :data:`CANCEL_SENT`) and keeps its state until :func:`apply_status` sees the job end.
    A row whose submission is in flight (:data:`IN_FLIGHT`, perhaps in ``balsam submit-launch``)
    waits for its scheduler id: only a row whose claim can no longer come is "never submitted".
    Returns how many were handled; a failing cancel is logged and tried next cycle."""
    def requested(cursor: Cursor) -> list[tuple[int, str]]:
        cursor.execute(f"SELECT id, scheduler_id FROM {QL} WHERE state = %s "
                       "AND NOT raw_state = ANY(%s) ORDER BY id",
                       [PENDING_DELETION, [CANCEL_SENT, IN_FLIGHT]])
        return [(int(r[0]), str(r[1])) for r in cursor.fetchall()]

    def record(cursor: Cursor, rid: int, state: str, raw: str, message: str) -> bool:
        ended: dict[str, Any] = ({} if state == PENDING_DELETION
                                 else {"ended_at": datetime.now(timezone.utc)})
        try:
            batchrows.move(cursor, rid, state, current=PENDING_DELETION, raw_state=raw,
                           message=message, **ended)
        except BatchStateError as exc:  # e.g. no longer pending-deletion: nothing written
            log.error("%s", exc)
            return False
        return True

    handled = 0
    for rid, sched_id in db.run(requested):
        if not sched_id:  # never submitted (the submitter keeps the request: see _record)
            if not db.run(record, rid, CANCELLED, "", "cancelled by the user before submission"):
                continue
            log.info("batch job %d cancelled by the user before submission", rid)
        else:
            try:
                scheduler.cancel(sched_id)
            except SchedulerError as exc:
                log.warning("batch job %d (%s): cancel failed, retrying next cycle: %s", rid,
                            sched_id, exc)
                continue
            if not db.run(record, rid, PENDING_DELETION, CANCEL_SENT, "cancelled by the user"):
                continue
            log.info("batch job %d (%s): cancelled by the user", rid, sched_id)
        handled += 1
    return handled


def sync(db: Database, scheduler: Scheduler, user: str, log: logging.Logger) -> dict[str, Any]:
    """One sync cycle through ``db`` (a :class:`balsam.db.database.Database`). Returns
    ``{"ok", "error", "updated", "ended", "foreign"}``; on a failing status call ``ok`` is
    False, ``error`` the one-line reason, and nothing is changed."""
    asked_at = datetime.now(timezone.utc)
    try:
        listed = scheduler.status(user)
    except SchedulerError as exc:
        log.warning("scheduler status failed, batch jobs not synced this cycle: %s", exc)
        return {"ok": False, "error": str(exc), "updated": 0, "ended": 0, "foreign": []}
    result = db.run(apply_status, scheduler, listed, asked_at, log)
    return {"ok": True, "error": None, **result}
