"""Slurm's ``srun`` (a job step inside the allocation).

``srun -n N --ntasks-per-node P --nodes K --nodelist h1,h2 --cpu-bind none|cores
[--cpus-per-task C*J] [--threads-per-core J] [--gpus-per-task G] [--export ALL,VAR=VAL,...]
[mpi_flags] app...``. ``--cpus-per-task`` reserves whole cores for each rank's threads.
``--export`` separates variables with commas, so a value containing one cannot be passed.
"""
from __future__ import annotations

from typing import Optional

from balsam.platform.mpi.base import RunSpec, RunSpecError

NAME = "srun"
EXECUTABLE = "srun"
RANK_VARIABLE, SIZE_VARIABLE = "SLURM_PROCID", "SLURM_NTASKS"
"""The step's task number and task count, set by ``srun`` in each task's environment:
:mod:`balsam.platform.mpi.ensemble` reads them (the rank known before ``MPI_Init``)."""


def argv(spec: RunSpec, executable: Optional[str] = None) -> list[str]:
    """The ``srun`` command line running ``spec`` on exactly ``spec.hosts``."""
    cmd = [executable or EXECUTABLE, "-n", str(spec.ranks),
           "--ntasks-per-node", str(spec.ranks_per_node), "--nodes", str(spec.num_nodes),
           "--nodelist", ",".join(spec.hosts),
           "--cpu-bind", "none" if spec.cpu_affinity == "none" else "cores"]
    cpus_per_task = spec.cores_per_rank * spec.threads_per_core
    if cpus_per_task > 1:
        cmd += ["--cpus-per-task", str(cpus_per_task)]
    if spec.threads_per_core > 1:
        cmd += ["--threads-per-core", str(spec.threads_per_core)]
    if spec.gpus_per_rank:
        cmd += ["--gpus-per-task", str(spec.gpus_per_rank)]
    if spec.env:
        if any("," in value for value in spec.env.values()):
            raise RunSpecError("srun --export cannot pass a value containing ','; set it in the "
                               "process environment instead")
        cmd += ["--export", ",".join(["ALL"] + [f"{k}={v}" for k, v in spec.env.items()])]
    return cmd + spec.extra_flags + spec.argv
