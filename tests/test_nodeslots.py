"""Serial-mode node packing: occupancy never above one node, disjoint cores, never a shared GPU."""
from __future__ import annotations

import random

import pytest

from balsam.launcher.nodeslots import NodeSlots, Placement, share


def test_a_node_holds_exactly_packing_count_tasks_of_one_job():
    node = NodeSlots(range(4))
    placed = [node.place(f"t{i}", 3) for i in range(3)]
    assert all(p is not None for p in placed)
    assert node.occupancy == 1
    assert node.place("t3", 3) is None
    assert not node.fits(3)
    node.free("t1")
    assert node.fits(3)
    assert node.place("t3", 3) is not None
    assert len(node) == 3


def test_mixed_packing_counts_never_exceed_one_node():
    node = NodeSlots(range(8))
    assert node.place("half", 2) is not None
    assert node.place("quarter1", 4) is not None
    assert node.place("quarter2", 4) is not None
    assert node.place("eighth", 8) is None
    assert node.place("whole", 1) is None
    node.free("half")
    assert node.place("whole", 1) is None
    assert node.place("eighth", 8) is not None


def test_packing_count_below_one_takes_the_whole_node():
    assert share(0) == 1
    node = NodeSlots(range(2))
    assert node.place("a", 0) is not None
    assert node.place("b", 16) is None


def test_tasks_within_their_share_get_disjoint_cores():
    node = NodeSlots(range(8))
    cpus = [node.place(f"t{i}", 4).cpus for i in range(4)]
    assert all(len(c) == 2 for c in cpus)
    flat = [c for group in cpus for c in group]
    assert sorted(flat) == list(range(8))


def test_required_cores_above_the_share_are_honoured():
    node = NodeSlots(range(8))
    a = node.place("a", 4, required_cores=4)
    b = node.place("b", 4, required_cores=3)
    assert len(a.cpus) == 4 and len(b.cpus) == 3
    assert not set(a.cpus) & set(b.cpus)


def test_freed_cores_are_reused_and_cpu_ids_come_from_the_node():
    node = NodeSlots([0, 2, 4, 6])
    a = node.place("a", 4)
    b = node.place("b", 4)
    assert (a.cpus, b.cpus) == ((0,), (2,))
    node.free("a")
    c = node.place("c", 4)
    assert c.cpus == (0,)


def test_more_tasks_than_cores_share_cores_evenly():
    node = NodeSlots(range(2))
    cpus = [node.place(f"t{i}", 4).cpus for i in range(4)]
    assert sorted(c for group in cpus for c in group) == [0, 0, 1, 1]


def test_each_concurrent_task_gets_its_own_gpu_and_waits_when_none_is_free():
    node = NodeSlots(range(8), gpus=2)
    a = node.place("a", 8)
    b = node.place("b", 8)
    assert {a.gpu, b.gpu} == {0, 1}
    assert not node.fits(8)
    assert node.place("c", 8) is None
    node.free("a")
    c = node.place("c", 8)
    assert c == Placement(c.cpus, a.gpu)


def test_without_gpus_no_gpu_is_assigned():
    assert NodeSlots(range(2)).place("a", 2).gpu is None


def test_random_place_and_free_keeps_every_invariant():
    rng = random.Random(7)
    node = NodeSlots(range(6), gpus=3)
    live: dict[str, Placement] = {}
    for step in range(3000):
        if live and rng.random() < 0.45:
            key = rng.choice(sorted(live))
            node.free(key)
            del live[key]
        else:
            key = f"t{step}"
            placement = node.place(key, rng.choice([1, 2, 3, 4, 6, 12]), rng.randint(1, 3))
            if placement is not None:
                live[key] = placement
        assert node.occupancy <= 1
        gpus = [p.gpu for p in live.values()]
        assert len(gpus) == len(set(gpus))
        assert len(node) == len(live)
    for key in list(live):
        node.free(key)
    assert node.occupancy == 0
    assert node.place("whole", 1) is not None


def test_placing_a_key_twice_is_refused_and_freeing_twice_is_harmless():
    node = NodeSlots(range(2))
    node.place("a", 2)
    with pytest.raises(ValueError):
        node.place("a", 2)
    node.free("a")
    node.free("a")
    assert node.occupancy == 0


def test_integer_occupancy_matches_the_fraction_reference_on_random_mixed_counts():
    """The node counts occupancy in integer units (lcm of the counts seen); it must decide
    every fit exactly as summing ``share()`` Fractions does, new counts arriving midway."""
    from fractions import Fraction

    rng = random.Random(11)
    node = NodeSlots(range(4))
    reference: dict[str, Fraction] = {}
    for step in range(4000):
        if reference and rng.random() < 0.5:
            key = rng.choice(sorted(reference))
            node.free(key)
            del reference[key]
            continue
        count = rng.choice([0, 1, 2, 3, 5, 7, 9, 11, 16])
        fits = sum(reference.values(), Fraction(0)) + share(count) <= 1
        assert node.fits(count) is fits
        placed = node.place(f"t{step}", count)
        assert (placed is not None) is fits
        if placed is not None:
            reference[f"t{step}"] = share(count)
        assert node.occupancy == sum(reference.values(), Fraction(0))
