"""The 2-D job packer: exact layouts on hand-made cases, layout invariants on random inputs, the
Cython kernel identical to the pure-Python reference element by element, and the fallback to
the reference (with one warning) when the kernel is missing."""
from __future__ import annotations

import random
import subprocess
import sys
from array import array
from typing import Callable, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balsam.service import packing
from balsam.service.packing import PackResult, reference

INT64_MAX = 2**63 - 1
IMPLEMENTATIONS = pytest.mark.parametrize(
    "pack", [packing.pack, reference.pack], ids=["kernel", "reference"])
Packer = Callable[..., PackResult]


def as_lists(result: PackResult) -> tuple:
    return (list(result.box_of), list(result.x), list(result.y), result.boxes_used,
            list(result.used_width), list(result.used_height))


def check_layout(widths: list, heights: list, W: int, H: int, max_boxes: Optional[int],
                 result: PackResult, overlaps: bool = True) -> None:
    """Every placed job inside its box and its used extent, no two overlapping, used extents
    exact, no empty box, and a job left out only if it cannot fit or the box limit is hit."""
    n = len(widths)
    assert len(result.box_of) == len(result.x) == len(result.y) == n
    assert len(result.used_width) == len(result.used_height) == result.boxes_used
    limit = n if max_boxes is None else min(max_boxes, n)
    assert result.boxes_used <= limit
    per_box: list[list[int]] = [[] for _ in range(result.boxes_used)]
    for i in range(n):
        b, x, y = result.box_of[i], result.x[i], result.y[i]
        if b < 0:
            assert x == y == -1
            fits = widths[i] <= W and heights[i] <= H
            assert not fits or result.boxes_used == limit, f"job {i} fits but was left out"
            continue
        assert 0 <= x and x + widths[i] <= result.used_width[b] <= W
        assert 0 <= y and y + heights[i] <= result.used_height[b] <= H
        per_box[b].append(i)
    for b, jobs in enumerate(per_box):
        assert jobs, f"box {b} is empty"
        assert result.used_width[b] == max(result.x[i] + widths[i] for i in jobs)
        assert result.used_height[b] == max(result.y[i] + heights[i] for i in jobs)
        if not overlaps:
            continue
        jobs.sort(key=lambda i: result.x[i])
        for k, i in enumerate(jobs):  # pairs whose x-ranges intersect must not share y
            for j in jobs[k + 1:]:
                if result.x[j] >= result.x[i] + widths[i]:
                    break
                assert (result.y[i] + heights[i] <= result.y[j]
                        or result.y[j] + heights[j] <= result.y[i]), f"jobs {i} and {j} overlap"


# ---- the kernel is built and used ------------------------------------------------------------

def test_the_cython_kernel_is_built_and_used_by_pack() -> None:
    from balsam.service.packing import _packer  # type: ignore[attr-defined]

    assert packing.KERNEL == "cython"
    assert packing.KERNEL_ERROR is None
    assert packing._kernel_pack is _packer.pack
    assert _packer.__file__.endswith(".so")


# ---- exact answers on hand-made cases --------------------------------------------------------

@IMPLEMENTATIONS
def test_shelves_fill_left_to_right_then_stack_then_open_a_new_box(pack: Packer) -> None:
    # Order: job1 (6x5), job0 (4x5), job5 (10x4), job2 (5x3), job3 (5x3), job4 (3x2).
    widths, heights = [4, 6, 5, 5, 3, 10], [5, 5, 3, 3, 2, 4]
    result = pack(widths, heights, 10, 10)
    assert as_lists(result) == (
        [0, 0, 1, 1, 1, 0],   # job4 does not fit box 0's last 1 s: a new shelf in box 1
        [6, 0, 0, 5, 0, 0],
        [0, 0, 0, 0, 3, 5],
        2, [10, 10], [9, 5])
    check_layout(widths, heights, 10, 10, None, result)


@IMPLEMENTATIONS
def test_a_later_small_job_fills_the_gap_on_an_earlier_box(pack: Packer) -> None:
    result = pack([6, 6, 3], [6, 6, 2], 10, 10)
    assert as_lists(result) == ([0, 1, 0], [0, 0, 6], [0, 0, 0], 2, [9, 6], [6, 6])


@IMPLEMENTATIONS
def test_a_new_shelf_goes_on_the_first_box_with_height_left(pack: Packer) -> None:
    # Boxes 0 and 1 each get a 7-high shelf; the 3-high jobs stack on box 0 first.
    result = pack([10, 10, 10, 10], [7, 7, 3, 3], 10, 10)
    assert as_lists(result) == ([0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 7, 7], 2, [10, 10], [10, 10])


