"""The serial worker's loop (:meth:`balsam.launcher.serial_worker.Worker.run`): an iteration
that leaves work queued (waiting for a slot) is followed by a wait in ``epoll``, which a task's
end ends, never by another iteration that would find nothing to do; every task still starts
and ends, in order, on both start paths; no report carries an empty list. No timing: the calls
and reports are recorded and checked."""
from __future__ import annotations

import os
from typing import Any, Optional

import pytest
from launcher_support import Inbox

from balsam.launcher import spawn_native
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Work, Worker


@pytest.fixture(params=["python", "native"])
def path(request: Any, monkeypatch: Any) -> str:
    """The start path: the Python spawning threads, or the Cython kernel's where it is built."""
    if request.param == "native" and spawn_native.KERNEL != "cython":
        pytest.skip(f"the kernel is not built here ({spawn_native.KERNEL_ERROR})")
    monkeypatch.setattr(spawn_native, "KERNEL", "cython" if request.param == "native" else "python")
    return str(request.param)


class Recording(Worker):
    """A worker that notes each iteration (whether it was busy, whether work was left queued)
    and each wait, and is told to exit once every task has ended."""

    def __init__(self, channel: Inbox, tasks: int) -> None:
        super().__init__(channel, NodeSlots([0], 0), {"PATH": os.environ["PATH"]})
        self.calls: list[tuple[str, bool, bool]] = []
        self.inbox, self.tasks = channel, tasks

    def step(self) -> bool:
        busy = super().step()
        self.calls.append(("step", busy, bool(self.queue) and not self.finished))
        if len(self.inbox.collected("done")) == self.tasks and not self.inbox.orders \
                and not self.finished:
            self.inbox.orders.append({"exit": True})
        return busy

    def wait(self, timeout_ms: int) -> None:
        self.calls.append(("wait", False, False))
        super().wait(timeout_ms)

    def pace(self) -> None:  # the wait while every chained start is in flight
        self.calls.append(("pace", False, False))
        super().pace()


def task(tmp: str, name: str) -> Work:
    wd = os.path.join(tmp, name)
    return Work(name, ["true"], None, {}, wd, os.path.join(wd, "out"), 1, 1)


def run_tasks(tmp: str, count: int) -> tuple[Inbox, Recording]:
    inbox = Inbox()
    inbox.orders.append({"work": [task(tmp, f"t{i}") for i in range(count)]})  # 1 slot
    worker = Recording(inbox, count)
    worker.run()  # returns after the exit the recording worker asks for once all have ended
    names = [f"t{i}" for i in range(count)]
    assert inbox.collected("done") == names
    assert inbox.collected("started") == names
    assert inbox.flagged("bye")
    assert all(os.path.exists(os.path.join(tmp, n, "out")) for n in names)
    return inbox, worker


def test_an_iteration_that_leaves_work_queued_is_followed_by_a_wait_not_an_empty_one(
        tmp_path: Any, path: str) -> None:
    _, worker = run_tasks(str(tmp_path), 8)
    following: Optional[tuple[str, bool, bool]] = None
    for call, after in zip(worker.calls, worker.calls[1:]):
        if call[0] == "step" and call[1] and call[2]:  # busy, and work left waiting for a slot
            following = after
            assert after[0] in ("wait", "pace"), f"{call} followed by {after}"
    assert following is not None  # the case occurred (7 tasks waited for the one slot)


def test_reports_hold_no_empty_lists(tmp_path: Any, path: str) -> None:
    # A start made by a spawning thread is reported when it comes back, not in the iteration
    # that asked for it: that iteration once noted an empty "started" list, which made a report
    # of nothing, sent, and an iteration counted busy.
    inbox, _ = run_tasks(str(tmp_path), 4)
    empty = [r for r in inbox.reports if any(isinstance(v, list) and not v for v in r.values())]
    assert empty == []
