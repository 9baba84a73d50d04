"""No MPI launcher: the application argv itself, for single-rank tasks on the local node.

There is no wrapper to carry variables or flags, so a spec with more than one rank, with
``env`` or with ``extra_flags`` raises :class:`RunSpecError`; the caller sets variables in the
process environment.
"""
from __future__ import annotations

from typing import Optional

from balsam.platform.mpi.base import RunSpec, RunSpecError

NAME = "direct"
EXECUTABLE = ""
"""No launcher program; ``executable`` is ignored."""
RANK_VARIABLE, SIZE_VARIABLE = "", ""
"""None: no launcher, no ranks."""


def argv(spec: RunSpec, executable: Optional[str] = None) -> list[str]:
    """``spec.argv`` unchanged (a copy); refuses what it cannot express."""
    if spec.ranks != 1:
        raise RunSpecError(f"the direct flavour runs 1 rank, not {spec.ranks}: choose an MPI "
                           "flavour in settings.yml")
    if spec.env:
        raise RunSpecError("the direct flavour cannot pass variables; set them in the "
                           "process environment")
    if spec.extra_flags:
        raise RunSpecError(f"the direct flavour has no launcher for mpi_flags "
                           f"{' '.join(spec.extra_flags)!r}")
    return list(spec.argv)
