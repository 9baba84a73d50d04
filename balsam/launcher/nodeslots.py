"""Node occupancy for serial mode: whether one more task fits on a node, its cores and its GPU.

A task of a job with ``node_packing_count`` k occupies exactly 1/k of its node (exact fractions,
so three tasks of 1/3 fill a node and a fourth never fits); the occupancy of a node never
exceeds 1.

Cores: a task gets ``max(required_cores, cores // k)`` CPUs (at least 1, at most all of the
node's), chosen among the least used ones, lowest index first. So as long as the tasks on a node
ask for no more cores than their share (``k <= cores`` and ``required_cores <= cores // k``),
concurrent tasks are pinned to disjoint cores; beyond that (more tasks than cores) cores are
shared as evenly as possible rather than making tasks wait.

GPUs: with ``gpus`` > 0 every task gets one GPU index of its own, the lowest free one; two
concurrent tasks never share a GPU, and a task waits (:meth:`NodeSlots.place` returns None)
while no GPU is free. (Classic Balsam used the task's position in a dict, which could repeat.)
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple, Optional


class Placement(NamedTuple):
    """Where a task runs on its node: the CPUs it is pinned to and its GPU (None: no GPUs)."""

    cpus: tuple[int, ...]
    gpu: Optional[int]


def share(packing_count: int) -> Fraction:
    """The fraction of a node one task of a job with ``packing_count`` occupies (counts < 1
    are treated as 1: a whole node)."""
    return Fraction(1, max(1, int(packing_count)))


class NodeSlots:
    """The tasks placed on one node: occupancy, per-CPU use counts and GPU owners.

    ``cpus`` are the CPU ids tasks may be pinned to (usually ``range(cores_per_node)``);
    ``gpus`` is the number of GPUs (0: no GPU assignment). Keys identify placed tasks (job ids).
    """

    def __init__(self, cpus: Sequence[int], gpus: int = 0) -> None:
        if not cpus:
            raise ValueError("a node needs at least one CPU")
        if gpus < 0:
            raise ValueError(f"gpus must be >= 0, not {gpus}")
        self.cpus = tuple(cpus)
        self.gpus = gpus
        # Occupancy in integer units of 1/_den of a node, _den the lcm of the packing counts
        # seen (exact like Fractions, ~10x cheaper per task: a worker places thousands a second)
        self._den = 1
        self._units = 0
        self._cpu_use = [0] * len(self.cpus)
        self._gpu_owner: list[Optional[str]] = [None] * gpus
        self._placed: dict[str, tuple[int, tuple[int, ...], Optional[int]]] = {}

    def __len__(self) -> int:
        """Number of tasks placed."""
        return len(self._placed)

    def __contains__(self, key: object) -> bool:
        return key in self._placed

    @property
    def occupancy(self) -> Fraction:
        """The fraction of the node its placed tasks occupy (0 to 1)."""
        return Fraction(self._units, self._den)

    @property
    def full(self) -> bool:
        """Whether the node's placed tasks occupy all of it (cheaper than :attr:`occupancy`)."""
        return self._units >= self._den

    def _count(self, packing_count: int) -> int:
        """``packing_count`` as a share's denominator (>= 1), ``_den`` made a multiple of it."""
        k = packing_count if packing_count >= 1 else 1
        if self._den % k:
            factor = math.lcm(self._den, k) // self._den
            self._den *= factor
            self._units *= factor
        return k

    def fits(self, packing_count: int) -> bool:
        """Whether a task with ``packing_count`` can be placed now (occupancy and a free GPU)."""
        k = self._count(int(packing_count))
        if self._units + self._den // k > self._den:
            return False
        return self.gpus == 0 or None in self._gpu_owner

    def place(self, key: str, packing_count: int, required_cores: int = 1) -> Optional[Placement]:
        """Place task ``key``; its :class:`Placement`, or None if it does not fit now.

        Raises ValueError if ``key`` is already placed.
        """
        if key in self._placed:
            raise ValueError(f"task {key} is already placed on this node")
        if not self.fits(packing_count):
            return None
        k = self._count(int(packing_count))
        count = min(len(self.cpus), max(1, int(required_cores), len(self.cpus) // k))
        indexes = self._least_used(count)
        for i in indexes:
            self._cpu_use[i] += 1
        gpu = None
        if self.gpus:
            gpu = self._gpu_owner.index(None)
            self._gpu_owner[gpu] = key
        self._units += self._den // k
        self._placed[key] = (k, indexes, gpu)
        return Placement(tuple(self.cpus[i] for i in indexes), gpu)

    def place_at(self, key: str, packing_count: int, required_cores: int = 1,
                 cpus: Optional[Sequence[int]] = None, gpu: Optional[int] = None
                 ) -> Optional[Placement]:
        """Place task ``key`` where it already runs: on ``cpus`` (CPU ids) and ``gpu`` (a task
        the launcher started itself and hands to a new ensemble: :mod:`balsam.launcher.warm_start`);
        as :meth:`place` without ``cpus`` or when one of them is not this node's. Occupancy
        counts as in :meth:`place`, never beyond a whole node."""
        if cpus is None or not set(cpus) <= set(self.cpus) or key in self._placed:
            return self.place(key, packing_count, required_cores)
        if not self.fits(packing_count) or (gpu is not None and not (
                0 <= gpu < self.gpus and self._gpu_owner[gpu] is None)):
            return None
        k = self._count(int(packing_count))
        indexes = tuple(self.cpus.index(c) for c in cpus)
        for i in indexes:
            self._cpu_use[i] += 1
        if gpu is not None:
            self._gpu_owner[gpu] = key
        self._units += self._den // k
        self._placed[key] = (k, indexes, gpu)
        return Placement(tuple(cpus), gpu)

    def free(self, key: str) -> None:
        """Remove task ``key`` (unknown keys are ignored: freeing is idempotent)."""
        entry = self._placed.pop(key, None)
        if entry is None:
            return
        k, indexes, gpu = entry
        self._units -= self._den // k
        for i in indexes:
            self._cpu_use[i] -= 1
        if gpu is not None:
            self._gpu_owner[gpu] = None

    def placement_for(self, key: str, packing_count: int,
                      required_cores: int = 1) -> Optional[Placement]:
        """The :class:`Placement` of task ``key`` if a task of ``packing_count`` and
        ``required_cores`` would take exactly its place (same share, as many CPUs) when ``key``
        leaves (:meth:`hand_over`); None if not, or ``key`` is not placed."""
        entry = self._placed.get(key)
        if entry is None:
            return None
        k, indexes, gpu = entry
        if self._count(int(packing_count)) != k or len(indexes) != min(
                len(self.cpus), max(1, int(required_cores), len(self.cpus) // k)):
            return None
        return Placement(tuple(self.cpus[i] for i in indexes), gpu)

    def hand_over(self, key: str, new_key: str) -> None:
        """Task ``new_key`` takes the place of ``key`` (its share, CPUs and GPU) as ``key``
        leaves (a function task that begins in the warm process of the one that ended)."""
        if new_key in self._placed:
            raise ValueError(f"task {new_key} is already placed on this node")
        entry = self._placed.pop(key)
        self._placed[new_key] = entry
        if entry[2] is not None:
            self._gpu_owner[entry[2]] = new_key

    def _least_used(self, count: int) -> tuple[int, ...]:
        use = self._cpu_use
        if count == 1:
            return (use.index(min(use)),)
        return tuple(sorted(sorted(range(len(use)), key=use.__getitem__)[:count]))


def node_cpus(cores_per_node: int) -> list[int]:
    """The CPUs tasks of this node may be pinned to: this process's allowed CPUs, the first
    ``cores_per_node`` of them when the node profile names fewer (on Linux the first N are
    distinct physical cores; their hyperthread siblings come after)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:
        allowed = list(range(os.cpu_count() or 1))
    if 0 < cores_per_node < len(allowed):
        return allowed[:cores_per_node]
    return allowed
