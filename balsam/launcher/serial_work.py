"""What a serial-mode worker rank is sent and talks through: :class:`Work` (one task, as the
master sends it) and :class:`Channel` (the worker's link to the master). The orders and reports
themselves are described in :mod:`balsam.launcher.serial_worker`."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Protocol

from balsam.core.payloads import TaskRow


class Work(NamedTuple):
    """One task, as the master sends it: ``env`` holds only the job's own variables."""

    job_id: str
    argv: list[str]
    envscript: Optional[str]
    env: dict[str, str]
    workdir: str
    output_path: str
    packing: int
    required_cores: int
    row: Optional[TaskRow] = None
    """A function task's job fields and arguments, read by the master with its claim (a warm
    worker then needs no database; :mod:`balsam.core.payloads`), or None."""


def node_share(packing: int, gpus: int) -> float:
    """The part of a node one task of packing count ``packing`` takes in the master's measure
    (its loads, a ``recall``'s worth): 1/packing, or with ``gpus`` (one GPU per task) at least
    1/gpus (:meth:`balsam.launcher.serial_claims.MasterClaims._slots`)."""
    per_node = max(1, int(packing))
    return 1.0 / (min(per_node, gpus) if gpus else per_node)


def task_env(work: Work, gpu: Optional[int]) -> dict[str, str]:
    """The job's own variables, put on top of the base environment (a warm task's: of the
    pool's), with the task's GPU if it has one."""
    env = dict(work.env)
    if gpu is not None:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


class Channel(Protocol):
    """The worker's link to the master: ``send`` never blocks, ``receive`` returns None when
    no order is waiting."""

    def send(self, message: dict[str, Any]) -> None: ...

    def receive(self) -> Optional[dict[str, Any]]: ...
