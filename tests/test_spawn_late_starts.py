"""A start its spawning thread makes after the worker's exit gave up waiting for it (review of
session 21's s21-watchdog, branch s21-revdog). The exit waits for starts in flight a bounded
time (``SETTLE_SECONDS``); a start held longer (a hung file system) that is made before the
threads are closed -- the file system answers while the worker says goodbye, or while its
close waits for its directory preparer, itself held -- is never taken over: nothing would reap,
report or stop it. The close now kills it, in both kernels, as the native kernel already killed
a start made as its stop came (it ran, if only for a moment: its ``?JOBID`` stands, and the
watchdog's report lists it). Before, the task ran on after its rank, unwatched: a rerun of its
job would run beside it. Real threads, real processes, a real watchdog."""
from __future__ import annotations

import os
import signal

import pytest
from launcher_support import wait_for
from spawn_support import held, held_rank, reaped, reported_starts
from test_spawn_chain import serve, shell
from test_spawn_stalls import children

from balsam.launcher import spawn_native, spawn_threads
from balsam.launcher.serial_worker import Work


def watched(epfd: int) -> int:
    """How many descriptors the epoll ``epfd`` watches (``tfd:`` lines of its fdinfo)."""
    with open(f"/proc/self/fdinfo/{epfd}") as fh:
        return sum(line.startswith("tfd:") for line in fh)


@pytest.mark.parametrize("kernel", ["python", "cython"])
def test_a_start_made_after_the_exits_wait_and_never_taken_over_is_killed_at_the_close(
        tmp_path, monkeypatch, kernel):
    if kernel == "cython" and spawn_native.KERNEL != "cython":
        pytest.skip(f"the kernel is not built here ({spawn_native.KERNEL_ERROR})")
    monkeypatch.setattr(spawn_native, "KERNEL", kernel)
    monkeypatch.setattr(spawn_threads, "SETTLE_SECONDS", 1.0)  # the exit's wait for starts
    tmp = str(tmp_path)
    with held_rank(tmp) as rank:
        inbox, worker = rank.inbox, rank.worker
        inbox.orders.append({"work": [shell(tmp, "m", "sleep 600")]})
        epfd = worker._poller.fileno()
        serve(worker, held, "the start to be held in its thread")
        count = watched(epfd)
        inbox.orders.append({"exit": True})
        serve(worker, lambda: inbox.flagged("bye"), "the goodbye")  # it gave up on the start
        rank.answer()  # the file system answers before the threads are closed
        wait_for(lambda: watched(epfd) > count, 30, "the start made (its pidfd watched)")
        rank.made = sorted(children() - rank.before)
        assert len(rank.made) == 1
        worker.close()
        status = wait_for(lambda: reaped(rank.made[0]), 10, "the task never taken over killed") - 1
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        rank.made = []
    assert inbox.collected("started") == []
    assert reported_starts(rank.report) == ["m"]  # made: it ran, if only for a moment


def test_a_start_that_failed_after_the_exits_wait_is_not_reported_started(tmp_path, monkeypatch):
    # The Python threads' start of a missing program fails past the last check (the program
    # is looked up in the start): failed and never taken over, it was never made, so its
    # "?m" is undone at the close, as the native kernel undoes a failed start's. Before, the
    # watchdog's report (no "=") listed a run that never was.
    monkeypatch.setattr(spawn_native, "KERNEL", "python")
    monkeypatch.setattr(spawn_threads, "SETTLE_SECONDS", 1.0)
    tmp = str(tmp_path)
    with held_rank(tmp) as rank:
        inbox, worker = rank.inbox, rank.worker
        missing = Work("m", ["no-such-program-here"], None, {}, os.path.join(tmp, "m"),
                       os.path.join(tmp, "m.out"), 1, 1)
        inbox.orders.append({"work": [missing]})
        serve(worker, held, "the start to be held in its thread")
        inbox.orders.append({"exit": True})
        serve(worker, lambda: inbox.flagged("bye"), "the goodbye")  # it gave up on the start
        rank.answer()
        wait_for(lambda: worker._spawns._done, 30, "the start to fail")  # type: ignore[union-attr]
        worker.close()
    assert children() - rank.before == set()
    assert inbox.collected("started") == [] and inbox.collected("failed") == []
    assert reported_starts(rank.report) == []  # its "?m" was undone ("^m"): no lost run
