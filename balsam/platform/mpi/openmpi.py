"""Open MPI's ``mpirun``.

``mpirun -n N --map-by ppr:P:node[:PE=C] --host h1:P,h2:P --bind-to none|core
[-x VAR=VAL ...] [mpi_flags] app...``. ``ppr`` (processes per resource) rather than
``--npernode``: the latter is deprecated in Open MPI 5 and cannot be combined with ``PE=C``, which
gives each rank C cores (``depth``). ``host:P`` declares P slots per host. Open MPI has no
per-rank GPU flag: the caller sets ``CUDA_VISIBLE_DEVICES``.
"""
from __future__ import annotations

from typing import Optional

from balsam.platform.mpi.base import RunSpec

NAME = "openmpi"
EXECUTABLE = "mpirun"
RANK_VARIABLE, SIZE_VARIABLE = "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"
"""``mpirun`` sets them in each rank's environment before it runs:
:mod:`balsam.platform.mpi.ensemble` reads them (the rank known before ``MPI_Init``)."""


def argv(spec: RunSpec, executable: Optional[str] = None) -> list[str]:
    """The ``mpirun`` command line running ``spec`` on exactly ``spec.hosts``."""
    ppn = spec.ranks_per_node
    mapping = f"ppr:{ppn}:node"
    if spec.cpu_affinity == "depth":
        mapping += f":PE={spec.cores_per_rank}"
    cmd = [executable or EXECUTABLE, "-n", str(spec.ranks), "--map-by", mapping,
           "--host", ",".join(f"{host}:{ppn}" for host in spec.hosts),
           "--bind-to", "none" if spec.cpu_affinity == "none" else "core"]
    for name, value in spec.env.items():
        cmd += ["-x", f"{name}={value}"]
    return cmd + spec.extra_flags + spec.argv
