"""Submitting planned batch jobs: render the job script, call the scheduler, record the outcome.

For each ``pending-submission`` row (:func:`submit_pending`):

1. The row is marked ``submitting`` (attempt counted, ``submitted_at`` = now, ``raw_state``
   :data:`~balsam.core.batchstates.IN_FLIGHT` until the outcome is recorded) and committed
   *before* the scheduler is called.
2. The script ``<db>/qsubmit/qlaunch<id>.sh`` is rendered from ``<db>/job-template.sh`` (else
   the machine profile's template) with :func:`balsam.platform.machines.template_values`; an
   existing file is never overwritten (only this row's own earlier attempt may reuse it).
3. The scheduler plug-in submits it as job ``qlaunch<id>``; the row becomes ``submitted`` with
   the scheduler id and the script path in ``command``.

A failure is recorded with its one-line reason in ``message``. A template or value error is
final (``submit-failed`` at once). A scheduler error puts the row back to
``pending-submission``, tried again after ``RETRY_SECONDS * 2**(attempts-1)``; after
``max_attempts`` it is ``submit-failed`` (kept, with ``ended_at``). A submit that timed out may
have queued the job, so the row stays ``submitting``.

Crash safety: a row left ``submitting`` longer than ``ORPHAN_SECONDS`` (the submitter died or
timed out between calling the scheduler and recording the answer) is *reconciled*, never
resubmitted: the scheduler's listing is searched for the job name ``qlaunch<id>``; found -> the
row takes its id and state; absent -> ``submit-failed`` ("outcome unknown"). Rows younger than
that may belong to a submission in progress in another process (``balsam submit-launch``).
A user's cancel request made during a submission keeps the row's ``IN_FLIGHT`` mark, so the
service's cancel step (:func:`balsam.service.sync.cancel_requested`, maybe in another process)
waits for the scheduler id; an interrupted one is reconciled like a ``submitting`` row.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pwd
import shutil
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from balsam.core import batchrows, schema
from balsam.core.batchstates import IN_FLIGHT
from balsam.core.sql import fetch_dict
from balsam.db.database import Database
from balsam.db.dbapi import Cursor
from balsam.errors import BalsamError
from balsam.platform import machines
from balsam.platform.schedulers import COMMAND_TIMEOUT, CommandTimeout, Scheduler, SchedulerError
from balsam.service.policy import PENDING, PENDING_DELETION, SUBMIT_FAILED, SUBMITTED, SUBMITTING

QL = schema.QLAUNCH_TABLE
MAX_ATTEMPTS = 3
RETRY_SECONDS = 30.0
ORPHAN_SECONDS = 2 * COMMAND_TIMEOUT + 30
"""A ``submitting`` row older than this has no submission in progress anywhere."""
TEMPLATE_FILE = "job-template.sh"


def current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def job_name(row_id: int) -> str:
    return f"qlaunch{row_id}"


def script_path(db_path: str, row_id: int) -> str:
    return os.path.join(db_path, "qsubmit", f"{job_name(row_id)}.sh")


def machine_for(settings: dict[str, Any]) -> machines.Machine:
    """The machine profile named in ``settings`` with the DB's own scheduler and GPU count (a
    name that is not shipped falls back to the ``local`` profile's other fields)."""
    name = str(settings.get("machine") or "local")
    base = machines.load(name if name in machines.names() else "local")
    return dataclasses.replace(base, name=name, scheduler=settings.get("scheduler", base.scheduler),
                               gpus_per_node=int(settings.get("gpus_per_node") or base.gpus_per_node))


