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

import json
import os
import signal
import threading

import pytest
from launcher_support import Inbox, wait_for
from test_spawn_chain import marking, serve, shell
from test_spawn_chain_races import ran
from test_spawn_stalls import children, made_since

from balsam.launcher import spawn_native, spawn_threads
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Worker
from balsam.launcher.watchdog import Watchdog

pytestmark = pytest.mark.skipif(not spawn_threads.usable(), reason="no glibc posix_spawn here")

OPEN_CALLS = ("2", "257", "56")  # open (x86-64), openat (x86-64, arm64)


@pytest.fixture(autouse=True)
def python_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spawn_native, "KERNEL", "python")


def held() -> bool:
    """Whether a thread of this process is blocked opening a file (the hook's FIFO: nothing
    else here opens a file meanwhile)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/syscall") as fh:
                if fh.read().split()[0] in OPEN_CALLS:
                    return True
        except (OSError, IndexError):  # it ended meanwhile
            continue
    return False


def spawning_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("spawn-")]


def held_worker(tmp: str, dog: Watchdog) -> tuple[Inbox, Worker, str]:
    fifo = os.path.join(tmp, "hang")
    os.mkfifo(fifo)
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]}, kill_grace=0.5,
                    watchdog=dog)
    spawns = worker._spawns
    assert type(spawns) is spawn_threads.SpawnThreads
    spawns.hang_before_starts(fifo)
    inbox.orders.append({"work": [marking(tmp, "m")]})
    serve(worker, held, "the start to be held in its thread")
    return inbox, worker, fifo


def answer(fifo: str) -> None:
    """The file system answers: the blocked open of the FIFO returns."""
    os.close(os.open(fifo, os.O_WRONLY))


def reported_starts(path: str) -> list[str]:
    with open(path) as fh:
        found = json.load(fh)
    assert found["state"] == "stopped"
    return list(found["started"])


@pytest.mark.parametrize("order, key", [({"kill": ["m"]}, "killed"), ({"stop": 0.5}, "returned")])
def test_a_kill_or_stop_of_a_start_its_thread_has_not_begun_never_makes_the_task(
        tmp_path, order, key):
    tmp = str(tmp_path)
    report = os.path.join(tmp, "rank1.json")
    dog = Watchdog(5.0, report=report)
    before = children()  # (the watchdog)
    inbox, worker, fifo = held_worker(tmp, dog)
    released = False
    try:
        inbox.orders.append(dict(order))
        serve(worker, lambda: not inbox.orders, "the order obeyed")
        answer(fifo)
        released = True
        serve(worker, lambda: inbox.collected(key), f"m {key}")
        inbox.orders.append({"exit": True})
        serve(worker, lambda: inbox.flagged("bye"), "the goodbye")
    finally:
        if not released:
            answer(fifo)
        worker.close()
        dog.close()  # no "=": the report lists every start the watchdog was told of
    assert inbox.collected(key) == ["m"] and inbox.collected("started") == []
    assert made_since(before) == [] and ran(tmp, "m") == ""
    assert reported_starts(report) == []  # its "?m" was undone ("^m"): no lost run


def test_a_start_held_past_the_workers_exit_is_dropped_and_never_made(tmp_path, monkeypatch):
    tmp = str(tmp_path)
    monkeypatch.setattr(spawn_threads, "SETTLE_SECONDS", 1.0)  # the exit's wait for starts
    report = os.path.join(tmp, "rank1.json")
    dog = Watchdog(5.0, report=report)
    before = children()  # (the watchdog)
    inbox, worker, fifo = held_worker(tmp, dog)
    released = False
    try:
        inbox.orders.append({"exit": True})
        serve(worker, lambda: inbox.flagged("bye"), "the goodbye")
        closer = threading.Thread(target=worker.close, daemon=True)
        closer.start()
        closer.join(60)
        assert not closer.is_alive()
        answer(fifo)  # the file system answers after the rank gave up on the start
        released = True
        wait_for(lambda: not spawning_threads(), 30, "the held thread to end")
    finally:
        if not released:
            answer(fifo)
        dog.close()
    assert made_since(before) == [] and ran(tmp, "m") == ""
    assert inbox.collected("started") == []
    assert reported_starts(report) == []  # dropped: its "?m" was undone


def test_a_start_its_thread_made_after_the_workers_exit_is_killed_at_once(tmp_path, monkeypatch):
    # Held past its last check (the output file's open on a hung file system: here a FIFO
    # opened first), the start is made once the file system answers -- after the rank gave up
    # on it and closed its threads: nothing would reap, report or stop it, so it is killed at
    # once, as the native kernel kills one made as its stop came (its "?m" stands: it ran).
    # Before, the task ran on unwatched (and the thread died on the closed epoll).
    tmp = str(tmp_path)
    fifo = os.path.join(tmp, "hang")
    os.mkfifo(fifo)
    real_open = spawn_threads.libc_spawn.open_output

    def hung_open(program: str, cwd: str, output_path: str) -> int:
        os.close(os.open(fifo, os.O_RDONLY))
        return real_open(program, cwd, output_path)

    monkeypatch.setattr(spawn_threads.libc_spawn, "open_output", hung_open)
    monkeypatch.setattr(spawn_threads, "SETTLE_SECONDS", 1.0)
    report = os.path.join(tmp, "rank1.json")
    dog = Watchdog(5.0, report=report)
    before = children()  # (the watchdog)
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]}, kill_grace=0.5,
                    watchdog=dog)
    inbox.orders.append({"work": [shell(tmp, "m", "sleep 600")]})
    released, made = False, []
    try:
        serve(worker, held, "the start to be held in its thread")
        inbox.orders.append({"exit": True})
        serve(worker, lambda: inbox.flagged("bye"), "the goodbye")
        closer = threading.Thread(target=worker.close, daemon=True)
        closer.start()
        closer.join(60)
        assert not closer.is_alive()
        answer(fifo)  # the file system answers after the rank gave up on the start
        released = True
        wait_for(lambda: not spawning_threads(), 30, "the held thread to end")
        made = sorted(children() - before)
        assert len(made) == 1
        status = wait_for(lambda: reaped(made[0]), 10, "the task made late to be killed") - 1
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        made = []
    finally:
        if not released:
            answer(fifo)
        for pid in made:  # (the task ran on: stopped here)
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        dog.close()
    assert inbox.collected("started") == []
    assert reported_starts(report) == ["m"]  # begun: it ran, if only for a moment


def reaped(pid: int) -> int:
    """``pid``'s wait status (+1, so that 0 counts) once it ended (reaped now), else 0."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return status + 1 if done == pid else 0
