"""The pure-Python spawning threads (:mod:`balsam.launcher.spawn_threads`, the fallback where the
Cython kernel is not built) withdraw a start they have not begun, as the native kernel does
(session 21): a kill or stop of its job, or the worker's exit, while the thread is held before
the start (here by the test hook :meth:`SpawnThreads.hang_before_starts`: it opens a FIFO for
reading first, as a directory lookup on a hung file system would block) means the task is never
made, and the ``?JOBID`` line the loop wrote for it is undone (``^JOBID``), so the task
watchdog's report lists no run that never was. Before, the thread made the task once it went
on: after the kill (the task ran, then was signalled), or after the worker had exited (the task
ran unwatched, and the report counted it). Real threads, real processes, a real watchdog."""
from __future__ import annotations

import os
import signal
import threading

import pytest
from launcher_support import wait_for
from spawn_support import HeldRank, exit_and_close, held, held_rank, kill_or_stop, reaped, reported_starts
from test_spawn_chain import marking, serve, shell
from test_spawn_chain_races import ran
from test_spawn_stalls import children, made_since

from balsam.launcher import spawn_native, spawn_threads

pytestmark = pytest.mark.skipif(not spawn_threads.usable(), reason="no glibc posix_spawn here")


@pytest.fixture(autouse=True)
def python_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spawn_native, "KERNEL", "python")


def spawning_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("spawn-")]


def held_start(rank: HeldRank) -> None:
    """``m`` asked for, its start held in its Python spawning thread."""
    assert type(rank.worker._spawns) is spawn_threads.SpawnThreads
    rank.inbox.orders.append({"work": [marking(rank.tmp, "m")]})
    serve(rank.worker, held, "the start to be held in its thread")


@pytest.mark.parametrize("order, key", [({"kill": ["m"]}, "killed"), ({"stop": 0.5}, "returned")])
def test_a_kill_or_stop_of_a_start_its_thread_has_not_begun_never_makes_the_task(
        tmp_path, order, key):
    tmp = str(tmp_path)
    with held_rank(tmp) as rank:
        held_start(rank)
        kill_or_stop(rank, order, key)
    inbox = rank.inbox
    assert inbox.collected(key) == ["m"] and inbox.collected("started") == []
    assert made_since(rank.before) == [] and ran(tmp, "m") == ""
    assert reported_starts(rank.report) == []  # its "?m" was undone ("^m"): no lost run


def test_a_start_held_past_the_workers_exit_is_dropped_and_never_made(tmp_path, monkeypatch):
    tmp = str(tmp_path)
    monkeypatch.setattr(spawn_threads, "SETTLE_SECONDS", 1.0)  # the exit's wait for starts
    with held_rank(tmp) as rank:
        held_start(rank)
        assert exit_and_close(rank)
        rank.answer()  # the file system answers after the rank gave up on the start
        wait_for(lambda: not spawning_threads(), 30, "the held thread to end")
    assert made_since(rank.before) == [] and ran(tmp, "m") == ""
    assert rank.inbox.collected("started") == []
    assert reported_starts(rank.report) == []  # dropped: its "?m" was undone


def test_a_start_its_thread_made_after_the_workers_exit_is_killed_at_once(tmp_path, monkeypatch):
    # Held past its last check (the output file's open on a hung file system: here a FIFO
    # opened first), the start is made once the file system answers -- after the rank gave up
    # on it and closed its threads: nothing would reap, report or stop it, so it is killed at
    # once, as the native kernel kills one made as its stop came (its "?m" stands: it ran).
    # Before, the task ran on unwatched (and the thread died on the closed epoll).
    tmp = str(tmp_path)
    real_open = spawn_threads.libc_spawn.open_output
    fifo = os.path.join(tmp, "hang")

    def hung_open(program: str, cwd: str, output_path: str) -> int:
        os.close(os.open(fifo, os.O_RDONLY))
        return real_open(program, cwd, output_path)

    monkeypatch.setattr(spawn_threads.libc_spawn, "open_output", hung_open)
    monkeypatch.setattr(spawn_threads, "SETTLE_SECONDS", 1.0)
    with held_rank(tmp, hook=False) as rank:
        inbox, worker = rank.inbox, rank.worker
        inbox.orders.append({"work": [shell(tmp, "m", "sleep 600")]})
        serve(worker, held, "the start to be held in its thread")
        assert exit_and_close(rank)
        rank.answer()  # the file system answers after the rank gave up on the start
        wait_for(lambda: not spawning_threads(), 30, "the held thread to end")
        rank.made = sorted(children() - rank.before)
        assert len(rank.made) == 1
        status = wait_for(lambda: reaped(rank.made[0]), 10, "the task made late to be killed") - 1
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        rank.made = []
    assert inbox.collected("started") == []
    assert reported_starts(rank.report) == ["m"]  # begun: it ran, if only for a moment
