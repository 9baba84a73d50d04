"""The at-scale simulation of the serial master (benchmarks/bench_scale.py) is correct at a
tiny size: the real master, database and claim/status code with simulated workers run every
job exactly once and record every state once (what the benchmark's numbers rest on)."""
from __future__ import annotations

import os
import sys
from array import array

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import bench_scale  # noqa: E402


@pytest.mark.slow  # ~2 s on a loaded machine
def test_simulated_workers_run_every_job_once_and_every_state_is_recorded(db):
    nodes, slots, count = 3, 4, 36
    bench_scale.fill(db, count, slots)
    m = bench_scale.simulate(db, nodes, slots, time_scale=0.01)
    assert m["ok"], m["rc"]  # ended idle, or with nothing left to come
    assert m["started"] == count
    assert bench_scale.problems(db, count, m["started"]) == []
    assert m["statements"] > 0 and m["reports"] >= count // slots


def test_occupancy_counts_busy_slot_seconds_in_the_window():
    starts, ends = array("d", [0.0, 0.0, 1.0]), array("d", [2.0, 1.0, 2.0])
    assert bench_scale.occupancy(starts, ends, 2, 0.0, 2.0) == 1.0
    assert bench_scale.occupancy(starts, ends, 4, 0.0, 2.0) == 0.5
    assert bench_scale.first_full(starts, ends, 2) == 0.0


@pytest.mark.slow  # ~2 s
def test_the_master_keeps_claiming_past_one_claim_batch_in_flight(db):
    # 64 slots, claims of 8: the master once stopped claiming at ~8 tasks in flight for good.
    nodes, slots, count = 2, 32, 128
    bench_scale.fill(db, count, slots)
    m = bench_scale.simulate(db, nodes, slots, time_scale=0.1, claim_batch=8)
    assert bench_scale.problems(db, count, m["started"]) == []
    assert m["peak_busy"] > 4 * 8
