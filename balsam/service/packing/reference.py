"""Pure-Python reference of the shelf packer; the contract is in :mod:`balsam.service.packing`.

This module is the specification: the Cython kernel ``_packer.pyx`` implements the same steps
with the same integer arithmetic, and ``tests/test_packer.py`` checks that both give identical
results, element by element, on random inputs. It is also the fallback when the kernel is not
built. Run time is O(n log n): one sort, then per job one first-fit descent of a max segment
tree over the shelves (and, when a shelf is opened, one over the boxes).
"""
from __future__ import annotations

import operator
from array import array
from collections.abc import Sequence
from typing import NamedTuple, Optional

INT64_MAX = 2**63 - 1
_INITIAL_TREE_SIZE = 16


class PackResult(NamedTuple):
    """What :func:`pack` returns. Arrays are ``array.array('q')`` (int64).

    Per job ``i`` (input order): ``box_of[i]`` is its box (0 .. boxes_used - 1) or -1 if
    unplaced; ``x[i]`` / ``y[i]`` its lower-left corner in the box (units, seconds), -1 if
    unplaced. Per box ``b``: ``used_width[b]`` is the largest ``x + width`` of its jobs (the
    units it really needs) and ``used_height[b]`` the largest ``y + height`` (the wall time it
    really needs).
    """

    box_of: array[int]
    x: array[int]
    y: array[int]
    boxes_used: int
    used_width: array[int]
    used_height: array[int]


def check_scalars(n_widths: int, n_heights: int, box_width: int, box_height: int,
                  max_boxes: Optional[int]) -> int:
    """Validate the scalar arguments of :func:`pack` (shared by both implementations, so they
    raise the same errors); returns ``max_boxes`` as an int clamped to ``[0, n]`` (``None`` =
    no limit). Raises ValueError or TypeError (non-integers)."""
    if n_widths != n_heights:
        raise ValueError(f"widths and heights differ in length ({n_widths} != {n_heights})")
    box_width = operator.index(box_width)
    box_height = operator.index(box_height)
    if not 1 <= box_width <= INT64_MAX:
        raise ValueError(f"box_width must be in [1, 2**63 - 1], got {box_width}")
    if not 1 <= box_height <= INT64_MAX:
        raise ValueError(f"box_height must be in [1, 2**63 - 1], got {box_height}")
    if max_boxes is None:
        return n_widths
    max_boxes = operator.index(max_boxes)
    if max_boxes < 0:
        raise ValueError(f"max_boxes must be >= 0 or None, got {max_boxes}")
    return min(max_boxes, n_widths)


def bad_element(name: str, index: int, value: int) -> ValueError:
    """The error for a width or height below 1 (same text from both implementations)."""
    return ValueError(f"{name}[{index}] = {value}: every job {name[:-1]} must be >= 1")


def _first_at_least(tree: list[int], size: int, need: int) -> int:
    """Index of the first leaf whose value is >= ``need``, or -1 (max segment tree)."""
    if tree[1] < need:
        return -1
    k = 1
    while k < size:
        k *= 2
        if tree[k] < need:
            k += 1
    return k - size


def _set(tree: list[int], size: int, i: int, value: int) -> None:
    """Set leaf ``i`` and update the maxima above it (stop early once a maximum is unchanged)."""
    k = i + size
    tree[k] = value
    k //= 2
    while k:
        m = tree[2 * k] if tree[2 * k] >= tree[2 * k + 1] else tree[2 * k + 1]
        if tree[k] == m:
            break
        tree[k] = m
        k //= 2


def _grown(tree: list[int], size: int) -> tuple[list[int], int]:
    """A tree of twice the size holding the same leaves (the new leaves are 0)."""
    new_size = 2 * size
    new = [0] * (2 * new_size)
    new[new_size:new_size + size] = tree[size:2 * size]
    for k in range(new_size - 1, 0, -1):
        a, b = new[2 * k], new[2 * k + 1]
        new[k] = a if a >= b else b
    return new, new_size


def pack(widths: Sequence[int], heights: Sequence[int], box_width: int, box_height: int,
         max_boxes: Optional[int] = None) -> PackResult:
    """Pack jobs (rectangles) into boxes; see :mod:`balsam.service.packing` for the contract."""
    n = len(widths)
    limit = check_scalars(n, len(heights), box_width, box_height, max_boxes)
    wid = array("q", widths).tolist()
    hei = array("q", heights).tolist()
    W = operator.index(box_width)
    H = operator.index(box_height)
    for i in range(n):
        if wid[i] < 1:
            raise bad_element("widths", i, wid[i])
        if hei[i] < 1:
            raise bad_element("heights", i, hei[i])

    order = [i for i in range(n) if wid[i] <= W and hei[i] <= H]
    order.sort(key=lambda i: (-hei[i], -wid[i]))  # stable: index ascending among equals

    box_of = [-1] * n
    xs = [-1] * n
    ys = [-1] * n
    used_width: list[int] = []
    used_height: list[int] = []
    shelf_box: list[int] = []
    shelf_y: list[int] = []
    shelf_fill: list[int] = []
    ssize = bsize = _INITIAL_TREE_SIZE
    stree = [0] * (2 * ssize)   # leaf = width still free on the shelf
    btree = [0] * (2 * bsize)   # leaf = height still free above the box's top shelf

    for j in order:
        wj = wid[j]
        hj = hei[j]
        s = _first_at_least(stree, ssize, wj)
        if s >= 0:
            # Heights arrive in non-increasing order, so every shelf is tall enough.
            b = shelf_box[s]
            xj = shelf_fill[s]
            yj = shelf_y[s]
            shelf_fill[s] = xj + wj
            _set(stree, ssize, s, W - xj - wj)
        else:
            b = _first_at_least(btree, bsize, hj)
            if b < 0:
                b = len(used_height)
                if b == limit:
                    continue  # no room and no more boxes: unplaced
                if b == bsize:
                    btree, bsize = _grown(btree, bsize)
                used_width.append(0)
                used_height.append(0)
            xj = 0
            yj = used_height[b]
            used_height[b] = yj + hj
            _set(btree, bsize, b, H - yj - hj)
            s = len(shelf_box)
            if s == ssize:
                stree, ssize = _grown(stree, ssize)
            shelf_box.append(b)
            shelf_y.append(yj)
            shelf_fill.append(wj)
            _set(stree, ssize, s, W - wj)
        if xj + wj > used_width[b]:
            used_width[b] = xj + wj
        box_of[j] = b
        xs[j] = xj
        ys[j] = yj

    return PackResult(array("q", box_of), array("q", xs), array("q", ys), len(used_height),
                      array("q", used_width), array("q", used_height))
