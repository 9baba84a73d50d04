"""Queue policies and the states of our batch-job records (``core_queuedlaunch`` rows).

A :class:`QueuePolicy` is one entry of ``queues:`` in the DB's ``settings.yml`` (validated by
:func:`balsam.platform.machines.validate_queues`, whose key meanings it shares): the node and
walltime range of one batch job, how many may wait (``max_queued``) and run (``max_running``)
at once, and a cap on the nodes of all our unfinished batch jobs in that queue.

Row states and their transitions are declared in :mod:`balsam.core.batchstates` (re-exported
here for the service's modules).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from balsam.core import batchstates
from balsam.errors import BalsamError
from balsam.platform import machines

# The row states, declared with their transitions in balsam.core.batchstates.
PENDING, SUBMITTING, SUBMITTED = batchstates.PENDING, batchstates.SUBMITTING, batchstates.SUBMITTED
SUBMIT_FAILED, PENDING_DELETION = batchstates.SUBMIT_FAILED, batchstates.PENDING_DELETION
CANCEL_SENT = batchstates.CANCEL_SENT
FINAL_ROW_STATES = batchstates.FINAL_ROW_STATES
RUNNING_ROW_STATES = batchstates.RUNNING_ROW_STATES


@dataclass(frozen=True)
class QueuePolicy(machines.QueuePolicy):
    """The limits of one queue (:class:`balsam.platform.machines.QueuePolicy`, see the module
    docstring) with the queue's ``name``."""

    name: str = ""

    def batch_minutes(self, needed_minutes: float) -> int:
        """The shortest walltime in this queue's range whose launcher time limit
        (:func:`balsam.platform.machines.launcher_minutes`) is at least ``needed_minutes``;
        ``max_minutes`` if none is."""
        minutes = max(self.min_minutes, math.ceil(needed_minutes))
        while minutes < self.max_minutes and machines.launcher_minutes(minutes) < needed_minutes:
            minutes += 1
        return min(minutes, self.max_minutes)

    def usable_seconds(self) -> int:
        """The longest job (seconds) a batch job of ``max_minutes`` can run to the end."""
        return int(machines.launcher_minutes(self.max_minutes) * 60)


def load_policies(settings: dict[str, Any]) -> list[QueuePolicy]:
    """The queue policies of ``settings["queues"]`` in file order, disabled queues
    (``max_queued`` 0) left out. A malformed entry raises a one-line :class:`BalsamError`
    naming the key (e.g. ``settings.yml: `queues.debug`: missing key `max_nodes```)."""
    raw = settings.get("queues")
    try:
        checked = machines.validate_queues(raw, "settings.yml")
    except machines.MachineError as exc:
        raise BalsamError(str(exc)) from None
    return [QueuePolicy(name=name, **asdict(p)) for name, p in checked.items() if p.max_queued > 0]
