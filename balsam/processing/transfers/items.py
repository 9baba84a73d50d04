"""Transfer items and batches in the database: create, claim, record, recover, complete.

Every function takes a cursor and works in the caller's transaction (see :mod:`.step`).

* **Creation** (:func:`create_items`): a READY job with a ``stage_in_url`` and no ``in`` items
  gets one (its source; destination: its working directory). A POSTPROCESSED job with files to
  stage out and no ``out`` items gets one per file its ``stage_out_files`` patterns match (known
  only now: the run made them); none matching fails the job, as before. Each filled transfer
  slot of a site-API job (:mod:`.slots`) of that direction is one item more, whose workdir side
  is exactly ``workdir/local_path`` (a missing stage-out file fails the job). Items are created from
  the job row by processing, not by each of the several ways jobs are written (COPY, the ORM, the
  site API), so every writer gets them and an edited URL before READY is honoured.
* **Claim** (:func:`claim_batches`): pending items of jobs still in the state they serve, per
  (protocol, endpoint, direction), at most ``batch_items`` per batch and
  ``batches_per_endpoint`` batches in flight per endpoint, under one advisory lock (several
  processes run the step).
* **Recovery** (:func:`recover_lost`): an active synchronous batch whose owner process is gone
  (same host, dead pid) or whose lease ran out is marked ``lost`` and its items go back to
  pending without counting an attempt; an asynchronous batch needs none (its task id is polled
  by whoever runs the step).
* **Nothing to do** (:func:`may_have_work`): one cheap statement that tells a worker woken by a
  job change whether a pass could do anything, so that jobs without transfers cost no pass.
* **Completion** (:func:`complete_jobs`): a job whose items of its step are all done moves on
  (READY -> STAGED_IN [-> PREPROCESSED], POSTPROCESSED -> JOB_FINISHED); one with a failed item
  fails with the item's error. A READY job that still links ``input_files`` from parents is left
  to a transition worker, which sees its items done.
"""
from __future__ import annotations

import glob
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from balsam.core import lifecycle, routing, schema
from balsam.core.routing import sql_in
from balsam.core.states import END_STATES, State
from balsam.db.dbapi import Cursor, fetch_one
from balsam.processing import transfer
from balsam.processing.transfers import Item, Result, locate, slots
from balsam.processing.transitions import wf_clause

JOB, APP = schema.JOB_TABLE, schema.APP_TABLE
ITEM, BATCH = schema.TRANSFER_ITEM_TABLE, schema.TRANSFER_BATCH_TABLE
CLAIM_LOCK_KEY = 0x7A4F_5B01
"""Transaction-level advisory lock serialising batch claims (a fixed number, not a hash)."""

STEP_STATE = {"in": routing.STAGE_IN_STATE.value, "out": routing.STAGE_OUT_STATE.value}
"""The job state each direction's items serve (:data:`balsam.core.routing.ROUTES`)."""

STAGE_IN_SQL = sql_in([routing.STAGE_IN_STATE])
"""The job state (SQL) in which items of direction ``in`` are sent."""
STAGE_OUT_SQL = sql_in([routing.STAGE_OUT_STATE])
"""The job state (SQL) in which items of direction ``out`` are sent."""
_ENDED_SQL = sql_in(END_STATES)


def fresh(alias: str = "ti") -> str:
    """SQL: item ``alias`` was made for job j's current visit of its state (see FRESH)."""
    return f"{alias}.created_at >= COALESCE(j.state_since, j.created_at)"


FRESH = fresh()
"""SQL: item ti was made for job j's current visit of its state (a job sent back to READY by a
retry gets new items; the old ones are removed by :func:`create_items`)."""
STAGE_IN_DONE = (f"NOT EXISTS (SELECT 1 FROM {ITEM} ti WHERE ti.job_id = j.job_id "
                 f"AND ti.direction = 'in' AND {FRESH} AND ti.state <> 'done')"
                 f" AND EXISTS (SELECT 1 FROM {ITEM} ti WHERE ti.job_id = j.job_id "
                 f"AND ti.direction = 'in' AND {FRESH})")
"""SQL over job j: every stage-in item of this visit of READY exists and is done."""


Row = tuple[str, str, str, str, str, str, str]
"""An item to insert: (job_id, direction, source, destination, protocol, endpoint, slot)."""


