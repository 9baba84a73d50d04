"""Move the jobs whose transfer items ended (see :mod:`.items`), in one write per kind of move.

========================================  ==============================================
items of the job's step                   move
========================================  ==============================================
stage-in items all done                   READY -> STAGED_IN (-> PREPROCESSED when the
                                          app has no preprocess script); left to a
                                          transition worker when ``input_files`` are
                                          still to be linked from parents
a stage-in item failed                    READY -> FAILED "stage-in failed: <error>" (with
                                          "slot 'name': " for a transfer slot's item)
stage-out items all done                  POSTPROCESSED -> JOB_FINISHED
a stage-out item failed                   POSTPROCESSED -> FAILED "stage-out failed: ..."
========================================  ==============================================

Two things no job-row change announces are said here, at the end of a pass (issue 16,
session 21): a READY job whose stage-in items are done but whose ``input_files`` are still to
be linked waits for a transition worker, so :func:`complete_jobs` notifies the workers'
channel (:data:`balsam.defaults.PROCESSING_NOTIFY_CHANNEL`; the items' rows are not job rows);
and :func:`retry_in` says when the first item waiting out a failed attempt's back-off may be
sent, so the transfer worker looks then, not at its backed-off next look.
"""
from __future__ import annotations

from typing import Any, Optional

from balsam import defaults
from balsam.core import lifecycle, schema
from balsam.core.states import State
from balsam.db.dbapi import Cursor
from balsam.processing.transfers.items import STAGE_IN_SQL, STAGE_OUT_SQL, fresh
from balsam.processing.transitions import HAS_PARENTS, NEEDS_PREPROCESS, wf_clause

JOB, APP, ITEM = schema.JOB_TABLE, schema.APP_TABLE, schema.TRANSFER_ITEM_TABLE


def complete_jobs(cursor: Cursor, wf_filter: Optional[str], limit: int) -> dict[str, int]:
    """Write the moves of the table above; how many jobs moved, by kind."""
    params: list[Any] = []
    wf = wf_clause(wf_filter, params)
    cursor.execute(f"""
        SELECT j.job_id, i.direction, j.stage_in_url, j.stage_out_url,
               (array_agg(i.error ORDER BY i.id) FILTER (WHERE i.state = 'failed'))[1],
               (array_agg(i.slot ORDER BY i.id) FILTER (WHERE i.state = 'failed'))[1],
               string_agg(DISTINCT NULLIF(i.slot, ''), ', '),
               COALESCE(sum(i.files), 0), count(*), {NEEDS_PREPROCESS},
               j.input_files <> '' AND {HAS_PARENTS}
        FROM {ITEM} i JOIN {JOB} j ON j.job_id = i.job_id
        LEFT JOIN {APP} a ON a.name = j.application
        WHERE j.session_id IS NULL AND {fresh("i")}
          AND ((i.direction = 'in' AND j.state = {STAGE_IN_SQL})
               OR (i.direction = 'out' AND j.state = {STAGE_OUT_SQL})){wf}
        GROUP BY j.job_id, i.direction, a.preprocess
        HAVING bool_and(i.state = 'done') OR bool_or(i.state = 'failed')
        LIMIT %s""", params + [limit])
    staged: dict[str, str] = {}
    to_preprocess: list[str] = []
    finished: dict[str, str] = {}
    failed: dict[State, dict[str, str]] = {State.READY: {}, State.POSTPROCESSED: {}}
    to_link = False
    for (job_id, direction, in_url, out_url, error, bad_slot, slots, files, count, pre,
         links) in cursor.fetchall():
        job_id = str(job_id)
        if error is not None and bad_slot:
            error = f"slot {bad_slot!r}: {error}"
        if direction == "in":
            if error is not None:
                failed[State.READY][job_id] = f"stage-in failed: {error}"
            elif not links:
                staged[job_id] = f"staged in {files} item(s){_origin('from', in_url, slots)}"
                if not pre:
                    to_preprocess.append(job_id)
            else:  # a transition worker links its input files (worker.STEP_CONDITIONS)
                to_link = True
        elif error is not None:
            failed[State.POSTPROCESSED][job_id] = f"stage-out failed: {error}"
        else:
            finished[job_id] = f"staged out {count} file(s){_origin('to', out_url, slots)}"
    t = lifecycle.transition
    moved_in = {j for j, _ in t(cursor, list(staged), State.STAGED_IN, staged,
                                sources=[State.READY.value])}
    t(cursor, [j for j in to_preprocess if j in moved_in], State.PREPROCESSED,
      "nothing to preprocess: ready to run", sources=[State.STAGED_IN.value])
    done = t(cursor, list(finished), State.JOB_FINISHED, finished,
             sources=[State.POSTPROCESSED.value])
    bad = sum(len(t(cursor, list(msgs), State.FAILED, msgs, sources=[source.value]))
              for source, msgs in failed.items())
    if to_link:  # claimable by a transition worker now: wake the workers
        cursor.execute("SELECT pg_notify(%s, '')", [defaults.PROCESSING_NOTIFY_CHANNEL])
    return {"staged_in": len(moved_in), "staged_out": len(done), "failed": bad}


RETRY_MARGIN_SECONDS = 0.05
"""Added to :func:`retry_in`: the claim's clock (the transaction's start) must have passed
the item's ``not_before`` when the worker looks."""


def retry_in(cursor: Cursor, wf_filter: Optional[str]) -> Optional[float]:
    """Seconds until the first pending item waiting out its back-off (``not_before``) may be
    claimed (:func:`.items.claim_batches`' conditions: its job in the state it serves, in the
    workflow filter); None: no item waits. One statement over the pending items."""
    params: list[Any] = []
    wf = wf_clause(wf_filter, params)
    cursor.execute(f"""
        SELECT EXTRACT(EPOCH FROM min(i.not_before) - clock_timestamp())
        FROM {ITEM} i JOIN {JOB} j ON j.job_id = i.job_id
        WHERE i.state = 'pending' AND i.not_before > clock_timestamp()
          AND j.state = CASE i.direction WHEN 'in' THEN {STAGE_IN_SQL}
                                         ELSE {STAGE_OUT_SQL} END{wf}""", params)
    row = cursor.fetchone()
    if row is None or row[0] is None:
        return None
    return max(0.0, float(row[0])) + RETRY_MARGIN_SECONDS


def _origin(word: str, url: str, slots: Optional[str]) -> str:
    """`` from URL``, `` from URL and slot(s) a, b`` or `` for slot(s) a, b``."""
    named = f"slot(s) {slots}" if slots else ""
    if url and named:
        return f" {word} {url} and {named}"
    return f" {word} {url}" if url else f" for {named}" if named else ""