def render_script(db_path: str, settings: dict[str, Any], *, project: str, queue: str, nodes: int,
                  minutes: int, job_mode: str, wf_filter: str = "", sched_flags: str = "",
                  filter_tags: Optional[Mapping[str, str]] = None) -> str:
    """The job script text for one batch job (MachineError, one line, if it cannot be made)."""
    machine = machine_for(settings)
    own = os.path.join(db_path, TEMPLATE_FILE)
    if os.path.isfile(own):
        with open(own) as fh:
            text = fh.read()
    else:
        text, own = machine.template_text(), machine.template_path
    machines.check_project_lines(text, machine, project, own)
    balsam = shutil.which("balsam")
    values = machines.template_values(
        machine, project=project, queue=queue, nodes=nodes, time_minutes=minutes,
        job_mode=job_mode, db_path=os.path.abspath(db_path),
        balsam_bin=os.path.dirname(balsam or sys.executable), python=sys.executable,
        wf_filter=wf_filter or None, sched_flags=sched_flags, filter_tags=filter_tags)
    return machines.render(text, values)


def _write_script(path: str, text: str, reuse: bool) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
    except FileExistsError:
        if reuse:
            return
        raise BalsamError(f"refusing to overwrite the existing job script {path}")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _claim(cursor: Cursor, now: datetime, ids: Optional[Sequence[int]], skip: list[int]
           ) -> Optional[dict[str, Any]]:
    """Mark the next due pending row ``submitting`` and return it (None: nothing due)."""
    where, params = "", []
    if ids is not None:
        where, params = " AND id = ANY(%s)", [list(ids)]
    cursor.execute(f"""
        SELECT * FROM {QL} WHERE state = %s AND from_balsam AND NOT id = ANY(%s){where}
          AND (attempts = 0 OR submitted_at + make_interval(secs => %s * 2 ^ (attempts - 1)) <= %s)
        ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED""",
                   [PENDING, skip, *params, RETRY_SECONDS, now])
    row = fetch_dict(cursor)
    if row is None:
        return None
    row["attempts"] += 1
    batchrows.move(cursor, row["id"], SUBMITTING, current=PENDING, attempts=row["attempts"],
                   submitted_at=now, raw_state=IN_FLIGHT)
    return row


def _record(cursor: Cursor, row_id: int, state: Optional[str] = None, **values: Any) -> None:
    """Write an outcome (``state``, checked by :func:`balsam.core.batchrows.move`, and other
    columns; with ``state``, the ``IN_FLIGHT`` mark goes unless ``raw_state`` is given); a
    cancel request a user made meanwhile (``pending-deletion``) stays (the scheduler id is
    recorded all the same, so the cancel reaches the scheduler)."""
    if state is not None:
        values.setdefault("raw_state", "")
        batchrows.move(cursor, row_id, state, keep_cancel=True, **values)
        return
    sets = ", ".join(f"{k} = %s" for k in values)
    cursor.execute(f"UPDATE {QL} SET {sets} WHERE id = %s", [*values.values(), row_id])


def _one_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def submit_row(db: Database, db_path: str, settings: dict[str, Any], scheduler: Scheduler,
               log: logging.Logger, row: dict[str, Any], max_attempts: int) -> Optional[str]:
    """Render and submit one claimed (``submitting``) row; its scheduler id, or None."""
    rid, path = row["id"], script_path(db_path, row["id"])
    try:
        text = render_script(db_path, settings, project=row["project"], queue=row["queue"],
                             nodes=row["nodes"], minutes=row["wall_minutes"],
                             job_mode=row["job_mode"], wf_filter=row["wf_filter"],
                             sched_flags=row["sched_flags"],
                             filter_tags=row.get("filter_tags") or None)
        _write_script(path, text, reuse=row["attempts"] > 1)
    except (BalsamError, OSError) as exc:
        reason = _one_line(exc)
        log.error("batch job %d: cannot write its script: %s", rid, reason)
        db.run(_record, rid, state=SUBMIT_FAILED, message=reason,
               ended_at=datetime.now(timezone.utc))
        return None
    qsubmit = os.path.dirname(path)
    try:
        sched_id = scheduler.submit(path, qsubmit, job_name(rid),
                                    os.path.join(qsubmit, f"{job_name(rid)}.out"))
    except CommandTimeout as exc:
        log.warning("batch job %d: %s; left `submitting` to be reconciled", rid, _one_line(exc))
        db.run(_record, rid, message=_one_line(exc))
        return None
    except SchedulerError as exc:
        reason = _one_line(exc)
        final = row["attempts"] >= max_attempts
        log.error("batch job %d: submission %d/%d failed: %s", rid, row["attempts"],
                  max_attempts, reason)
        db.run(_record, rid, state=SUBMIT_FAILED if final else PENDING, message=reason,
               **({"ended_at": datetime.now(timezone.utc)} if final else {}))
        return None
    db.run(_record, rid, state=SUBMITTED, scheduler_id=sched_id, command=path, message="",
           submitted_at=datetime.now(timezone.utc))
    log.info("batch job %d submitted: scheduler id %s (%s, %d nodes, %d min, %s)", rid, sched_id,
             row["queue"], row["nodes"], row["wall_minutes"], row["job_mode"])
    return sched_id


