"""Serial-mode workers pin a task to its own cores when its share is several cores; a one-core
share too, unless ``launcher: pin_single_core_tasks`` is false (then any idle core may run it)."""
from __future__ import annotations

import os
import time

import pytest
from gates import gate_sh
from launcher_support import Inbox

from balsam.core.tunables import Tunables
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Work, Worker
from balsam.launcher.spawn import pinned_cpus


def allowed(text: str) -> set[int]:
    """CPUs of a ``Cpus_allowed_list`` value such as ``0-1,4``."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def test_only_shares_of_several_cores_are_pinned_unless_one_core_shares_are_asked_for():
    assert pinned_cpus((2, 3), 8, single_core=False) == (2, 3)
    assert pinned_cpus((5,), 8, single_core=False) == ()
    assert pinned_cpus((5,), 8, single_core=True) == (5,)
    assert pinned_cpus((0, 1), 2, single_core=True) == ()  # the whole node: nothing to pin
    assert Tunables.from_settings({}).pin_single_core_tasks is True
    assert not Tunables.from_settings({"pin_single_core_tasks": False}).pin_single_core_tasks


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
@pytest.mark.parametrize("pin_single", [False, True])
def test_two_one_core_tasks_float_or_get_a_core_each(tmp_path, pin_single):
    cpus = sorted(os.sched_getaffinity(0))
    gate = tmp_path / "go"
    # reads its CPUs once the test says so (after the worker's start, pinning included, returned)
    script = (f"{gate_sh(str(gate), 0.01)}; "
              "grep Cpus_allowed_list /proc/$$/status | cut -f2")
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots(cpus[:2], 0), {"PATH": os.environ["PATH"]},
                    pin_single_core=pin_single)
    outputs = [str(tmp_path / f"t{i}" / "t.out") for i in range(2)]
    try:
        inbox.orders.append({"work": [Work(f"t{i}", ["sh", "-c", script], None, {},
                                           os.path.dirname(out), out, 2, 1)
                                      for i, out in enumerate(outputs)]})
        end = time.monotonic() + 60
        while len(inbox.collected("started")) < 2:  # started by the worker's spawning threads
            assert time.monotonic() < end, inbox.reports
            worker.step() or worker.wait(10)
        assert sorted(inbox.collected("started")) == ["t0", "t1"]
        gate.touch()
        end = time.monotonic() + 60
        while len(inbox.collected("done")) < 2:
            assert time.monotonic() < end and not inbox.collected("failed"), inbox.reports
            if not worker.step():
                worker.wait(10)
    finally:
        gate.touch()  # a test failed midway leaves no task waiting for it
        worker.close()
    seen = []
    for out in outputs:
        with open(out) as fh:
            seen.append(allowed(fh.read()))
    if pin_single:
        assert sorted(seen, key=min) == [{cpus[0]}, {cpus[1]}]
    else:
        assert seen == [set(cpus), set(cpus)]
