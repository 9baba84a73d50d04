"""HPE Cray PALS ``mpiexec`` (Polaris and other PBS + Cray EX / Apollo systems).

``mpiexec -n N --ppn P --hosts h1,h2 --depth D --cpu-bind none|core|depth [--env VAR=VAL ...]
[mpi_flags] app...``. ``--depth`` reserves D CPUs (hardware threads) per rank, counted like
srun's ``--cpus-per-task``: the rank's cores times ``threads_per_core``. PALS has no per-rank
GPU flag (ALCF's ``set_affinity_gpu_polaris.sh`` wrapper sets ``CUDA_VISIBLE_DEVICES``): the
caller sets it. Not Hydra: the flags are long options with two dashes.
"""
from __future__ import annotations

from typing import Optional

from balsam.platform.mpi.base import RunSpec

NAME = "pals"
EXECUTABLE = "mpiexec"
RANK_VARIABLE, SIZE_VARIABLE = "PALS_RANKID", ""
"""PALS's rank id in each rank's environment (no count: only the rank is read):
:mod:`balsam.platform.mpi.ensemble` reads it (the rank known before ``MPI_Init``)."""
CPU_BINDING = {"none": "none", "core": "core", "depth": "depth"}


def argv(spec: RunSpec, executable: Optional[str] = None) -> list[str]:
    """The PALS ``mpiexec`` command line running ``spec`` on exactly ``spec.hosts``."""
    cmd = [executable or EXECUTABLE, "-n", str(spec.ranks), "--ppn", str(spec.ranks_per_node),
           "--hosts", ",".join(spec.hosts),
           "--depth", str(spec.cores_per_rank * spec.threads_per_core),
           "--cpu-bind", CPU_BINDING[spec.cpu_affinity]]
    for name, value in spec.env.items():
        cmd += ["--env", f"{name}={value}"]
    return cmd + spec.extra_flags + spec.argv
