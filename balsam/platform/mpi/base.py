"""What every MPI flavour shares: :class:`RunSpec`, :class:`RunSpecError`, the :class:`Flavour`
protocol and the flavour names (re-exported by the package, where
:func:`balsam.platform.mpi.get` loads the flavours, which import this module and never the package
that loads them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

from balsam.errors import BalsamError

FLAVOURS = ("mpich", "openmpi", "srun", "aprun", "jsrun", "pals", "direct")
"""Valid names for the ``mpi_flavour`` setting, one module each in this package."""
AFFINITIES = ("none", "core", "depth")


class RunSpecError(BalsamError):
    """A run spec that a flavour cannot express, or an unknown flavour name."""


@dataclass
class RunSpec:
    """One launch: the application ``argv`` run as ``ranks`` ranks, ``ranks_per_node`` per host.

    ``hosts`` has one entry per node used (real host names; repeats allowed for emulated local
    nodes). ``cpu_affinity``: ``none`` leaves ranks unbound; ``core`` binds each rank to one
    core; ``depth`` binds each rank to :attr:`cores_per_rank` cores (Cray ``-cc depth -d T -j
    J``), so its ``threads_per_rank`` threads stay on its own cores, ``threads_per_core`` per
    core. ``env`` holds variables to pass with the launcher's own flag (most callers pass the
    process environment instead and leave it empty). ``extra_flags`` are the job's
    ``mpi_flags``, already split. Construction checks the numbers (:class:`RunSpecError`).
    """

    argv: list[str]
    ranks: int
    ranks_per_node: int
    hosts: list[str]
    threads_per_rank: int = 1
    threads_per_core: int = 1
    cpu_affinity: str = "none"
    gpus_per_rank: int = 0
    env: dict[str, str] = field(default_factory=dict)
    extra_flags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.argv:
            raise RunSpecError("a run spec needs an application command")
        if min(self.ranks, self.ranks_per_node, self.threads_per_rank, self.threads_per_core) < 1 \
                or self.gpus_per_rank < 0:
            raise RunSpecError("ranks, ranks_per_node, threads_per_rank and threads_per_core must "
                               "be >= 1 and gpus_per_rank >= 0")
        if self.cpu_affinity not in AFFINITIES:
            raise RunSpecError(f"unknown cpu_affinity {self.cpu_affinity!r} (one of "
                               f"{', '.join(AFFINITIES)})")
        if not self.hosts or len(self.hosts) * self.ranks_per_node < self.ranks:
            raise RunSpecError(f"{self.ranks} ranks at {self.ranks_per_node} per node need "
                               f"{-(-self.ranks // self.ranks_per_node)} host(s), got "
                               f"{len(self.hosts)}")
        if any(not name or "=" in name for name in self.env):
            raise RunSpecError(f"bad environment variable name in {sorted(self.env)}")

    @property
    def num_nodes(self) -> int:
        """Number of nodes (entries of ``hosts``)."""
        return len(self.hosts)

    @property
    def cores_per_rank(self) -> int:
        """Whole cores one rank's threads need: ceil(threads_per_rank / threads_per_core)."""
        return -(-self.threads_per_rank // self.threads_per_core)


class Flavour(Protocol):
    """What every flavour module provides."""

    NAME: str
    EXECUTABLE: str
    RANK_VARIABLE: str
    """The variable where the launcher puts each rank's number before MPI starts ("": none)."""
    SIZE_VARIABLE: str
    """The one holding the launch's rank count ("": none that is reliable)."""

    def argv(self, spec: RunSpec, executable: Optional[str] = None) -> list[str]:
        """The full command line running ``spec``; ``executable`` replaces ``EXECUTABLE``."""
        ...
