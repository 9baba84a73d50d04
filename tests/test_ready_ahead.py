"""MPI mode's ready-ahead policy (pure functions): how many jobs are recorded RUNNING ahead of
a free node, when they are refilled, and which."""
from __future__ import annotations

from balsam.launcher import ready_ahead
from balsam.launcher.task import TaskSpec


def spec(i: int, nodes: int = 1) -> TaskSpec:
    return TaskSpec(job_id=f"j{i}", name=f"j{i}", workdir="/w", command="true", envscript=None,
                    env={}, num_nodes=nodes)


def test_the_target_grows_for_short_runs_and_is_none_before_any_run_or_for_long_ones():
    assert ready_ahead.target(None, 2) == 0  # nothing reaped yet
    assert ready_ahead.target(1.5, 2) == 0  # long runs: a commit is nothing beside them
    assert ready_ahead.target(0.5, 2) == 4  # two per node
    assert ready_ahead.target(0.005, 2) == 16  # short runs: ~8 starts a commit
    assert ready_ahead.target(0.005, 12) == 24
    assert ready_ahead.target(0.5, 1000) == ready_ahead.MAX == ready_ahead.target(0.005, 1000)


def test_jobs_are_refilled_when_half_are_left_or_topped_up_by_a_transaction_going_anyway():
    queue = [spec(i) for i in range(20)]
    assert ready_ahead.pick(16, 9, queue, [], [], 100) == []  # more than half left
    assert [s.job_id for s, n in ready_ahead.pick(16, 8, queue, [], [], 100)] == [
        f"j{i}" for i in range(8)]
    topped = ready_ahead.pick(16, 13, queue, [], [], 100, top_up=True)
    assert [s.job_id for s, _ in topped] == ["j0", "j1", "j2"]
    assert all(nodes == [] for _, nodes in topped)  # on the first node that frees


def test_picking_skips_taken_jobs_keeps_within_the_run_cap_and_waits_for_multi_node_jobs():
    queue = [spec(i) for i in range(10)]
    starts = [(queue[0], [0])]
    picked = ready_ahead.pick(16, 0, queue, starts, [queue[1]], 100)
    assert [s.job_id for s, _ in picked] == [f"j{i}" for i in range(2, 10)]
    assert len(ready_ahead.pick(16, 0, queue, [], [], 3)) == 3  # max_concurrent_runs left
    assert ready_ahead.pick(16, 0, queue + [spec(99, nodes=2)], [], [], 100) == []
