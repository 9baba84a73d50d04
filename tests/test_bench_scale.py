"""The at-scale simulation of the serial master (benchmarks/bench_scale.py) is correct at a
tiny size: the real master, database and claim/status code with simulated workers run every
job exactly once and record every state once (what the benchmark's numbers rest on)."""
from __future__ import annotations

import os
import subprocess
import sys
from array import array

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import _scale_figures as figures  # noqa: E402
import _scale_run as runs  # noqa: E402


@pytest.mark.slow  # ~2 s on a loaded machine
def test_simulated_workers_run_every_job_once_and_every_state_is_recorded(db):
    nodes, slots, count = 3, 4, 36
    runs.fill(db, count, slots)
    m = runs.simulate(db, nodes, slots, time_scale=0.01)
    assert m["ok"], m["rc"]  # ended idle, or with nothing left to come
    assert m["started"] == count
    assert runs.problems(db, count, m["started"]) == []
    assert m["statements"] > 0 and m["reports"] >= count // slots
    assert len(m["timeline"]) == figures.TIMELINE_PARTS  # the fill and the rate, over time
    assert sum(n for _, _, n in m["timeline"]) > 0


def test_occupancy_counts_busy_slot_seconds_in_the_window():
    starts, ends = array("d", [0.0, 0.0, 1.0]), array("d", [2.0, 1.0, 2.0])
    assert figures.occupancy(starts, ends, 2, 0.0, 2.0) == 1.0
    assert figures.occupancy(starts, ends, 4, 0.0, 2.0) == 0.5
    assert figures.first_full(starts, ends, 2) == 0.0


@pytest.mark.slow  # ~2 s
def test_the_master_keeps_claiming_past_one_claim_batch_in_flight(db):
    # 64 slots, claims of 8: the master once stopped claiming at ~8 tasks in flight for good.
    nodes, slots, count = 2, 32, 128
    runs.fill(db, count, slots)
    m = runs.simulate(db, nodes, slots, time_scale=0.1, claim_batch=8)
    assert runs.problems(db, count, m["started"]) == []
    assert m["peak_busy"] > 4 * 8


def test_the_demand_option_picks_the_time_scale_that_gives_that_demand_at_each_n():
    for nodes in (128, 1024, 4096):
        scale = figures.time_scale_for(7000.0, nodes, 64)
        assert figures.demand(nodes, 64, scale) == pytest.approx(7000.0)
    assert figures.time_scale_for(7000.0, 4096, 64) == pytest.approx(
        32 * figures.time_scale_for(7000.0, 128, 64))
    with pytest.raises(ValueError):
        figures.time_scale_for(0.0, 128, 64)


def test_a_bad_demand_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(runs.BENCH),
                                                        "bench_scale.py"), "--demand", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--demand must be a positive rate" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_while_work_remained_is_from_the_first_full_moment_to_the_last_start():
    # 2 slots: both start at 0 s; one ends at 1 s and its slot starts again at once, the
    # other at 2 s likewise (the last start); then the slots empty at 3 and 4 s.
    starts, ends = array("d", [0.0, 0.0, 1.0, 2.0]), array("d", [1.0, 2.0, 3.0, 4.0])
    m = figures.window_figures(starts, ends, 2, 0.0, 0.0)
    assert m["full_at"] == 0.0 and m["last_start"] == 2.0
    assert m["occ_remains"] == 1.0
    assert m["rate_remains"] == 3.0  # 4 starts and 2 ends in 2 s


def test_the_timeline_shows_each_part_once():
    # 2 slots over [0, 4]: busy 2, 2, 1, 0 in the four seconds
    starts, ends = array("d", [0.0, 0.0, 1.0]), array("d", [1.0, 3.0, 2.0])
    parts = figures.timeline(starts, ends, 2, 0.0, 4.0, parts=4)
    assert [p[0] for p in parts] == [0.0, 1.0, 2.0, 3.0]
    assert [p[1] for p in parts] == [1.0, 1.0, 0.5, 0.0]
    assert [p[2] for p in parts] == [2.0, 2.0, 1.0, 1.0]  # every event counted once
    assert figures.timeline(starts, ends, 2, 1.0, 1.0) == []
