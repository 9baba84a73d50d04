"""MPICH's Hydra ``mpiexec`` (also Intel MPI and MVAPICH, which share its flags).

``mpiexec -n N -ppn P -hosts h1,h2 -bind-to none|core|core:C [-gpus-per-proc G]
[-genv VAR VAL ...] [mpi_flags] app...``. ``-bind-to core:C`` gives each rank C whole cores
(``depth``). ``-gpus-per-proc`` (Hydra >= 4.0) sets each rank's visible GPUs.
"""
from __future__ import annotations

from typing import Optional

from balsam.platform.mpi.base import RunSpec

NAME = "mpich"
EXECUTABLE = "mpiexec"
RANK_VARIABLE, SIZE_VARIABLE = "PMI_RANK", "PMI_SIZE"
"""Hydra (also Intel MPI's) sets ``PMI_RANK`` and ``PMI_SIZE`` in each rank's environment before
it runs: :mod:`balsam.platform.mpi.ensemble` reads them (the rank known before ``MPI_Init``)."""


def bind_to(spec: RunSpec) -> str:
    """Hydra's ``-bind-to`` value for the spec's affinity."""
    if spec.cpu_affinity == "depth":
        return f"core:{spec.cores_per_rank}"
    return "core" if spec.cpu_affinity == "core" else "none"


def argv(spec: RunSpec, executable: Optional[str] = None) -> list[str]:
    """The ``mpiexec`` command line running ``spec`` on exactly ``spec.hosts``."""
    cmd = [executable or EXECUTABLE, "-n", str(spec.ranks), "-ppn", str(spec.ranks_per_node),
           "-hosts", ",".join(spec.hosts), "-bind-to", bind_to(spec)]
    if spec.gpus_per_rank:
        cmd += ["-gpus-per-proc", str(spec.gpus_per_rank)]
    for name, value in spec.env.items():
        cmd += ["-genv", name, value]
    return cmd + spec.extra_flags + spec.argv