def _insert(cursor: Cursor, rows: Sequence[Row]) -> None:
    if rows:
        cols = list(zip(*rows))
        cursor.execute(f"""
            INSERT INTO {ITEM} (job_id, direction, source, destination, protocol, endpoint,
                                slot, created_at)
            SELECT *, clock_timestamp() FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[],
                                        %s::text[], %s::text[], %s::text[])""",
                       [list(c) for c in cols])


def create_items(cursor: Cursor, db_path: str, wf_filter: Optional[str], limit: int) -> int:
    """Create the items of jobs that reached READY or POSTPROCESSED without them (see the
    module docstring); returns how many jobs got items (or failed for want of files)."""
    _tidy(cursor)
    params: list[Any] = []
    wf = wf_clause(wf_filter, params)
    cursor.execute(f"""
        SELECT j.job_id, j.state, j.workflow, j.name, j.user_workdir, j.stage_in_url,
               j.stage_out_url, j.stage_out_files FROM {JOB} j
        WHERE j.session_id IS NULL AND (
              (j.state = {STAGE_IN_SQL} AND (j.stage_in_url <> '' OR {slots.HAS_IN}) AND NOT EXISTS (
                  SELECT 1 FROM {ITEM} ti WHERE ti.job_id = j.job_id AND ti.direction = 'in'
                  AND {FRESH}))
           OR (j.state = {STAGE_OUT_SQL}
               AND ((j.stage_out_url <> '' AND j.stage_out_files <> '') OR {slots.HAS_OUT})
               AND NOT EXISTS (SELECT 1 FROM {ITEM} ti WHERE ti.job_id = j.job_id
                               AND ti.direction = 'out' AND {FRESH}))){wf}
        LIMIT %s FOR NO KEY UPDATE OF j SKIP LOCKED""", params + [limit])
    rows: list[Row] = []
    failed: dict[str, str] = {}
    found = cursor.fetchall()
    filled = _filled_slots(cursor, [str(r[0]) for r in found])
    for job_id, state, wf_, name, user_wd, in_url, out_url, out_files in found:
        job_id = str(job_id)
        workdir = schema.working_directory(db_path, wf_, name, job_id, user_wd)
        direction = "in" if state == State.READY.value else "out"
        try:
            if direction == "in" and in_url:
                where = locate(in_url)
                rows.append((job_id, "in", where.path, workdir, where.protocol, where.endpoint,
                             ""))
            elif direction == "out" and out_url and out_files:
                where = locate(out_url)
                rows += [(job_id, "out", path, where.path, where.protocol, where.endpoint, "")
                         for path in _stage_out_files(workdir, out_files, out_url)]
            rows += [_slot_item(job_id, workdir, slot) for slot in filled.get(job_id, [])
                     if slot.direction == direction]
        except transfer.TransferError as exc:
            step = "stage-in" if state == State.READY.value else "stage-out"
            failed[job_id] = f"{step} failed: {exc}"
    _insert(cursor, rows)
    lifecycle.transition(cursor, list(failed), State.FAILED, failed,
                         sources=[State.READY.value, State.POSTPROCESSED.value])
    return len(found)


def _filled_slots(cursor: Cursor, job_ids: list[str]) -> dict[str, list[slots.SlotValue]]:
    """The filled transfer slots of ``job_ids``, by job."""
    if not job_ids:
        return {}
    cursor.execute(f"""SELECT job_id, slot, direction, given, url, local_path, recursive
                       FROM {slots.SLOT} WHERE job_id = ANY(%s::uuid[]) ORDER BY slot""",
                   [job_ids])
    found: dict[str, list[slots.SlotValue]] = {}
    for job_id, *values in cursor.fetchall():
        found.setdefault(str(job_id), []).append(slots.SlotValue(*values))
    return found


def _slot_item(job_id: str, workdir: str, slot: slots.SlotValue) -> Row:
    """The item of a filled slot: its workdir side is exactly ``workdir/local_path``; a
    stage-out's remote side is the file's own path (one ending in ``/`` is a directory the
    file goes into); a recursive stage-in source ends with ``/`` (a directory)."""
    where = locate(slot.url)
    local = os.path.join(workdir, slot.local_path)
    if slot.direction == "in":
        source = where.path.rstrip("/") + "/" if slot.recursive else where.path
        return (job_id, "in", source, local, where.protocol, where.endpoint, slot.slot)
    if not os.path.lexists(local):
        raise transfer.TransferError(f"slot {slot.slot!r}: {slot.local_path} does not exist in "
                                     f"{workdir}")
    dest = where.path
    if dest.endswith("/"):
        dest = os.path.join(dest, os.path.basename(local))
    return (job_id, "out", local, dest, where.protocol, where.endpoint, slot.slot)


