"""The two dialects' names, as tables: the newer API's field and state names -> classic ones.

Everything the client side (:mod:`balsam.api`) translates is read from here, and
docs/user-guide.md shows the same tables. A name not listed is the same in both dialects.
"""
from __future__ import annotations

from typing import Optional

from balsam.core import batchstates
from balsam.core.states import InvalidStateError, State, validate_state
from balsam.errors import BalsamError

JOB_COLUMNS: dict[str, str] = {
    "id": "job_id",
    "app_name": "application",
    "parameters": "parameters",
    "tags": "tags",
    "data": "data",
    "num_nodes": "num_nodes",
    "ranks_per_node": "ranks_per_node",
    "threads_per_rank": "threads_per_rank",
    "node_packing_count": "node_packing_count",
    "wall_time_min": "wall_time_minutes",
    "gpus_per_rank": "gpus_per_rank",
    "state": "state",
}
"""Job fields stored in a classic column of the same meaning (newer name -> column)."""

LAUNCH_PARAMS: dict[str, str] = {
    "mpi_flags": "mpi_flags",
    "cpu_affinity": "cpu_affinity",
    "threads_per_core": "threads_per_core",
}
"""``launch_params`` keys -> classic columns."""

WRITE_STATES: dict[str, str] = {
    "STAGED_OUT": State.JOB_FINISHED.value,
    "RESET": State.CREATED.value,
}
"""Newer state names a user or hook may assign that classic Balsam spells differently. Every
other newer state name is a classic one (CREATED ... JOB_FINISHED, RUN_ERROR, RUN_TIMEOUT,
RESTART_READY, FAILED); USER_KILLED exists only in the classic dialect."""

BATCH_COLUMNS: dict[str, str] = {
    "id": "id",
    "num_nodes": "nodes",
    "wall_time_min": "wall_minutes",
    "job_mode": "job_mode",
    "project": "project",
    "queue": "queue",
    "optional_params": "sched_flags",
    "filter_tags": "filter_tags",
    "scheduler_id": "scheduler_id",
    "state": "state",
}
"""BatchJob fields -> ``core_queuedlaunch`` columns."""

BATCH_STATES: dict[str, str] = {
    batchstates.PENDING: "pending_submission",
    batchstates.SUBMITTING: "pending_submission",
    batchstates.SUBMITTED: "queued",
    "queued": "queued",
    "held": "queued",
    "running": "running",
    "finishing": "running",
    "finished": "finished",
    "failed": "finished",
    "cancelled": "finished",
    batchstates.PENDING_DELETION: "pending_deletion",
    batchstates.SUBMIT_FAILED: "submit_failed",
    "unknown": "unknown",
}
"""Classic batch-job row states -> the newer API's BatchJob states. A user writes only
``pending_deletion`` (cancel: the service then cancels the job with the scheduler)."""

JOB_MODES = ("mpi", "serial")


class TranslationError(BalsamError):
    """A newer-API value with no classic equivalent (an unknown field, state or parameter)."""


def classic_state(state: str) -> str:
    """The classic state for a newer (or classic) state name (:class:`TranslationError` for
    an unknown one)."""
    name = WRITE_STATES.get(str(state), str(state))
    try:
        return validate_state(name).value
    except InvalidStateError as exc:
        raise TranslationError(str(exc))


def batch_state(row_state: str) -> str:
    """The newer BatchJob state of a classic row state."""
    return BATCH_STATES.get(row_state, row_state)


def batch_row_states(state: str) -> list[str]:
    """The classic row states a newer BatchJob state covers (for filters)."""
    found = [k for k, v in BATCH_STATES.items() if v == state]
    if not found:
        raise TranslationError(f"unknown BatchJob state {state!r} (one of "
                               f"{', '.join(sorted(set(BATCH_STATES.values())))})")
    return found


def return_code(last_run_event: Optional[tuple[str, str]]) -> Optional[int]:
    """The exit code of a run from its last end event (to_state, message): 0 for RUN_DONE,
    the number after ``exit code`` for RUN_ERROR, None otherwise."""
    if last_run_event is None:
        return None
    state, message = last_run_event
    if state == State.RUN_DONE.value:
        return 0
    if state == State.RUN_ERROR.value and message.startswith("exit code "):
        word = message[len("exit code "):].split(":", 1)[0].split()[0]
        try:
            return int(word)
        except ValueError:
            return None
    return None
