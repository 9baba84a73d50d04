"""IBM ``jsrun`` (LSF CORAL systems such as Summit): one resource set per rank.

``jsrun -n N -a 1 -c C -g G -r P -b none|packed:1|packed:C [-E VAR=VAL ...] [mpi_flags]
app...``. jsrun takes no host list: it places resource sets on the allocation's free
resources (its daemons know what concurrent jsruns hold), so ``spec.hosts`` only fixes the
node count through ``-r`` (P resource sets per host, hence N/P hosts). SMT depth is chosen at
submission (``bsub -alloc_flags smtJ``), so ``threads_per_core`` only shapes C.
"""
from __future__ import annotations

from typing import Optional

from balsam.platform.mpi.base import RunSpec

NAME = "jsrun"
EXECUTABLE = "jsrun"
RANK_VARIABLE, SIZE_VARIABLE = "JSM_NAMESPACE_RANK", "JSM_NAMESPACE_SIZE"
"""Rank and size in jsrun's namespace (the launch), set in each rank's environment:
:mod:`balsam.platform.mpi.ensemble` reads them (the rank known before ``MPI_Init``)."""


def bind(spec: RunSpec) -> str:
    """jsrun's ``-b`` value for the spec's affinity."""
    if spec.cpu_affinity == "depth":
        return f"packed:{spec.cores_per_rank}"
    return "packed:1" if spec.cpu_affinity == "core" else "none"


def argv(spec: RunSpec, executable: Optional[str] = None) -> list[str]:
    """The ``jsrun`` command line running ``spec`` on ``len(spec.hosts)`` free hosts."""
    cmd = [executable or EXECUTABLE, "-n", str(spec.ranks), "-a", "1",
           "-c", str(spec.cores_per_rank), "-g", str(spec.gpus_per_rank),
           "-r", str(spec.ranks_per_node), "-b", bind(spec)]
    for name, value in spec.env.items():
        cmd += ["-E", f"{name}={value}"]
    return cmd + spec.extra_flags + spec.argv
