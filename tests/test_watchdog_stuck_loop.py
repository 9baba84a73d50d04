"""A serial worker's loop never waits for its task watchdog (session 20, branch s20-spawnblock):
with the watchdog alive but reading nothing (a real watchdog process this test started,
SIGSTOPped, its pipe shrunk to one page and filled), each loop iteration still returns, orders
are still obeyed, no task starts whose ``?JOBID`` the watchdog could not read (it waits in the
queue), the lines a full pipe refused after a start (``+PGID JOBID``, ``-PGID``) are held and
written once the watchdog reads again, and the rank's log says so once. Only the watchdog this
test started is ever signalled (by its pid). Conditions are waited for, bounded."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
from typing import Any, Callable

from launcher_support import Inbox, wait_for
from test_spawn_chain import gated, marking, native, serve
from test_spawn_chain_races import ran
from test_spawn_stalls import F_SETPIPE_SZ, fill

from balsam.launcher import pipe_lines
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
