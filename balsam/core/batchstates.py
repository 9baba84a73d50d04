"""The states of our batch-job records (``core_queuedlaunch`` rows) and their transitions, as data.

The service writes ``pending-submission`` (planned), ``submitting`` (the scheduler is being
called: a crash here is reconciled by job name, never resubmitted), ``submitted``,
``submit-failed`` (final, with the reason in ``message``), then the scheduler's normalised state
(:data:`balsam.platform.schedulers.STATES`, raw word in ``raw_state``) until a final one. A user
may ask for any unfinished row to be cancelled (``pending-deletion``, written by
``balsam.api.BatchJob``): the service cancels the job with the scheduler and keeps that state
until the scheduler reports a final one. :data:`ROW_TRANSITIONS` is who moves a row where;
``tests/test_routing.py`` checks it is closed over :data:`ROW_STATES`.

Like :mod:`balsam.core.states`, this module imports no Django (only :mod:`balsam.platform`).
"""
from __future__ import annotations

from balsam.platform.schedulers import FINAL_STATES, STATES

PENDING = "pending-submission"
SUBMITTING = "submitting"
SUBMITTED = "submitted"
SUBMIT_FAILED = "submit-failed"
PENDING_DELETION = "pending-deletion"
CANCEL_SENT = "CANCEL_SENT"
"""``raw_state`` of a ``pending-deletion`` row once the scheduler was asked to cancel it."""

SCHEDULER_STATES: frozenset[str] = frozenset(STATES)
"""The scheduler's normalised states (:mod:`balsam.platform.schedulers`)."""
FINAL_ROW_STATES: frozenset[str] = frozenset(FINAL_STATES | {SUBMIT_FAILED})
"""Rows in these states hold no allocation and never change again."""
RUNNING_ROW_STATES: frozenset[str] = frozenset({"running", "finishing"})
"""Rows holding an allocation now; every other non-final row waits for one."""
ROW_STATES: frozenset[str] = frozenset(
    {PENDING, SUBMITTING, SUBMITTED, SUBMIT_FAILED, PENDING_DELETION} | SCHEDULER_STATES)
"""Every state a row may be in."""

_UNFINISHED_SCHEDULER = SCHEDULER_STATES - FINAL_STATES

ROW_TRANSITIONS: dict[str, frozenset[str]] = {
    # the submitter claims a due row (service/submitter.py); a user cancels it (api/batchjobs.py)
    PENDING: frozenset({SUBMITTING, PENDING_DELETION}),
    # the submission's outcome: accepted, failed for good, to retry, or (reconciled by job name
    # after a crash) the scheduler's state; a cancel request made meanwhile stays
    SUBMITTING: frozenset({SUBMITTED, SUBMIT_FAILED, PENDING, PENDING_DELETION})
    | SCHEDULER_STATES,
    # the scheduler's state as the status sync reads it (service/sync.py)
    SUBMITTED: SCHEDULER_STATES | {PENDING_DELETION},
    **{s: SCHEDULER_STATES | {PENDING_DELETION} for s in _UNFINISHED_SCHEDULER},
    # cancelled before submission, or the scheduler's final state once the cancelled job ended
    PENDING_DELETION: frozenset(FINAL_STATES),
    **{s: frozenset() for s in FINAL_ROW_STATES},
}
"""Which state a row may move to from each (the writers: submitter, status sync, cancel)."""
