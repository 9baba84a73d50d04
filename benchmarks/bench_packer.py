"""Benchmark: the 2-D job packer on 1,000,000 jobs, Cython kernel vs pure-Python reference.

Goal (issue 5): planning 1,000,000 runnable jobs in under 1 second (the packer is the part
measured here), and the kernel >= 20x faster than the reference on the same input. Printed, not
asserted. No database: the packer is pure computation.

Inputs (seeded, units_per_node = 16 = lcm of the packing counts 1, 2, 4, 8, 16; heights in
seconds), both timed on the very same ``array('q')`` inputs:

- ``serial``: 1,000,000 serial jobs of node_packing_count 16 (width 1 unit), 5-30 min each,
  into boxes of 128 nodes x 60 min;
- ``mixed``: 90% serial jobs (node_packing_count 1, 2, 4, 8 or 16; 5-30 min) and 10% MPI jobs
  of 1-512 nodes (log-uniform; 5-60 min), into boxes of 512 nodes x 60 min (every job fits).

The kernel's time is the median of ``--rounds`` calls of ``packing.pack``; the reference runs
once on the full input (it takes seconds, not minutes, so nothing is extrapolated). The two
results are compared element by element. "fill" = area of the placed jobs / area of the boxes
shrunk to their ``used_width`` x ``used_height``.

Run: ``python benchmarks/bench_packer.py [-n 1000000] [--rounds 5] [--box-nodes N] [--only serial|mixed]``
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from array import array
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line  # noqa: E402

from balsam.service import packing  # noqa: E402
from balsam.service.packing import PackResult, reference  # noqa: E402

UNITS_PER_NODE = 16
BOX_SECONDS = 3600
DEFAULT_BOX_NODES = {"serial": 128, "mixed": 512}


def make_jobs(kind: str, n: int, seed: int = 5) -> tuple[array, array]:
    """(widths, heights) of ``n`` jobs of the given kind (see the module docstring)."""
    r = random.Random(seed)
    widths, heights = array("q"), array("q")
    for _ in range(n):
        if kind == "serial":
            widths.append(UNITS_PER_NODE // 16)
            heights.append(r.randint(300, 1800))
        elif r.random() < 0.9:
            widths.append(UNITS_PER_NODE // r.choice((1, 2, 4, 8, 16)))
            heights.append(r.randint(300, 1800))
        else:
            widths.append(UNITS_PER_NODE * int(2 ** r.uniform(0, 9.0001)))
            heights.append(r.randint(300, 3600))
    return widths, heights


def describe(result: PackResult, widths: array, heights: array) -> str:
    placed = [i for i, b in enumerate(result.box_of) if b >= 0]
    area = sum(widths[i] * heights[i] for i in placed)
    boxes = sum(w * h for w, h in zip(result.used_width, result.used_height))
    return (f"{result.boxes_used:,} boxes, {len(placed):,} jobs placed, "
            f"{len(result.box_of) - len(placed):,} unplaced, fill {area / boxes if boxes else 0:.3f}")


def bench(kind: str, n: int, rounds: int, box_nodes: Optional[int]) -> None:
    nodes = box_nodes or DEFAULT_BOX_NODES[kind]
    widths, heights = make_jobs(kind, n)
    W = nodes * UNITS_PER_NODE
    print(f"\n{kind}: {n:,} jobs into boxes of {nodes} nodes x {BOX_SECONDS // 60} min")
    times = []
    result = None
    for k in range(rounds):
        t0 = time.perf_counter()
        result = packing.pack(widths, heights, W, BOX_SECONDS)
        times.append(time.perf_counter() - t0)
        print(f"  round {k + 1} kernel: {times[-1] * 1000:8.1f} ms")
    assert result is not None
    t0 = time.perf_counter()
    ref = reference.pack(widths, heights, W, BOX_SECONDS)
    ref_time = time.perf_counter() - t0
    kernel = statistics.median(times)
    print(f"  kernel ({packing.KERNEL}):  median {kernel * 1000:8.1f} ms   (goal < 1000 ms)")
    print(f"  reference (Python): {ref_time * 1000:8.1f} ms   (one run, same input)")
    print(f"  speed-up: {ref_time / kernel:.0f}x   (goal >= 20x)")
    print(f"  identical results: {result == ref}")
    print(f"  layout: {describe(result, widths, heights)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="jobs (default 1000000)")
    parser.add_argument("--rounds", type=int, default=5, help="kernel runs (default 5)")
    parser.add_argument("--box-nodes", type=int, help="box width in nodes (default: serial 128, "
                        "mixed 512)")
    parser.add_argument("--only", choices=sorted(DEFAULT_BOX_NODES), help="run one input only")
    args = parser.parse_args()
    print(machine_line())
    if packing.KERNEL != "cython":
        print(f"warning: the Cython kernel is not built ({packing.KERNEL_ERROR})")
    for kind in ([args.only] if args.only else ["serial", "mixed"]):
        bench(kind, args.n, args.rounds, args.box_nodes)


if __name__ == "__main__":
    main()
