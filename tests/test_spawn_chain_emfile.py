"""A chained start whose running task's pidfd cannot be dup'ed (``os.dup`` failing with EMFILE:
no descriptor to spare) is not chained: it goes back to the queue's head, and so does every
follow-on after it in that pass (none overtakes it), in queue order; ``chained`` counts only the
starts really chained (issue 16 review of ``Starts._chain_behind``). The fault is injected
deterministically: ``os.dup`` as the module under test sees it fails for chosen calls. No timing:
the running tasks wait for a gate file (bounded: tests/gates.py), the test waits for conditions."""
from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import pytest
from test_spawn_chain import gated, marking, native, serve, worker_for

from balsam.launcher import serial_starts, spawn_threads
from balsam.launcher.serial_worker import Work

pytestmark = pytest.mark.skipif(not spawn_threads.usable(), reason="no glibc posix_spawn here")


def failing_dup(monkeypatch: pytest.MonkeyPatch, failing: set[int]) -> list[int]:
    """``os.dup`` in :mod:`balsam.launcher.serial_starts` only (not the process's): a dup of a
    descriptor in ``failing`` raises EMFILE (the same in every chain pass, however many one
    worker step makes); the descriptors asked for, in order."""
    calls: list[int] = []

    def dup(fd: int) -> int:
        calls.append(fd)
        if fd in failing:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return os.dup(fd)

    fake = SimpleNamespace(**{name: getattr(os, name) for name in dir(os)
                              if not name.startswith("__")})
    fake.dup = dup
    monkeypatch.setattr(serial_starts, "os", fake)
    return calls


def half(work: Work) -> Work:
    """Half a node (two at once on the two-CPU worker), one CPU."""
    return work._replace(packing=2)


@native
@pytest.mark.parametrize("failing, back, chained", [
    ((0, 1), ["f2", "f3", "f4"], 0),  # both running tasks' dups fail: back in queue order
    ((0,), ["f2", "f3", "f4"], 0),    # the first's fails: f3 is not chained (no overtaking)
    ((1,), ["f3", "f4"], 1),          # the second's fails: f2 is chained behind the first
], ids=["both-fail", "first-fails", "second-fails"])
def test_follow_ons_whose_pidfd_dup_fails_go_back_to_the_queue_in_order_and_are_not_counted(
        tmp_path, monkeypatch, failing, back, chained):
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    inbox, worker = worker_for([0, 1])
    try:
        inbox.orders.append({"work": [half(gated(tmp, n, gate)) for n in ("g0", "g1")]})
        serve(worker, lambda: {"g0", "g1"} <= set(worker.running), "g0 and g1 run")
        # The chain pass follows the running tasks in this order (then starts in flight).
        fds = [r.fd for r in worker.running.values()]
        assert len(fds) == 2 and min(fds) >= 0  # each followed through a dup of its pidfd
        bad = {fds[i] for i in failing}
        calls = failing_dup(monkeypatch, bad)
        inbox.orders.append({"work": [half(marking(tmp, n)) for n in ("f2", "f3", "f4")]})
        serve(worker, lambda: calls, "the chain pass")
        assert [w.job_id for w in worker.queue] == back
        assert worker.chained == chained
        assert set(worker._leader) == {"f2", "f3", "f4"} - set(back)
        assert set(worker._spawns.chained_ids()) == set(worker._leader)  # type: ignore[union-attr]
        if failing == (0,):
            assert set(calls) == {fds[0]}  # the second running task's pidfd: never dup'ed
        assert not os.path.exists(os.path.join(tmp, "f2.ran"))  # g0 and g1 wait for the gate
        bad.clear()
        open(gate, "w").close()
        serve(worker, lambda: len(inbox.collected("done")) == 5, "every task done")
    finally:
        open(gate, "w").close()
        worker.close()
    for name in ("f2", "f3", "f4"):
        with open(os.path.join(tmp, f"{name}.ran")) as fh:
            assert fh.read() == "ran\n", name
    assert sorted(inbox.collected("started")) == ["f2", "f3", "f4", "g0", "g1"]
    assert worker.node.occupancy == 0
