"""The states of our batch-job records (``core_queuedlaunch`` rows) and their transitions, as data.

The service writes ``pending-submission`` (planned), ``submitting`` (the scheduler is being
called: a crash here is reconciled by job name, never resubmitted), ``submitted``,
``submit-failed`` (final, with the reason in ``message``), then the scheduler's normalised state
(:data:`balsam.platform.schedulers.STATES`, raw word in ``raw_state``) until a final one. A user
may ask for any unfinished row to be cancelled (``pending-deletion``, written by
``balsam.api.BatchJob``): the service cancels the job with the scheduler and keeps that state
until the scheduler reports a final one. :data:`ROW_TRANSITIONS` is who moves a row where;
``tests/test_routing.py`` checks it is closed over :data:`ROW_STATES`. Rows are created
:data:`PENDING`; every later write of a row's state goes through
:mod:`balsam.core.batchrows`, which refuses a move this table does not allow
(:func:`check_move`).

Like :mod:`balsam.core.states`, this module imports no Django (only :mod:`balsam.platform`).
"""
from __future__ import annotations

from balsam.errors import BalsamError
from balsam.platform.schedulers import FINAL_STATES, STATES

PENDING = "pending-submission"
SUBMITTING = "submitting"
SUBMITTED = "submitted"
SUBMIT_FAILED = "submit-failed"
PENDING_DELETION = "pending-deletion"
CANCEL_SENT = "CANCEL_SENT"
"""``raw_state`` of a ``pending-deletion`` row once the scheduler was asked to cancel it."""
IN_FLIGHT = "SUBMIT_IN_FLIGHT"
"""``raw_state`` of a row from the submitter's claim until the submission's outcome is recorded
(also once a user asked for its cancel meanwhile): the scheduler may be accepting the job right
now, so the cancel waits for its id; never "cancelled before submission"."""
FINISHED, CANCELLED = "finished", "cancelled"
"""Two of the scheduler's final states the service writes itself: a job the scheduler no longer
lists, a cancel request for a row never submitted."""
assert {FINISHED, CANCELLED} <= FINAL_STATES

SCHEDULER_STATES: frozenset[str] = frozenset(STATES)
"""The scheduler's normalised states (:mod:`balsam.platform.schedulers`)."""
FINAL_ROW_STATES: frozenset[str] = frozenset(FINAL_STATES | {SUBMIT_FAILED})
"""Rows in these states hold no allocation and never change again."""
FINAL_ROW_ORDER: tuple[str, ...] = (*(s for s in STATES if s in FINAL_STATES), SUBMIT_FAILED)
""":data:`FINAL_ROW_STATES` in a fixed order (for SQL lists): the scheduler's, then ours."""
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


class BatchStateError(BalsamError, ValueError):
    """A batch-job row move :data:`ROW_TRANSITIONS` does not allow, or an unknown row state."""


def check_move(src: str, dst: str) -> None:
    """Raise :class:`BatchStateError` unless a row in ``src`` may be written ``dst``.

    Writing a row's own state again (``dst == src``, other columns changing) is no move and is
    allowed for an unfinished row: the sync rewrites ``queued`` with a new ``minutes_left``, a
    cancel request keeps ``pending-deletion`` while the scheduler is asked."""
    if dst not in ROW_STATES:
        raise BatchStateError(f"unknown batch-job state {dst!r} (one of {', '.join(sorted(ROW_STATES))})")
    if src not in ROW_STATES:
        raise BatchStateError(f"batch-job row in unknown state {src!r}")
    if dst in ROW_TRANSITIONS[src] or (dst == src and src not in FINAL_ROW_STATES):
        return
    raise BatchStateError(f"a batch job may not move from {src} to {dst}")


def sources(dst: str) -> frozenset[str]:
    """The row states from which a row may move to ``dst`` (:data:`ROW_TRANSITIONS`)."""
    return frozenset(src for src, dsts in ROW_TRANSITIONS.items() if dst in dsts)
