"""The tables as plain data: their names, the job table's settable columns with their
defaults (in table order), the column groups and integer bounds, the app table's columns, and
the transfer tables' states.

Pure data (no Django, no checks; a state only as a :class:`State`): :mod:`balsam.core.schema`
re-exports every name and checks values against it; ``tests/test_schema_sync.py`` fails if it
drifts from the Django models.
"""
from __future__ import annotations

from typing import Any

from balsam.core.states import State

JOB_TABLE = "core_balsamjob"
APP_TABLE = "core_applicationdefinition"
EVENT_TABLE = "core_jobevent"
DEP_TABLE = "core_jobdependency"
QLAUNCH_TABLE = "core_queuedlaunch"
SESSION_TABLE = "core_launchersession"
WAKE_TABLE = "core_jobwake"
TRANSFER_ITEM_TABLE = "core_transferitem"
TRANSFER_BATCH_TABLE = "core_transferbatch"
TRANSFER_SLOT_TABLE = "core_jobtransferslot"
"""A site-API job's filled ``transfers`` slots (balsam.processing.transfers.slots)."""
TRANSFER_ITEM_STATES = ("pending", "active", "done", "failed")
"""A transfer item waits (``pending``, possibly until ``not_before``), is in a batch being sent
(``active``), arrived (``done``) or gave up after its attempts (``failed``)."""
TRANSFER_BATCH_STATES = ("active", "done", "failed", "lost")
"""A transfer batch is being sent (``active``), ended with every item sent (``done``), ended
with some item failed (``failed``), or its sender died and its items were sent again (``lost``)."""

# Settable job columns and their defaults, in table order (classic BalsamJob fields).
JOB_DEFAULTS: dict[str, Any] = {
    "workflow": "",
    "name": "",
    "description": "",
    "lock": "",
    "input_files": "",
    "stage_in_url": "",
    "stage_out_files": "",
    "stage_out_url": "",
    "wall_time_minutes": 1,
    "num_nodes": 1,
    "coschedule_num_nodes": 0,
    "ranks_per_node": 1,
    "cpu_affinity": "none",
    "threads_per_rank": 1,
    "threads_per_core": 1,
    "node_packing_count": 1,
    "environ_vars": "",
    "mpi_flags": "",
    "application": "",
    "args": "",
    "user_workdir": "",
    "wait_for_parents": True,
    "post_error_handler": False,
    "post_timeout_handler": False,
    "auto_timeout_retry": True,
    "state": State.CREATED.value,
    "data": {},
    "parameters": {},
    "tags": {},
    "max_retries": -1,
    "priority": 0,
    "gpus_per_rank": 0,
}

# Columns managed by Balsam, never given by a user when creating a job.
JOB_SYSTEM_COLUMNS = ("job_id", "created_at", "tick", "queued_launch_id")

# Columns written only by launcher leases (balsam.core.leases); NULL when a job is created.
JOB_LEASE_COLUMNS = ("session_id",)

# Columns written only by the state writer (balsam.core.lifecycle.transition); NULL when a job is
# created (``state_since`` NULL means: in its state since ``created_at``).
JOB_STATE_COLUMNS = ("state_since",)

INT_FIELDS = frozenset(k for k, v in JOB_DEFAULTS.items() if type(v) is int)
BOOL_FIELDS = frozenset(k for k, v in JOB_DEFAULTS.items() if type(v) is bool)
TEXT_FIELDS = frozenset(k for k, v in JOB_DEFAULTS.items() if type(v) is str)

POSITIVE_FIELDS = frozenset({
    "wall_time_minutes", "num_nodes", "ranks_per_node", "threads_per_rank",
    "threads_per_core", "node_packing_count",
})
"""Integer fields that must be >= 1 (the others >= 0, but see :data:`INT_LOWER_BOUNDS`)."""

INT_LOWER_BOUNDS = {"max_retries": -1, "priority": -(2**31)}  # -1: launcher.max_retries



def int_low(name: str) -> int:
    """The least value of integer field ``name``."""
    return 1 if name in POSITIVE_FIELDS else INT_LOWER_BOUNDS.get(name, 0)


APP_DEFAULTS: dict[str, str] = {
    "name": "",
    "description": "",
    "executable": "",
    "preprocess": "",
    "envscript": "",
    "postprocess": "",
    "parameters": "",
    "source_hash": "",
}