def _tidy(cursor: Cursor) -> None:
    """Pending items of jobs that ended otherwise (killed, failed) fail as not sent; items left
    from an earlier visit of READY/POSTPROCESSED (a retried job) are removed, so the job gets
    new ones."""
    cursor.execute(f"""
        UPDATE {ITEM} i SET state = 'failed', finished_at = now(),
               error = 'not sent: the job is ' || j.state
        FROM {JOB} j WHERE j.job_id = i.job_id AND i.state = 'pending'
          AND j.state IN ({_ENDED_SQL})""")
    cursor.execute(f"""
        DELETE FROM {ITEM} ti USING {JOB} j
        WHERE j.job_id = ti.job_id AND ti.state <> 'active' AND NOT ({FRESH})
          AND ((ti.direction = 'in' AND j.state = {STAGE_IN_SQL})
               OR (ti.direction = 'out' AND j.state = {STAGE_OUT_SQL}))""")


def _stage_out_files(workdir: str, patterns: str, url: str) -> list[str]:
    """Absolute paths of what ``patterns`` match in ``workdir``; TransferError if nothing, or
    if two matches share a base name (they arrive flat)."""
    root = os.path.abspath(workdir)
    matches = sorted({os.path.normpath(path) for pattern in patterns.split()
                      for path in glob.glob(os.path.join(glob.escape(root), pattern))})
    what = f"stage-out to {url}"
    if not matches:
        raise transfer.TransferError(f"{what}: the stage-out files {patterns!r} match nothing "
                                     f"in {workdir}")
    names = [os.path.basename(m) for m in matches]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise transfer.TransferError(f"{what}: several stage-out files are named {clash[0]!r}")
    return matches


def may_have_work(cursor: Cursor) -> bool:
    """Whether a pass of the step could find anything to do (False: it would only spend its
    transactions): a batch being sent (to record, poll or recover), a pending item (to claim,
    or to fail if its job ended), or a job in READY or POSTPROCESSED that has transfers or
    items (to create items for, or to move on). One statement over partial indexes (items
    pending, batches active) and the job state index; jobs with no transfers make it False."""
    cursor.execute(f"""
        SELECT EXISTS (SELECT 1 FROM {BATCH} WHERE state = 'active')
            OR EXISTS (SELECT 1 FROM {ITEM} WHERE state = 'pending')
            OR EXISTS (SELECT 1 FROM {JOB} j WHERE j.state IN ({STAGE_IN_SQL}, {STAGE_OUT_SQL})
                         AND (j.stage_in_url <> '' OR j.stage_out_url <> ''
                              OR EXISTS (SELECT 1 FROM {slots.SLOT} ts
                                         WHERE ts.job_id = j.job_id)
                              OR EXISTS (SELECT 1 FROM {ITEM} ti WHERE ti.job_id = j.job_id)))""")
    return bool(fetch_one(cursor)[0])


def owner_tag() -> str:
    """``host:pid`` of this process, as recorded on the batches it sends."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim_batches(cursor: Cursor, *, batch_items: int, per_endpoint: int, lease_seconds: float,
                  async_protocols: Sequence[str], wf_filter: Optional[str] = None
                  ) -> list[tuple[int, str, list[Item]]]:
    """Claim pending items into new batches; ``[(batch_id, protocol, items)]``."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CLAIM_LOCK_KEY])
    params: list[Any] = []
    wf = wf_clause(wf_filter, params)
    cursor.execute(f"""
        SELECT i.protocol, i.endpoint, i.direction FROM {ITEM} i JOIN {JOB} j ON j.job_id = i.job_id
        WHERE i.state = 'pending' AND (i.not_before IS NULL OR i.not_before <= now())
          AND j.state = CASE i.direction WHEN 'in' THEN {STAGE_IN_SQL} ELSE {STAGE_OUT_SQL} END{wf}
        GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""", params)
    groups = cursor.fetchall()
    cursor.execute(f"""SELECT protocol, endpoint, count(*) FROM {BATCH} WHERE state = 'active'
                       GROUP BY 1, 2""")
    busy = {(p, e): int(n) for p, e, n in cursor.fetchall()}
    claimed = []
    for protocol, endpoint, direction in groups:
        while busy.get((protocol, endpoint), 0) < per_endpoint:
            items = _claim_one(cursor, protocol, endpoint, direction, batch_items,
                               lease_seconds if protocol not in async_protocols else None,
                               wf_filter)
            if not items:
                break
            busy[(protocol, endpoint)] = busy.get((protocol, endpoint), 0) + 1
            claimed.append(items)
    return claimed