@IMPLEMENTATIONS
def test_equal_jobs_are_placed_in_input_order(pack: Packer) -> None:
    result = pack([1, 1, 1, 1, 1], [1, 1, 1, 1, 1], 4, 1)
    assert as_lists(result) == ([0, 0, 0, 0, 1], [0, 1, 2, 3, 0], [0] * 5, 2, [4, 1], [1, 1])


@IMPLEMENTATIONS
def test_used_width_and_height_let_the_planner_shrink_a_box(pack: Packer) -> None:
    # Three serial jobs of 1/8 node (units_per_node = 8) in a 4-node (32-unit), 3600 s box.
    result = pack([1, 1, 1], [600, 900, 300], 32, 3600)
    assert as_lists(result) == ([0, 0, 0], [1, 0, 2], [0, 0, 0], 1, [3], [900])


@IMPLEMENTATIONS
def test_jobs_wider_or_taller_than_the_box_are_unplaced_and_others_still_pack(pack: Packer) -> None:
    result = pack([11, 10, 3, 10], [1, 10, 11, 10], 10, 10)
    assert as_lists(result) == ([-1, 0, -1, 1], [-1, 0, -1, 0], [-1, 0, -1, 0], 2,
                                [10, 10], [10, 10])


@IMPLEMENTATIONS
def test_a_job_exactly_box_sized_fills_one_box(pack: Packer) -> None:
    assert as_lists(pack([INT64_MAX], [INT64_MAX], INT64_MAX, INT64_MAX)) == (
        [0], [0], [0], 1, [INT64_MAX], [INT64_MAX])


@IMPLEMENTATIONS
def test_values_spanning_the_whole_int64_range_are_ordered_and_placed_exactly(pack: Packer) -> None:
    # Key ranges too wide to pack into one 64-bit sort key: the kernel's other sort path.
    widths, heights = [1, 2**40, 5], [2**30, 1, 2**30]
    assert as_lists(pack(widths, heights, 2**41, 2**31)) == (
        [0, 0, 0], [5, 6, 0], [0, 0, 0], 1, [6 + 2**40], [2**30])


@IMPLEMENTATIONS
def test_max_boxes_leaves_jobs_unplaced_but_fills_the_open_boxes(pack: Packer) -> None:
    widths, heights = [6, 6, 6, 3], [6, 6, 6, 2]
    assert as_lists(pack(widths, heights, 10, 10, 1)) == (
        [0, -1, -1, 0], [0, -1, -1, 6], [0, -1, -1, 0], 1, [9], [6])
    assert as_lists(pack(widths, heights, 10, 10, 0)) == ([-1] * 4, [-1] * 4, [-1] * 4, 0, [], [])
    assert pack(widths, heights, 10, 10, 10**30).boxes_used == 3


@IMPLEMENTATIONS
def test_no_jobs_gives_no_boxes(pack: Packer) -> None:
    assert as_lists(pack([], [], 1, 1)) == ([], [], [], 0, [], [])
    assert as_lists(pack(array("q"), array("q"), 5, 5, 0)) == ([], [], [], 0, [], [])


@IMPLEMENTATIONS
def test_results_are_int64_arrays(pack: Packer) -> None:
    result = pack(array("q", [1]), array("q", [1]), 1, 1)
    for field in (result.box_of, result.x, result.y, result.used_width, result.used_height):
        assert isinstance(field, array) and field.typecode == "q"
    assert type(result.boxes_used) is int


BAD_ARGUMENTS = [
    (([1, 0], [1, 1], 5, 5), ValueError, r"^widths\[1\] = 0: every job width must be >= 1$"),
    (([1, 1], [1, -3], 5, 5), ValueError, r"^heights\[1\] = -3: every job height must be >= 1$"),
    (([1], [1, 1], 5, 5), ValueError, r"^widths and heights differ in length \(1 != 2\)$"),
    (([1], [1], 0, 5), ValueError, r"^box_width must be in \[1, 2\*\*63 - 1\], got 0$"),
    (([1], [1], 5, 2**63), ValueError, r"^box_height must be in \[1, 2\*\*63 - 1\], got"),
    (([1], [1], 5, 5, -1), ValueError, r"^max_boxes must be >= 0 or None, got -1$"),
    (([1], [1], 5.0, 5), TypeError, "integer"),
    (([1], [2**63], 5, 5), OverflowError, "too (big|large) to convert"),
]


@pytest.mark.parametrize("args, error, message", BAD_ARGUMENTS)
@IMPLEMENTATIONS
def test_bad_arguments_raise_the_same_error_from_both(pack: Packer, args: tuple, error: type,
                                                      message: str) -> None:
    with pytest.raises(error, match=message):
        pack(*args)


# ---- random inputs: invariants, and kernel == reference element by element --------------------