def reconcile(db: Database, db_path: str, scheduler: Scheduler, log: logging.Logger, *,
              now: Optional[datetime] = None, orphan_seconds: float = ORPHAN_SECONDS) -> int:
    """Resolve ``submitting`` rows older than ``orphan_seconds`` by job name (module
    docstring); returns how many were resolved. A failing status call resolves none."""
    now = now or datetime.now(timezone.utc)
    old = now - timedelta(seconds=orphan_seconds)

    in_flight = "(state = %s OR (state = %s AND raw_state = %s))"
    marks = [SUBMITTING, PENDING_DELETION, IN_FLIGHT]

    def orphans(cursor: Cursor) -> list[int]:
        cursor.execute(f"SELECT id FROM {QL} WHERE {in_flight} AND submitted_at < %s",
                       [*marks, old])
        return [r[0] for r in cursor.fetchall()]

    stale = db.run(orphans)
    if not stale:
        return 0
    try:
        listed = scheduler.status(current_user())
    except SchedulerError as exc:
        log.warning("cannot reconcile interrupted submissions now: %s", _one_line(exc))
        return 0
    by_name = {s.name: s for s in listed.values()}

    def resolve(cursor: Cursor) -> None:
        # only rows still in flight (maybe cancelled meanwhile): another process may have
        # resolved one since it was read
        cursor.execute(f"SELECT id FROM {QL} WHERE id = ANY(%s) AND {in_flight} ORDER BY id "
                       "FOR UPDATE", [stale, *marks])
        for (rid,) in cursor.fetchall():
            found = by_name.get(job_name(rid))
            if found is not None:
                _record(cursor, rid, state=found.state, raw_state=found.raw_state,
                        scheduler_id=found.scheduler_id, message="",
                        command=script_path(db_path, rid))
                log.info("batch job %d: interrupted submission found as %s", rid,
                         found.scheduler_id)
            else:
                _record(cursor, rid, state=SUBMIT_FAILED, ended_at=now,
                        message=f"submission outcome unknown (interrupted; no job "
                                f"{job_name(rid)} in the queue): not resubmitted")
                log.warning("batch job %d: interrupted submission not in the queue", rid)

    db.run(resolve)
    return len(stale)


def submit_pending(db: Database, db_path: str, settings: dict[str, Any], scheduler: Scheduler,
                   log: logging.Logger, *, ids: Optional[Sequence[int]] = None,
                   max_attempts: int = MAX_ATTEMPTS, now: Optional[datetime] = None,
                   orphan_seconds: float = ORPHAN_SECONDS) -> list[tuple[int, str]]:
    """Reconcile interrupted submissions, then submit every due pending row (only ``ids`` if
    given), one at a time; returns ``(row id, scheduler id)`` of each accepted submission.
    ``db`` is a :class:`balsam.db.database.Database`; ``log`` a :class:`logging.Logger`."""
    reconcile(db, db_path, scheduler, log, now=now, orphan_seconds=orphan_seconds)
    done: list[tuple[int, str]] = []
    tried: list[int] = []
    while True:
        row = db.run(_claim, now or datetime.now(timezone.utc), ids, tried)
        if row is None:
            return done
        tried.append(row["id"])
        sched_id = submit_row(db, db_path, settings, scheduler, log, row, max_attempts)
        if sched_id is not None:
            done.append((row["id"], sched_id))
