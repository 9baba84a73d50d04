"""2-D job packing: place jobs (node units x seconds) into candidate batch jobs ("boxes").

The planner turns runnable jobs and queue policies into batch jobs; this package only answers
"which jobs fit in which box, and how much of each box is really used".

Units (chosen by the caller)
----------------------------
A job is a rectangle: width = node usage in integer *units*, height = wall time in seconds.
With ``units_per_node = math.lcm(*packing_counts)`` every width is an exact integer: an MPI
job of N nodes is ``N * units_per_node`` wide, a serial job with ``node_packing_count`` P is
``units_per_node // P`` wide. A box is ``nodes * units_per_node`` wide and ``walltime`` seconds
high. Everything is int64; no floating point anywhere, so results are exact and reproducible.

Contract
--------
``pack(widths, heights, box_width, box_height, max_boxes=None) -> PackResult``

- ``widths``, ``heights``: one int per job, each >= 1 (ValueError naming the first bad element
  otherwise), same length. ``array.array('q')`` is used as is; any other sequence of ints is
  converted (a copy). ``box_width``, ``box_height``: ints in [1, 2**63 - 1]. ``max_boxes``:
  int >= 0, or None for no limit. Boxes all have the same size; call again with another size
  (e.g. another queue's policy) for the jobs left unplaced.
- Returns :class:`PackResult` (all arrays ``array('q')``): per job ``box_of`` (box index, or
  -1 if unplaced: wider or taller than the box, or no room left in ``max_boxes`` boxes), ``x``
  and ``y`` (lower-left corner in its box; -1 if unplaced); ``boxes_used``; per box
  ``used_width`` (max ``x + width``: the planner may shrink the node count to
  ``ceil(used_width / units_per_node)``) and ``used_height`` (max ``y + height``: the wall
  time the box needs). Placed jobs never overlap and lie inside ``[0, used_width] x [0,
  used_height]``. Boxes are numbered in the order they are opened, and every box holds >= 1 job.
- Deterministic: the same input gives the same output with either implementation.

Algorithm (first-fit decreasing height, shelves)
------------------------------------------------
Jobs that fit a box at all are taken in the order (height desc, width desc, index asc). Each
box is a stack of *shelves*; a shelf is as high as the first (tallest) job put on it, and jobs
on a shelf sit side by side from x = 0. Each job goes, in this order of preference:

1. on the first shelf, in shelf creation order across all boxes, with enough width left (later
   jobs are never taller, so any shelf is high enough);
2. else on a new shelf at the top of the first box, in box order, with enough height left;
3. else on a new shelf at the bottom of a new box, if fewer than ``max_boxes`` are open;
4. else it stays unplaced (and later, smaller jobs may still fit).

No box is ever closed, so small jobs fill gaps left by big ones. Both choices are a descent
of a max segment tree (free width per shelf, free height per box): O(n log n) in all.
A shelf is a conservative model of a batch job: in serial mode a launcher starts the next job
as soon as a slot frees, so the real makespan is at most ``used_height``.

Implementations
---------------
:data:`KERNEL` is ``"cython"`` when the compiled kernel ``balsam.service.packing._packer``
(built by every install that finds a working C compiler) is importable, else ``"python"``:
:func:`pack` then runs the pure-Python reference (:mod:`balsam.service.packing.reference`,
~100x slower) and logs one warning on its first call (:data:`KERNEL_ERROR` holds the import error).
"""
from __future__ import annotations

import importlib
import logging
from array import array
from collections.abc import Sequence
from typing import Callable, Optional

from balsam.service.packing.reference import PackResult
from balsam.service.packing.reference import pack as pack_reference

__all__ = ["KERNEL", "KERNEL_ERROR", "PackResult", "pack", "pack_reference"]

log = logging.getLogger(__name__)


def _load_kernel() -> tuple[str, Optional[Callable[..., PackResult]], Optional[str]]:
    try:
        _packer = importlib.import_module("balsam.service.packing._packer")
    except ImportError as exc:
        return "python", None, str(exc)
    return "cython", _packer.pack, None


KERNEL, _kernel_pack, KERNEL_ERROR = _load_kernel()
_fallback_warned = False


def _int64(values: Sequence[int]) -> array[int]:
    if isinstance(values, array) and values.typecode == "q":
        return values
    return array("q", values)


def pack(widths: Sequence[int], heights: Sequence[int], box_width: int, box_height: int,
         max_boxes: Optional[int] = None) -> PackResult:
    """Pack jobs into boxes of ``box_width`` units x ``box_height`` seconds (module docstring)."""
    global _fallback_warned
    w = _int64(widths)
    h = _int64(heights)
    if _kernel_pack is not None:
        return _kernel_pack(w, h, box_width, box_height, max_boxes)
    if not _fallback_warned:
        _fallback_warned = True
        log.warning("the Cython packing kernel is not available (%s): using the pure-Python "
                    "reference packer, about 100x slower", KERNEL_ERROR)
    return pack_reference(w, h, box_width, box_height, max_boxes)
