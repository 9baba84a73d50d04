"""A rank whose starts are held, for the tests of starts on a hung file system
(tests/test_spawn_threads_withdraw.py, test_spawn_hung_dir.py, test_spawn_late_starts.py,
test_spawn_dropped_report.py): a real worker (with a real task watchdog) whose every start first
opens a FIFO for reading, as a lookup on a hung file system would block, until the test
answers (opens it for writing). The kernels' test hooks: ``SpawnThreads.hang_before_starts``
(the Python threads) and ``Spawner.hang_dirs`` (the native kernel)."""
from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from launcher_support import Inbox
from test_spawn_chain import serve
from test_spawn_stalls import children

from balsam.launcher import spawn_threads
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Worker
from balsam.launcher.watchdog import Watchdog

OPEN_CALLS = ("2", "257", "56")  # open (x86-64), openat (x86-64, arm64)


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


def answer(fifo: str) -> None:
    """The file system answers: the blocked open of the FIFO returns."""
    os.close(os.open(fifo, os.O_WRONLY))


def hold(worker: Worker, fifo: str) -> None:
    """Each start of ``worker`` first opens ``fifo`` (blocks until it is opened for writing), as
    a lookup on a hung file system would: the kernels' test hooks, before the last check."""
    spawns = worker._spawns
    if type(spawns) is spawn_threads.SpawnThreads:
        spawns.hang_before_starts(fifo)
    else:
        spawns._spawner.hang_dirs(os.fsencode(fifo))  # type: ignore[union-attr]


@dataclass
class HeldRank:
    """The worker, its inbox, its watchdog (None: none) and what the cleanup needs: whether the
    FIFO was answered, and the tasks made that it must kill."""
    tmp: str
    fifo: str
    report: str
    dog: Watchdog | None
    before: set[int]  # this process's children before the worker (the watchdog among them)
    inbox: Inbox
    worker: Worker
    released: bool = False
    made: list[int] = field(default_factory=list)

    def answer(self) -> None:
        answer(self.fifo)
        self.released = True


@contextmanager
def held_rank(tmp: str, watchdog: bool = True, hook: bool = True) -> Iterator[HeldRank]:
    """A :class:`HeldRank` in ``tmp`` (its watchdog's report: ``rank1.json``; ``hook`` False:
    the kernel's hook is not set, the test holds the starts on ``fifo`` itself); on the way out,
    the FIFO is answered if the test did not, the tasks in ``made`` are killed and reaped, and
    the worker and the watchdog are closed (no "=": the report lists every start it heard of)."""
    fifo = os.path.join(tmp, "hang")
    os.mkfifo(fifo)
    report = os.path.join(tmp, "rank1.json")
    dog = Watchdog(5.0, report=report) if watchdog else None
    before = children()
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]}, kill_grace=0.5,
                    watchdog=dog)
    rank = HeldRank(tmp, fifo, report, dog, before, inbox, worker)
    try:
        if hook:
            hold(worker, fifo)
        yield rank
    finally:
        if not rank.released:
            answer(fifo)
        for pid in rank.made:  # (the task ran on: stopped here)
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        worker.close()
        if dog is not None:
            dog.close()


def kill_or_stop(rank: HeldRank, order: dict, key: str) -> None:
    """The master's kill or stop ``order`` while the start of ``m`` is held; then the file
    system answers, the worker reports ``m`` under ``key``, exits and says goodbye."""
    inbox, worker = rank.inbox, rank.worker
    inbox.orders.append(dict(order))
    serve(worker, lambda: not inbox.orders, "the order obeyed")
    rank.answer()
    serve(worker, lambda: inbox.collected(key), f"m {key}")
    inbox.orders.append({"exit": True})
    serve(worker, lambda: inbox.flagged("bye"), "the goodbye")


def exit_and_close(rank: HeldRank) -> bool:
    """The worker's exit until its goodbye (it gives up on the held start), then its close in a
    thread of its own; whether the close returned (within 60 s)."""
    rank.inbox.orders.append({"exit": True})
    serve(rank.worker, lambda: rank.inbox.flagged("bye"), "the goodbye")
    closer = threading.Thread(target=rank.worker.close, daemon=True)
    closer.start()
    closer.join(60)
    return not closer.is_alive()


def reaped(pid: int) -> int:
    """``pid``'s wait status (+1, so that 0 counts) once it ended (reaped now), else 0."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return status + 1 if done == pid else 0


def reported_starts(path: str) -> list[str]:
    with open(path) as fh:
        found = json.load(fh)
    assert found["state"] == "stopped"
    return list(found["started"])
