"""Cray ALPS ``aprun`` (Theta and other XC systems).

``aprun -n N -N P -L nid1,nid2 -cc none|cpu|depth -d T -j J [-e VAR=VAL ...] [mpi_flags]
app...``. ``-L`` takes numeric node ids, read from ``nidNNNNN`` host names (or bare numbers).
``-d`` reserves T CPUs per rank and ``-j`` uses J hardware threads per core. ALPS has no GPU flag.
"""
from __future__ import annotations

import re
from typing import Optional

from balsam.platform.mpi.base import RunSpec, RunSpecError

NAME = "aprun"
EXECUTABLE = "aprun"
RANK_VARIABLE, SIZE_VARIABLE = "ALPS_APP_PE", ""
"""The PE number, set by ALPS in each PE's environment (ALPS exports no PE count):
:mod:`balsam.platform.mpi.ensemble` reads it (the rank known before ``MPI_Init``)."""
CPU_BINDING = {"none": "none", "core": "cpu", "depth": "depth"}


def node_id(host: str) -> str:
    """``nid00012`` -> ``12``; other names raise :class:`RunSpecError`."""
    match = re.fullmatch(r"(?:nid)?0*([0-9]+)", host)
    if not match:
        raise RunSpecError(f"aprun needs Cray node names like nid00012, not {host!r}")
    return match.group(1)


def argv(spec: RunSpec, executable: Optional[str] = None) -> list[str]:
    """The ``aprun`` command line running ``spec`` on exactly ``spec.hosts``."""
    cmd = [executable or EXECUTABLE, "-n", str(spec.ranks), "-N", str(spec.ranks_per_node),
           "-L", ",".join(node_id(host) for host in spec.hosts),
           "-cc", CPU_BINDING[spec.cpu_affinity],
           "-d", str(spec.threads_per_rank), "-j", str(spec.threads_per_core)]
    for name, value in spec.env.items():
        cmd += ["-e", f"{name}={value}"]
    return cmd + spec.extra_flags + spec.argv
