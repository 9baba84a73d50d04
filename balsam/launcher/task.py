"""What a claimed job runs: its command line, environment, working directory and output file.

Shared by MPI mode and serial mode. The task environment is the launcher's own, minus what only
the launcher should see (the MPI runtime's variables of the serial-mode ensemble, and PATH
entries a Balsam job script added: ``BALSAM_ORIGINAL_PATH`` restores the user's PATH), plus
the job's variables and the classic ``BALSAM_*`` ones.
"""
from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from balsam.core import schema
from balsam.core.jobenv import (  # noqa: F401  (re-exported: launcher code uses task.*)
    LAUNCHER_ONLY_PREFIXES,
    job_variables,
    task_environment,
    with_envscript,
)
from balsam.core.payloads import TaskRow
from balsam.errors import BalsamError

__all__ = ["LAUNCHER_ONLY_PREFIXES", "TaskSpec", "from_row", "job_variables", "task_environment",
           "with_envscript"]


@dataclass
class TaskSpec:
    """Everything needed to start one job, built from its claimed row (:func:`from_row`)."""

    job_id: str
    name: str
    workdir: str
    command: str
    envscript: Optional[str]
    env: dict[str, str]
    num_nodes: int = 1
    ranks_per_node: int = 1
    threads_per_rank: int = 1
    threads_per_core: int = 1
    cpu_affinity: str = "none"
    node_packing_count: int = 1
    wall_time_minutes: int = 1
    mpi_flags: list[str] = field(default_factory=list)
    pyfunc_row: Optional[TaskRow] = None
    """A Python-function task's job fields and arguments, read with the claim in serial mode
    (:meth:`balsam.launcher.job_source.JobSource.specs_in`) for a warm worker, or None."""

    @property
    def output_path(self) -> str:
        return os.path.join(self.workdir, f"{self.name.replace(os.sep, '_') or 'job'}.out")

    @functools.cached_property
    def app_argv(self) -> list[str]:
        """The application command as an argv list (shell-style splitting of ``command``;
        split once: the claim checks it and the master sends it)."""
        try:
            return list(_split_command(self.command))
        except ValueError as exc:
            raise BalsamError(f"cannot parse the command of job {self.job_id[:8]}: {exc}")

    @property
    def required_cores(self) -> int:
        return max(1, self.ranks_per_node * self.threads_per_rank // self.threads_per_core)


@functools.lru_cache(maxsize=1024)
def _split_command(command: str) -> tuple[str, ...]:
    """``shlex.split(command)``, remembered: jobs of one app often share their command line
    (every Python-function task has the same one), and shlex costs ~0.1-0.3 ms a command in
    the serial master's claim."""
    return tuple(shlex.split(command))


def from_row(row: Mapping[str, Any], app: Mapping[str, str], parents: Sequence[str], db_path: str,
             base_env: Mapping[str, str], launcher_nodes: int, job_mode: str) -> TaskSpec:
    """A :class:`TaskSpec` for a claimed job row (:data:`leases.CLAIM_COLUMNS`) and its app."""
    envscript = app.get("envscript") or None
    if envscript and not os.path.isfile(envscript):
        raise BalsamError(f"envscript {envscript} of application {app.get('name')!r} does not exist")
    job_vars = job_variables(row, parents, db_path, launcher_nodes, job_mode)
    job_vars["BALSAM_JOB_ATTEMPT"] = str(int(row.get("runs", 0)) + 1)  # 1 on the first run
    flags = row.get("mpi_flags", "")
    job_id = str(row["job_id"])
    return TaskSpec(
        job_id=job_id, name=row["name"],
        workdir=schema.working_directory(db_path, row["workflow"], row["name"], job_id,
                                         row.get("user_workdir", "")),
        command=schema.app_command(app["executable"], row.get("args", "")),
        envscript=envscript, env=task_environment(base_env, job_vars),
        num_nodes=row["num_nodes"], ranks_per_node=row["ranks_per_node"],
        threads_per_rank=row["threads_per_rank"], threads_per_core=row["threads_per_core"],
        cpu_affinity=row["cpu_affinity"], node_packing_count=row["node_packing_count"],
        wall_time_minutes=row["wall_time_minutes"], mpi_flags=shlex.split(flags) if flags else [],
    )