def small_case(r: random.Random) -> tuple:
    n = r.choice([0, 1, 2, 3, 10, 50, 200])
    W, H = r.randint(1, 30), r.randint(1, 30)
    widths = [r.randint(1, W + 2) for _ in range(n)]
    heights = [r.randint(1, H + 2) for _ in range(n)]
    if n and r.random() < 0.3:  # some jobs exactly box-sized
        for i in r.sample(range(n), max(1, n // 5)):
            widths[i], heights[i] = W, H
    return widths, heights, W, H, r.choice([None, None, 0, 1, 2, 3, 7, n])


@pytest.mark.parametrize("seed", range(400))
def test_random_layouts_are_valid_and_the_kernel_matches_the_reference(seed: int) -> None:
    widths, heights, W, H, max_boxes = small_case(random.Random(seed))
    result = packing.pack(widths, heights, W, H, max_boxes)
    check_layout(widths, heights, W, H, max_boxes, result)
    assert as_lists(result) == as_lists(reference.pack(widths, heights, W, H, max_boxes))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_kernel_matches_the_reference_on_any_int64_values(data: st.DataObject) -> None:
    # Wide value ranges take the kernel's sort path that fetches keys by index.
    W = data.draw(st.one_of(st.integers(1, 40), st.integers(1, INT64_MAX)))
    H = data.draw(st.one_of(st.integers(1, 40), st.integers(1, INT64_MAX)))
    n = data.draw(st.integers(0, 40))
    widths = data.draw(st.lists(st.integers(1, min(INT64_MAX, W + 2)), min_size=n, max_size=n))
    heights = data.draw(st.lists(st.integers(1, min(INT64_MAX, H + 2)), min_size=n, max_size=n))
    max_boxes = data.draw(st.one_of(st.none(), st.integers(0, 50)))
    result = packing.pack(widths, heights, W, H, max_boxes)
    check_layout(widths, heights, W, H, max_boxes, result)
    assert as_lists(result) == as_lists(reference.pack(widths, heights, W, H, max_boxes))


def planner_like_case(r: random.Random, n: int) -> tuple:
    """Serial jobs of 1/P node (units_per_node 16) and MPI jobs of 1-512 nodes, in seconds."""
    widths, heights = [], []
    for _ in range(n):
        if r.random() < 0.9:
            widths.append(16 // r.choice((1, 2, 4, 8, 16)))
            heights.append(r.randint(300, 1800))
        else:
            widths.append(16 * r.randint(1, 512))
            heights.append(r.randint(300, 3600))
    return widths, heights


@pytest.mark.parametrize("seed, n, nodes, max_boxes", [
    (1, 20_000, 128, None), (2, 20_000, 512, None), (3, 50_000, 8, None), (4, 20_000, 128, 5),
    (5, 50_000, 1, 1000)])
def test_large_planner_like_inputs_match_the_reference(seed: int, n: int, nodes: int,
                                                        max_boxes: Optional[int]) -> None:
    widths, heights = planner_like_case(random.Random(seed), n)
    result = packing.pack(widths, heights, nodes * 16, 3600, max_boxes)
    assert as_lists(result) == as_lists(reference.pack(widths, heights, nodes * 16, 3600, max_boxes))
    check_layout(widths, heights, nodes * 16, 3600, max_boxes, result, overlaps=n <= 20_000)


def test_serial_jobs_fill_their_boxes_densely() -> None:
    r = random.Random(7)
    heights = [r.randint(300, 1800) for _ in range(100_000)]
    result = packing.pack([1] * len(heights), heights, 128 * 16, 3600)
    used = sum(w * h for w, h in zip(result.used_width, result.used_height))
    assert sum(heights) / used > 0.9  # area of the jobs / area of the (shrunk) boxes


# ---- fallback to the reference ---------------------------------------------------------------

HIDE_KERNEL = """
import logging, sys
class HideKernel:
    def find_spec(self, name, path=None, target=None):
        if name == "balsam.service.packing._packer":
            raise ImportError("hidden by the test")
        return None
sys.meta_path.insert(0, HideKernel())
logging.basicConfig(level=logging.INFO, format="%(levelname)s:%(name)s:%(message)s")
from balsam.service import packing
print(packing.KERNEL, "|", packing.KERNEL_ERROR)
print(list(packing.pack([4, 6], [5, 5], 10, 10).x))
print(list(packing.pack([1], [1], 1, 1).box_of))
"""


def test_without_the_kernel_pack_uses_the_reference_and_warns_once() -> None:
    proc = subprocess.run([sys.executable, "-c", HIDE_KERNEL], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["python | hidden by the test", "[6, 0]", "[0]"]
    assert proc.stderr.splitlines() == [
        "WARNING:balsam.service.packing:the Cython packing kernel is not available (hidden by "
        "the test): using the pure-Python reference packer, about 100x slower"]
