"""MPI flavours: one small module each that turns a :class:`RunSpec` into a launcher argv.

Every flavour module has ``NAME``, ``EXECUTABLE`` (the launcher program it runs by default),
``RANK_VARIABLE`` and ``SIZE_VARIABLE`` (where that program tells each rank its number and the
rank count before MPI starts) and ``argv(spec, executable=None) -> list[str]``. The job's
``extra_flags`` (its ``mpi_flags``) come right before the application argv. Quoting is the
caller's job: the result is an argv list.
Flavour modules are imported only by :func:`get`, so importing this package loads none of them.
"""
from __future__ import annotations

import importlib
from typing import cast

from balsam.platform.mpi.base import (  # noqa: F401  (the package's public names)
    AFFINITIES,
    FLAVOURS,
    Flavour,
    RunSpec,
    RunSpecError,
)

__all__ = ["AFFINITIES", "FLAVOURS", "Flavour", "RunSpec", "RunSpecError", "get"]


def get(name: str) -> Flavour:
    """The flavour module called ``name``; unknown names raise :class:`RunSpecError`."""
    if name not in FLAVOURS:
        raise RunSpecError(f"unknown MPI flavour {name!r} (one of {', '.join(FLAVOURS)})")
    return cast(Flavour, importlib.import_module(f"{__name__}.{name}"))
