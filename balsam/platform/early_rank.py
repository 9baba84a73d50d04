"""A rank's rank before ``MPI_Init``, trusted only when it comes from this ensemble's launch.

The launcher starts the ensemble's program (:mod:`balsam.platform.mpi.ensemble`) with
:func:`ensemble_environ`: without the variables that program sets for each rank (so a value
inherited from an enclosing launch -- ``SLURM_PROCID=0`` in a batch script, an outer
``mpiexec``'s ``PMI_RANK`` -- never reaches a rank) and with a random id of this launch, which
the ranks also get in their command line. :func:`rank_announced` reads the rank only when both
ids match, so a guess is either the program's own or none (the rank learns it from MPI).
Imported by every rank before MPI: standard library only, and outside :mod:`balsam.platform.mpi`
(whose package imports the flavours' dataclasses, ~1 ms of every rank's start).
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Optional

LAUNCH_ID = "BALSAM_LAUNCHER_INTERNAL_ENSEMBLE"
"""The variable holding the random id of one ensemble launch (kept from tasks with the other
``BALSAM_LAUNCHER_INTERNAL_`` variables, :data:`balsam.core.jobenv.LAUNCHER_ONLY_PREFIXES`)."""


def ensemble_environ(environ: Mapping[str, str], evidence: Mapping[str, str],
                     mpi_env: Mapping[str, str] = MappingProxyType({})) -> dict[str, str]:
    """The environment to start the ensemble's program with: ``environ`` without the rank and
    size variables of ``evidence`` (:func:`balsam.platform.mpi.ensemble.rank_evidence`) -- a
    value a rank then sees was set by that program -- and with this launch's id, plus
    ``mpi_env``, the ensemble's own MPI settings
    (:func:`balsam.platform.mpi.ensemble.ensemble_mpi_environ`; its worker ranks keep them from
    their tasks)."""
    dropped = (evidence.get("rank"), evidence.get("size"))
    env = {name: value for name, value in environ.items() if name not in dropped}
    if evidence:
        env[LAUNCH_ID] = evidence["id"]
    env.update(mpi_env)
    return env


def rank_announced(environ: Mapping[str, str], evidence: Mapping[str, str],
                   ranks: int) -> Optional[int]:
    """This rank's rank as the ensemble's program announced it before ``MPI_Init``: the value of
    ``evidence``'s rank variable when the environment carries this launch's id (it came
    through :func:`ensemble_environ`), the value is below ``ranks`` and the size variable, if
    the program has one, says ``ranks``; otherwise None (the rank learns it from MPI)."""
    if not evidence.get("id") or environ.get(LAUNCH_ID) != evidence["id"]:
        return None
    value = environ.get(evidence.get("rank", ""), "")
    if not (value.isdigit() and int(value) < ranks):
        return None
    size = evidence.get("size")
    return int(value) if not size or environ.get(size) == str(ranks) else None