def _claim_one(cursor: Cursor, protocol: str, endpoint: str, direction: str, limit: int,
               lease: Optional[float], wf_filter: Optional[str]
               ) -> Optional[tuple[int, str, list[Item]]]:
    params: list[Any] = [protocol, endpoint, direction, STEP_STATE[direction]]
    wf = wf_clause(wf_filter, params)
    cursor.execute(f"""
        SELECT i.id, i.job_id, i.source, i.destination, i.slot FROM {ITEM} i
        JOIN {JOB} j ON j.job_id = i.job_id
        WHERE i.state = 'pending' AND i.protocol = %s AND i.endpoint = %s AND i.direction = %s
          AND (i.not_before IS NULL OR i.not_before <= now()) AND j.state = %s{wf}
        ORDER BY i.id LIMIT %s FOR UPDATE OF i SKIP LOCKED""", params + [limit])
    found = cursor.fetchall()
    if not found:
        return None
    cursor.execute(f"""
        INSERT INTO {BATCH} (protocol, endpoint, direction, owner, lease_until, started_at,
                             item_count)
        VALUES (%s, %s, %s, %s, CASE WHEN %s::float8 IS NULL THEN NULL
                                     ELSE now() + make_interval(secs => %s::float8) END,
                now(), %s) RETURNING id""",
                   [protocol, endpoint, direction, owner_tag() if lease else "", lease, lease,
                    len(found)])
    batch_id = int(fetch_one(cursor)[0])
    cursor.execute(f"""UPDATE {ITEM} SET state = 'active', batch_id = %s, attempts = attempts + 1
                       WHERE id = ANY(%s)""", [batch_id, [r[0] for r in found]])
    items = [Item(int(i), str(j), direction, src, dst, endpoint, slot)
             for i, j, src, dst, slot in found]
    return batch_id, protocol, items


def set_task(cursor: Cursor, batch_id: int, task_id: str) -> None:
    """Record an asynchronous batch's external task id."""
    cursor.execute(f"UPDATE {BATCH} SET task_id = %s WHERE id = %s", [task_id, batch_id])


def record(cursor: Cursor, batch_id: int, results: Mapping[int, Result], *, max_attempts: int,
           backoff_seconds: float) -> bool:
    """Write a finished batch's per-item results; False (nothing written) if the batch is no
    longer active (recovered as lost by another process meanwhile)."""
    cursor.execute(f"""UPDATE {BATCH} SET state = 'done', finished_at = now()
                       WHERE id = %s AND state = 'active' RETURNING id""", [batch_id])
    if cursor.fetchone() is None:
        return False
    ok = {i: r for i, r in results.items() if r.error is None}
    bad = {i: r for i, r in results.items() if r.error is not None}
    if ok:
        ids = list(ok)
        cursor.execute(f"""
            UPDATE {ITEM} i SET state = 'done', finished_at = now(), error = '', size = v.size,
                   files = v.files
            FROM unnest(%s::bigint[], %s::bigint[], %s::int[]) v(id, size, files)
            WHERE i.id = v.id AND i.batch_id = %s""",
                       [ids, [ok[i].size for i in ids], [ok[i].files for i in ids], batch_id])
    if bad:
        ids = list(bad)
        cursor.execute(f"""
            UPDATE {ITEM} i SET error = v.error,
                   state = CASE WHEN v.final OR i.attempts >= %s THEN 'failed' ELSE 'pending' END,
                   finished_at = CASE WHEN v.final OR i.attempts >= %s THEN now() END,
                   not_before = now() + make_interval(
                       secs => %s * power(2, greatest(i.attempts - 1, 0)))
            FROM unnest(%s::bigint[], %s::text[], %s::bool[]) v(id, error, final)
            WHERE i.id = v.id AND i.batch_id = %s""",
                       [max_attempts, max_attempts, backoff_seconds, ids,
                        [bad[i].error for i in ids], [bad[i].final for i in ids], batch_id])
    cursor.execute(f"""
        UPDATE {BATCH} b SET bytes = COALESCE((SELECT sum(size) FROM {ITEM} WHERE batch_id = b.id
                                               AND state = 'done'), 0),
               state = CASE WHEN %s THEN 'failed' ELSE 'done' END,
               message = %s WHERE id = %s""",
                   [bool(bad), next(iter(bad.values())).error if bad else "", batch_id])
    return True


