"""A task's directory on a hung file system (session 20, branch s20-spawnblock): a native
spawning thread looks it up itself (``bs_posix_spawn`` in ``_spawner_bounds.h``: opened, then
``fchdir`` in the child), so a lookup that hangs holds the thread *before* ``posix_spawn``,
where a stop, the worker's exit or a kill or stop of the job is seen once the lookup returns:
the task is never made. Before, the ``vfork`` child hung in ``chdir`` and ran the task once
the file system answered: after the loop had given up on it, after a kill, or after the rank
had exited (the child outlives it, unwatched). The hang is the kernel's test hook
``Spawner.hang_dirs``: the lookup first opens a FIFO for reading, which blocks until the test
opens it for writing. Conditions are waited for, bounded."""
from __future__ import annotations

import json
import os
import threading

import pytest
from launcher_support import Inbox, wait_for
from test_spawn_chain import marking, native, serve
from test_spawn_chain_races import ran
from test_spawn_stalls import children, made_since, spawning_threads

from balsam.launcher import spawn_threads
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Worker
from balsam.launcher.watchdog import Watchdog

pytestmark = native

OPEN_CALLS = ("2", "257", "56")  # open (x86-64), openat (x86-64, arm64)


def _in_open(path: str) -> bool:
    try:
        with open(path) as fh:
            return fh.read().split()[0] in OPEN_CALLS
    except (OSError, IndexError):
        return False


def lookup_hangs() -> bool:
    """Whether a spawning thread, or a child of this process (a ``vfork`` child before its
    ``exec``), is blocked opening the hook's FIFO (in ``open``/``openat``)."""
    for tid in spawning_threads():
        if _in_open(f"/proc/self/task/{tid}/syscall"):
            return True
    return any(_in_open(f"/proc/{pid}/syscall") for pid in children())


def answer(fifo: str) -> None:
    """The file system answers: the blocked open of the FIFO returns."""
    os.close(os.open(fifo, os.O_WRONLY))


def hung_worker(tmp: str, dog: Watchdog | None = None) -> tuple[Inbox, Worker, str]:
    fifo = os.path.join(tmp, "hang")
    os.mkfifo(fifo)
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]}, kill_grace=0.5,
                    watchdog=dog)
    worker._spawns._spawner.hang_dirs(os.fsencode(fifo))  # type: ignore[union-attr]
    inbox.orders.append({"work": [marking(tmp, "m")]})
    serve(worker, lookup_hangs, "the start's directory lookup to hang")
    return inbox, worker, fifo


def test_a_start_whose_directory_lookup_hangs_past_the_workers_exit_is_never_made(
        tmp_path, monkeypatch):
    tmp = str(tmp_path)
    monkeypatch.setattr(spawn_threads, "SETTLE_SECONDS", 1.0)  # the exit's wait for starts
    before = children()
    inbox, worker, fifo = hung_worker(tmp)
    spawns = worker._spawns
    released = False
    try:
        inbox.orders.append({"exit": True})
        serve(worker, lambda: inbox.flagged("bye"), "the goodbye")
        closer = threading.Thread(target=worker.close, daemon=True)
        closer.start()
        closer.join(60)
        assert not closer.is_alive() and spawns.stuck == 1  # type: ignore[union-attr]
        answer(fifo)  # the file system answers after the rank gave up on the start
        released = True
    finally:
        if not released:
            answer(fifo)
        wait_for(lambda: not spawning_threads(), 30, "the stuck thread to end")
    assert made_since(before) == [] and ran(tmp, "m") == ""
    assert inbox.collected("started") == []


@pytest.mark.parametrize("order, key", [({"kill": ["m"]}, "killed"), ({"stop": 0.5}, "returned")])
def test_a_kill_or_stop_during_a_hung_directory_lookup_never_makes_the_task(
        tmp_path, order, key):
    tmp = str(tmp_path)
    report = os.path.join(tmp, "rank1.json")
    dog = Watchdog(5.0, report=report)
    before = children()  # (the watchdog)
    inbox, worker, fifo = hung_worker(tmp, dog)
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
    with open(report) as fh:
        assert json.load(fh)["started"] == []  # its "?m" was undone ("^m"): no lost run
