"""A serial worker's loop never waits for its task watchdog (session 20, branch s20-spawnblock):
with the watchdog alive but reading nothing (a real watchdog process this test started,
SIGSTOPped, its pipe shrunk to one page and filled), each loop iteration still returns, orders
are still obeyed, no task starts whose ``?JOBID`` the watchdog could not read (it waits in the
queue), the lines a full pipe refused after a start (``+PGID JOBID``, ``-PGID``) are held and
written once the watchdog reads again, and the rank's log says so once. Only the watchdog this
test started is ever signalled (by its pid). And without ``/proc`` the kernel's notes go
through a dup of the loop's (non-blocking) end of the pipe. Conditions are waited for,
bounded."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
from typing import Any, Callable

from launcher_support import Inbox, wait_for
from test_spawn_chain import gated, marking, native, serve
from test_spawn_chain_races import Kernel, ran
from test_spawn_stalls import F_SETPIPE_SZ, fill

from balsam.launcher import pipe_lines, spawn_native
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Worker
from balsam.launcher.watchdog import Watchdog


def step_returns(worker: Worker, seconds: float) -> bool:
    """Whether one loop iteration (``step`` then a 1 ms wait) returns within ``seconds`` (run
    on a thread: a blocked write would otherwise hang the test)."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (worker.step(), worker.wait(1), done.set()),
                              daemon=True)
    thread.start()
    return done.wait(seconds)


def iterate(worker: Worker, until: Callable[[], Any], what: str) -> None:
    """Loop iterations (each must return within 10 s) until ``until()`` (bounded: 60 s)."""
    def one() -> Any:
        assert step_returns(worker, 10), "a loop iteration waited for the stuck watchdog"
        return until()
    wait_for(one, 60, what, interval=0)


@native
def test_a_stuck_watchdog_never_blocks_the_loop_and_no_task_starts_unannounced(
        tmp_path, monkeypatch):
    tmp = str(tmp_path)
    monkeypatch.setattr(pipe_lines, "STUCK_SECONDS", 0.2)
    gate = os.path.join(tmp, "gate")
    said: list[str] = []
    report = os.path.join(tmp, "rank1.json")
    dog = Watchdog(5.0, log=said.append, report=report)
    assert dog.proc is not None
    stopped = False
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]}, kill_grace=0.5,
                    watchdog=dog)
    try:
        inbox.orders.append({"work": [gated(tmp, "g0", gate)]})
        serve(worker, lambda: "g0" in worker.running and not (dog.out.held or dog.out.deferred),
              "g0 runs, its +PGID line written")
        fcntl.fcntl(dog._fd, F_SETPIPE_SZ, 4096)
        os.kill(dog.proc.pid, signal.SIGSTOP)  # our own child: alive, reading nothing
        stopped = True
        assert fill(dog._fd) > 0
        # g0 ends (its -PGID refused: held); a and b queued: their ?JOBID lines are refused
        inbox.orders.append({"work": [marking(tmp, "a"), marking(tmp, "b")]})
        open(gate, "w").close()
        iterate(worker, lambda: inbox.collected("done") == ["g0"], "g0 reaped beside it")
        assert dog.out.held  # g0's "-PGID" waits for room
        iterate(worker, lambda: said, "the log line")

        def queued() -> bool:  # (chained behind g0 first, they come back unnoted: the kernel's)
            return [w.job_id for w in worker.queue] == ["a", "b"] and not worker._in_flight()
        iterate(worker, queued, "a and b back in the queue")
        count = iter(range(20))
        iterate(worker, lambda: next(count, None) is None, "20 more iterations")
        assert queued()
        assert inbox.collected("started") == ["g0"] and ran(tmp, "a") == ""
        inbox.orders.append({"kill": ["b"]})  # orders are obeyed meanwhile
        iterate(worker, lambda: inbox.collected("killed"), "b killed")
        assert inbox.collected("killed") == ["b"] and len(said) == 1
        os.kill(dog.proc.pid, signal.SIGCONT)
        stopped = False
        serve(worker, lambda: inbox.collected("done") == ["g0", "a"], "a done")
        assert not dog.out.held and len(said) == 2 and "reads again" in said[1]
        inbox.orders.append({"exit": True})
        serve(worker, lambda: inbox.flagged("bye"), "the goodbye")
    finally:
        open(gate, "w").close()
        if stopped:
            os.kill(dog.proc.pid, signal.SIGCONT)
        worker.close()
        dog.close()  # no "=": the report lists every start it heard of
    assert ran(tmp, "a") == "ran\n" and ran(tmp, "b") == ""
    with open(report) as fh:
        found = json.load(fh)
    assert found["state"] == "stopped" and sorted(found["started"]) == ["a", "g0"]


@native
def test_without_proc_chained_starts_are_made_and_announced_through_the_loops_own_pipe(
        tmp_path, monkeypatch):
    # A container without /proc (or none mounted): the kernel's notes cannot open the
    # watchdog's pipe anew. The loop's own end is non-blocking now (never_wait), so a dup of it
    # serves; every chained start is still told to the watchdog before it is made.
    tmp = str(tmp_path)
    os.mkdir(os.path.join(tmp, "noproc"))
    monkeypatch.setattr(spawn_native, "PROC_FDS", os.path.join(tmp, "noproc"))
    gate = os.path.join(tmp, "gate")
    report = os.path.join(tmp, "rank1.json")
    dog = Watchdog(5.0, report=report)
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]}, kill_grace=0.5,
                    watchdog=dog)
    try:
        inbox.orders.append({"work": [gated(tmp, "g0", gate), marking(tmp, "f1"),
                                      marking(tmp, "f2")]})
        serve(worker, lambda: worker.chained, "a chained start")
        open(gate, "w").close()
        serve(worker, lambda: len(inbox.collected("done")) == 3, "all three done")
        inbox.orders.append({"exit": True})
        serve(worker, lambda: inbox.flagged("bye"), "the goodbye")
    finally:
        open(gate, "w").close()
        worker.close()
        dog.close()  # no "=": the report lists every start it heard of
    assert worker._spawns.watched and worker._spawns.unnoted == 0  # type: ignore[union-attr]
    assert ran(tmp, "f1") == "ran\n" and ran(tmp, "f2") == "ran\n"
    with open(report) as fh:
        assert sorted(json.load(fh)["started"]) == ["f1", "f2", "g0"]


@native
def test_without_proc_a_blocking_pipe_is_not_watched_and_nothing_is_chained(tmp_path,
                                                                             monkeypatch):
    # The fallback where no dup will do (an owner whose writes block): plain starts.
    os.mkdir(os.path.join(str(tmp_path), "noproc"))
    monkeypatch.setattr(spawn_native, "PROC_FDS", os.path.join(str(tmp_path), "noproc"))
    dog = Watchdog(5.0)
    kernel = Kernel()
    try:
        kernel.spawns.watch(dog._fd)
        assert not kernel.spawns.watched and not kernel.spawns.chains
        assert os.get_blocking(dog._fd)
    finally:
        kernel.ended()
        dog.close()