def active_ids(cursor: Cursor, batch_id: int) -> list[int]:
    """The ids of a batch's items still being sent."""
    cursor.execute(f"SELECT id FROM {ITEM} WHERE batch_id = %s AND state = 'active'", [batch_id])
    return [int(r[0]) for r in cursor.fetchall()]


def fail_batch(cursor: Cursor, batch_id: int, message: str, *, max_attempts: int,
               backoff_seconds: float) -> bool:
    """Every item of an active batch failed with ``message`` (retried within its attempts)."""
    return record(cursor, batch_id, {i: Result(message) for i in active_ids(cursor, batch_id)},
                  max_attempts=max_attempts, backoff_seconds=backoff_seconds)


def active_async(cursor: Cursor, protocols: Sequence[str]) -> list[tuple[int, str, str]]:
    """``[(batch_id, protocol, task_id)]`` of asynchronous batches being sent."""
    cursor.execute(f"""SELECT id, protocol, task_id FROM {BATCH}
                       WHERE state = 'active' AND protocol = ANY(%s) AND task_id <> ''
                       ORDER BY id""", [list(protocols)])
    return [(int(b), p, t) for b, p, t in cursor.fetchall()]


def abandoned_async(cursor: Cursor, protocols: Sequence[str]) -> list[tuple[int, str, str]]:
    """``[(batch_id, protocol, task_id)]`` of asynchronous batches being sent that no job
    waits for any more: every active item's job was killed, failed, or moved on and back (a
    reset job gets new items)."""
    cursor.execute(f"""
        SELECT b.id, b.protocol, b.task_id FROM {BATCH} b
        WHERE b.state = 'active' AND b.protocol = ANY(%s) AND b.task_id <> ''
          AND EXISTS (SELECT 1 FROM {ITEM} i WHERE i.batch_id = b.id AND i.state = 'active')
          AND NOT EXISTS (
              SELECT 1 FROM {ITEM} i JOIN {JOB} j ON j.job_id = i.job_id
              WHERE i.batch_id = b.id AND i.state = 'active' AND {fresh("i")}
                AND j.state = CASE i.direction WHEN 'in' THEN {STAGE_IN_SQL} ELSE {STAGE_OUT_SQL} END)
        ORDER BY b.id""", [list(protocols)])
    return [(int(b), p, t) for b, p, t in cursor.fetchall()]


def cancelled(cursor: Cursor, batch_id: int, message: str) -> None:
    """Record a batch whose task was cancelled: its active items fail (naming their job's
    state), the batch fails with ``message``."""
    cursor.execute(f"""
        UPDATE {ITEM} i SET state = 'failed', finished_at = now(),
               error = 'cancelled: its job no longer waits for it (the job is ' || j.state || ')'
        FROM {JOB} j WHERE j.job_id = i.job_id AND i.batch_id = %s AND i.state = 'active'""",
                   [batch_id])
    cursor.execute(f"""UPDATE {BATCH} SET state = 'failed', finished_at = now(), message = %s
                       WHERE id = %s AND state = 'active'""", [message, batch_id])


def recover_lost(cursor: Cursor, alive: Callable[[str], bool]) -> list[int]:
    """Mark lost the active synchronous batches whose owner is dead (``alive(owner)`` False)
    or whose lease ran out; their items return to pending. Returns the batch ids."""
    cursor.execute(f"""
        SELECT id, owner, lease_until < now() FROM {BATCH}
        WHERE state = 'active' AND task_id = '' FOR UPDATE SKIP LOCKED""")
    lost = [int(b) for b, owner, expired in cursor.fetchall()
            if expired or (owner and not alive(owner))]
    if lost:
        cursor.execute(f"""
            UPDATE {BATCH} SET state = 'lost', finished_at = now(),
                   message = 'its sender stopped before it ended: items sent again'
            WHERE id = ANY(%s)""", [lost])
        cursor.execute(f"""UPDATE {ITEM} SET state = 'pending', attempts = attempts - 1
                           WHERE batch_id = ANY(%s) AND state = 'active'""", [lost])
    return lost
