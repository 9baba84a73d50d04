"""The task watchdog's report after starts the spawning kernel dropped (review of session 20's
s20-spawnblock, branch s20-revspawn): a start the loop announced (``?JOBID``) that never
happened must not be reported started at the rank's end (the launcher would record a run
that never was: a lost run charged to the job). Real watchdog, real kernel, real processes;
conditions are waited for, bounded."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time

from launcher_support import Inbox, wait_for
from spawn_support import answer, exit_and_close, held_rank
from test_spawn_chain import marking, native, serve
from test_spawn_chain_races import Kernel, ran
from test_spawn_hung_dir import hung_start, lookup_hangs
from test_spawn_stalls import F_SETPIPE_SZ, made_since, spawning_threads

from balsam.launcher import spawn_threads
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Work, Worker
from balsam.launcher.watchdog import Watchdog
from balsam.site import pyfunc

pytestmark = native


def test_a_start_dropped_at_the_workers_exit_is_not_reported_started(tmp_path, monkeypatch):
    # The exit's wait for starts in flight gives up on one whose directory lookup hangs; the
    # kernel's stop drops it (never made): its "?m" must be undone, or the watchdog's report
    # (no "=": an exit the master could not say was recorded) lists a run that never was.
    tmp = str(tmp_path)
    monkeypatch.setattr(spawn_threads, "SETTLE_SECONDS", 1.0)
    with held_rank(tmp) as rank:
        hung_start(rank)
        assert exit_and_close(rank) and rank.worker._spawns.stuck == 1  # type: ignore[union-attr]
        rank.answer()
    wait_for(lambda: not spawning_threads(), 30, "the stuck thread to end")
    assert made_since(rank.before) == [] and ran(tmp, "m") == ""
    assert rank.inbox.collected("started") == []
    with open(rank.report) as fh:
        found = json.load(fh)
    assert found["started"] == [], found


def _long(tmp: str, name: str) -> Work:
    """A shell task whose job id is ~1.8 KB long: two ``?JOBID`` lines fill most of a page."""
    job_id = name + "x" * 1800
    return Work(job_id, ["sh", "-c", f"echo ran >> {os.path.join(tmp, name + '.ran')}"], None,
                {}, os.path.join(tmp, name), os.path.join(tmp, name + ".out"), 4, 1)


def test_a_task_requeued_behind_a_function_task_after_a_refused_write_is_counted_once(
        tmp_path):
    # The pipe (one page) takes "?A ?B" and refuses "?C" (a second page): the batch is cut at
    # the function task F (its line would come after its start), so B goes back to the queue
    # although its "?B" went in. B's next start writes "?B" again: the first must be undone
    # ("^B"), or the report lists B twice (a second, lost run recorded).
    tmp = str(tmp_path)
    report = os.path.join(tmp, "rank1.json")
    dog = Watchdog(5.0, report=report)
    assert dog.proc is not None
    stopped = False
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]}, kill_grace=0.5,
                    watchdog=dog)
    a, b, c = (_long(tmp, n) for n in "abc")
    f = Work("f", [sys.executable, "-m", pyfunc.RUNNER_MODULE], None, {},
             os.path.join(tmp, "f"), os.path.join(tmp, "f.out"), 4, 1)
    try:
        fcntl.fcntl(dog._fd, F_SETPIPE_SZ, 4096)
        os.kill(dog.proc.pid, signal.SIGSTOP)  # our own child: reads nothing from now
        stopped = True
        inbox.orders.append({"work": [a, f, b, c]})
        serve(worker, lambda: inbox.collected("started") == [a.job_id], "A started")
        assert [w.job_id for w in worker.queue] == ["f", b.job_id, c.job_id]
        inbox.orders.append({"kill": ["f"]})  # (never run: no warm process needed)
        serve(worker, lambda: inbox.collected("killed") == ["f"], "f killed")
        os.kill(dog.proc.pid, signal.SIGCONT)
        stopped = False
        serve(worker, lambda: len(inbox.collected("done")) == 3, "A, B and C done")
        inbox.orders.append({"exit": True})
        serve(worker, lambda: inbox.flagged("bye"), "the goodbye")
    finally:
        if stopped:
            os.kill(dog.proc.pid, signal.SIGCONT)
        worker.close()
        dog.close()  # no "=": the report lists every start it heard of
    assert [ran(tmp, n) for n in "abc"] == ["ran\n"] * 3
    with open(report) as fh:
        found = json.load(fh)
    assert sorted(job[:1] for job in found["started"]) == ["a", "b", "c"]  # (b twice: bug)


def test_a_thread_left_stuck_does_not_keep_the_watchdogs_pipe_open(tmp_path):
    # The kernel writes its notes through a dup of the loop's end of the pipe (watch). A
    # thread left stuck by close() (its lookup hangs) keeps the spawner, and so that dup:
    # the watchdog would read no end of file while this process lives (the owner's close
    # waits for it in vain; its report comes only after the rank's exit).
    tmp = str(tmp_path)
    fifo = os.path.join(tmp, "hang")
    os.mkfifo(fifo)
    report = os.path.join(tmp, "rank1.json")
    dog = Watchdog(5.0, report=report)
    dog.never_wait()
    kernel = Kernel()
    released = False
    try:
        kernel.spawns.watch(dog._fd)
        assert kernel.spawns.watched
        kernel.spawns._spawner.hang_dirs(os.fsencode(fifo))
        kernel.submit(marking(tmp, "m"))
        wait_for(lookup_hangs, 30, "the lookup to hang")
        kernel.spawns.close(0.2)
        assert kernel.spawns.stuck == 1 and kernel.spawns.dropped == ["m"]
        dog.hang_up()  # the loop's end closed: the dup is the last writer, if any
        proc = dog.proc
        assert proc is not None
        wait_for(lambda: proc.poll() is not None, 30, "the watchdog to read end of file")
        dog.reap()
        with open(report) as fh:
            assert json.load(fh)["state"] == "stopped"
        answer(fifo)
        released = True
    finally:
        if not released:
            answer(fifo)
        wait_for(lambda: not spawning_threads(), 30, "the stuck thread to end")
        kernel.poller.close()
        dog.close()
    assert ran(tmp, "m") == ""


def test_a_kill_racing_the_start_is_reported_once_as_made_or_withdrawn(tmp_path):
    # Withdraw (a kill of a start in flight) at every point of the thread's start, many
    # times: each start comes back exactly once, withdrawn (never made: it never ran) or made
    # (then ended by the loop's mark), never both, never neither.
    tmp = str(tmp_path)
    fds = len(os.listdir("/proc/self/fd"))
    kernel = Kernel()
    made = withdrawn = 0
    try:
        for i in range(300):
            work = marking(tmp, f"t{i}")
            kernel.submit(work)
            if i % 3:
                time.sleep(i % 7 * 0.00005)  # (a spread of moments, not a wait for anything)
            assert kernel.spawns.mark(work.job_id, "kill", 0.1)
            s = kernel.wait(work.job_id)
            assert s.why == "kill" and (s.withdrawn == (s.task is None))
            if s.task is not None:
                made += 1
                s.task.terminate(0.1)
                wait_for(lambda t=s.task: t.poll() is not None or t.enforce_kill(), 30,
                         f"t{i} to end")
            else:
                withdrawn += 1
                assert s.returned and ran(tmp, f"t{i}") == ""  # (its output file may be made)
        assert len(kernel.order) == len(set(kernel.order)) == 300
        assert kernel.collected("none") is None and kernel.spawns.in_flight == 0
    finally:
        kernel.ended()
    assert made + withdrawn == 300 and withdrawn > 0
    assert len(os.listdir("/proc/self/fd")) == fds  # no directory (O_PATH) or pidfd left open
