"""A native spawning thread never waits for good (the kernel ``_spawner.h``): a chained start
whose ``?JOBID`` note cannot be written because the task watchdog lives but reads nothing (its
pipe full: here a real watchdog stopped with SIGSTOP, its pipe shrunk to one page and filled)
comes back *returned*, unstarted, within about a second, and the spawner counts it; and
``close`` gives up waiting for a thread stuck in a system call (a ``mkdir`` on a hung file
system: here the kernel's test hook ``Spawner.hang_mkdirs``, a blocking read before the
``mkdir``), which then starts nothing once it returns; a kill that comes while a chained start
waits to write its note is too late to withdraw it (moved here from test_spawn_chain_races.py).
Conditions are waited for, bounded."""
from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import threading
import time

import pytest
from launcher_support import wait_for
from test_spawn_chain import gated, marking, native, serve, worker_for
from test_spawn_chain_races import Kernel, ran

from balsam.launcher import spawn_native, spawn_threads
from balsam.launcher.watchdog import Watchdog

pytestmark = native

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def fill(pipe_fd: int) -> int:
    """Fill the pipe behind ``pipe_fd`` with harmless whole lines (``#x``: "forget job x"),
    through a non-blocking open of its own; the bytes written."""
    own = os.open(f"/proc/self/fd/{pipe_fd}", os.O_WRONLY | os.O_NONBLOCK)
    written = 0
    try:
        while True:
            written += os.write(own, b"#x\n")
    except BlockingIOError:
        return written
    finally:
        os.close(own)


def spawning_threads() -> list[str]:
    """This process's threads named ``balsam-spawn`` (their ids)."""
    found = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as fh:
                if fh.read().strip() == "balsam-spawn":
                    found.append(tid)
        except (FileNotFoundError, ProcessLookupError):  # it ended meanwhile
            continue
    return found


def reading(fd: int) -> bool:
    """Whether a spawning thread is blocked in ``read(fd)`` (system call 0 on x86-64 and
    63 on arm64; its first argument is the descriptor)."""
    for tid in spawning_threads():
        try:
            with open(f"/proc/self/task/{tid}/syscall") as fh:
                fields = fh.read().split()
        except OSError:
            continue
        if len(fields) > 1 and fields[0] in ("0", "63") and int(fields[1], 16) == fd:
            return True
    return False


def children() -> set[int]:
    """This process's child processes (zombies too: a task made and never reaped is one)."""
    found: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as fh:
                found.update(int(pid) for pid in fh.read().split())
        except (FileNotFoundError, ProcessLookupError):  # that thread ended meanwhile
            continue
    return found


def made_since(before: set[int]) -> list[int]:
    """The children made since ``before`` (reaped here: none is left behind)."""
    new = sorted(children() - before)
    for pid in new:
        os.waitpid(pid, 0)
    return new


def test_a_chained_start_the_stuck_watchdog_cannot_hear_of_comes_back_unstarted(tmp_path):
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    dog = Watchdog(5.0)
    assert dog.proc is not None
    kernel = Kernel()
    try:
        fcntl.fcntl(dog._fd, F_SETPIPE_SZ, 4096)
        os.kill(dog.proc.pid, signal.SIGSTOP)  # alive, reading nothing
        assert fill(dog._fd) > 0
        kernel.spawns.watch(dog._fd)
        assert kernel.spawns.watched
        kernel.submit(gated(tmp, "h", gate))
        h = kernel.wait("h")
        kernel.submit(marking(tmp, "f"), after=os.dup(h.fd), note=b"?f\n")
        open(gate, "w").close()  # h ends: f's thread cannot write its note
        began = time.monotonic()
        f = kernel.wait("f")  # (15 s: without the bound the thread waits for the watchdog)
        assert f.returned and f.task is None and f.error is None
        assert time.monotonic() - began < 10
        assert kernel.spawns.unnoted == 1 and kernel.spawns.in_flight == 0
        assert ran(tmp, "f") == ""
    finally:
        open(gate, "w").close()
        os.kill(dog.proc.pid, signal.SIGCONT)
        kernel.ended()
        dog.close()
    assert ran(tmp, "f") == ""  # handed back: never started, even once the watchdog read on


def test_the_spawner_is_closed_in_bounded_time_beside_a_thread_stuck_in_mkdir(tmp_path):
    tmp = str(tmp_path)
    hang_r, hang_w = os.pipe()
    kernel = Kernel()
    spawns = kernel.spawns
    closed = threading.Event()
    try:
        spawns._spawner.hang_mkdirs(hang_r)
        kernel.submit(marking(tmp, "m"))  # its directory is made by the thread: it hangs
        wait_for(lambda: reading(hang_r), 30, "the spawning thread in its hung mkdir")
        closer = threading.Thread(target=lambda: (spawns.close(1.0), closed.set()), daemon=True)
        began = time.monotonic()
        closer.start()
        closer.join(30)
        assert closed.is_set(), "close waited for the stuck thread"
        assert time.monotonic() - began < 10 and spawns.stuck == 1
        assert len(spawning_threads()) == 1  # left, detached
    finally:
        os.write(hang_w, b"x")  # the file system answers: the thread goes on, then ends
        wait_for(lambda: not spawning_threads(), 30, "the stuck thread to end")
        os.close(hang_r)
        os.close(hang_w)
        kernel.poller.close()
    assert ran(tmp, "m") == ""  # its mkdir returned after the stop: the task was not started


def test_a_worker_exits_beside_a_spawning_thread_stuck_in_mkdir(tmp_path, monkeypatch):
    tmp = str(tmp_path)
    monkeypatch.setattr(spawn_threads, "SETTLE_SECONDS", 1.0)  # the exit's wait for starts
    hang_r, hang_w = os.pipe()
    inbox, worker = worker_for([0])
    spawns = worker._spawns
    done = threading.Event()

    def leave() -> None:  # the rank's end: the master's exit, the goodbye, close
        inbox.orders.append({"exit": True})
        serve(worker, lambda: inbox.flagged("bye"), "the goodbye")
        worker.close()
        done.set()

    # made by the spawning thread, never by the preparer ahead (a race the preparer won under
    # load, seen under xdist: the start skipped its mkdir and so the hang)
    monkeypatch.setattr(worker._prep, "ahead", lambda cwd, output_path: None)
    try:
        spawns._spawner.hang_mkdirs(hang_r)  # type: ignore[union-attr]
        inbox.orders.append({"work": [marking(tmp, "m")]})
        serve(worker, lambda: reading(hang_r), "the spawning thread in its hung mkdir")
        closer = threading.Thread(target=leave, daemon=True)
        closer.start()
        closer.join(60)
        assert done.is_set(), "the worker's exit waited for the stuck thread"
        assert spawns.stuck == 1 and not inbox.collected("started")  # type: ignore[union-attr]
    finally:
        os.write(hang_w, b"x")
        wait_for(lambda: not spawning_threads(), 30, "the stuck thread to end")
        os.close(hang_r)
        os.close(hang_w)
    assert ran(tmp, "m") == ""


def in_note_wait() -> bool:
    """Whether the spawning thread waits for room for a note (``bs_note``): in ``poll`` (7,
    x86-64) or ``ppoll`` (271 x86-64, 73 arm64) on one descriptor with a finite timeout (its
    sleep between starts polls with none)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as fh:
                if fh.read().strip() != "balsam-spawn":
                    continue
            with open(f"/proc/self/task/{tid}/syscall") as fh:
                fields = fh.read().split()
        except OSError:
            continue
        if len(fields) > 3 and fields[0] in ("7", "271", "73") and int(fields[2], 16) == 1:
            timeout = int(fields[3], 16)  # (another spawning thread may sleep: look on)
            if timeout != 0 and timeout & 0xFFFFFFFF != 0xFFFFFFFF:
                return True
    return False


def spawning_wchan() -> str:
    """The kernel function the kernel's spawning thread sleeps in ("" if none or running;
    "0" where the kernel does not say). Its name varies with the kernel's version
    (``pipe_write``, ``anon_pipe_write``)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as fh:
                if fh.read().strip() != "balsam-spawn":
                    continue
            with open(f"/proc/self/task/{tid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] != "S":
                    return ""
            with open(f"/proc/self/task/{tid}/wchan") as fh:
                return fh.read().strip()
        except OSError:
            continue
    return ""


def test_a_kill_that_comes_after_a_chained_start_began_withdraws_it_before_its_spawn(tmp_path):
    # The thread has taken f1 (its predecessor ended) and is between its ?f1 line and
    # posix_spawn, waiting for room for that line in a full pipe (bounded: 60 s here): too
    # late to cancel it, but the kill's mark withdraws it (session 20: ``Spawner.withdraw``):
    # once the line goes in, the start is not made, the line is undone (^f1) and it comes
    # back withdrawn (the loop reports it killed). Before, it was made, then ended.
    tmp = str(tmp_path)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # (the kernel opens the pipe anew: its own flag)
    try:
        while True:
            os.write(write_end, b"=" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    k = Kernel()
    try:
        k.spawns.watch(write_end)
        k.spawns._spawner.note_wait(60)
        k.submit(marking(tmp, "g0"))
        g0 = k.wait("g0")
        if wait_for(spawning_wchan, 60, "the thread asleep") == "0":
            pytest.skip("this kernel does not name a thread's wait channel")
        k.submit(marking(tmp, "f1"), after=os.dup(g0.fd), note=b"?f1\n")
        wait_for(in_note_wait, 60, "the thread waiting to write ?f1")
        assert not k.spawns.cancel("f1") and k.spawns.mark("f1", "kill", 0.5)
        lines = b""
        while not lines.endswith(b"^f1\n"):  # drained: the line goes in, then its undoing
            lines += os.read(read_end, 65536)
        f1 = k.wait("f1")
    finally:
        os.set_blocking(read_end, False)  # room for a line the thread may still be writing
        try:
            while os.read(read_end, 65536):
                pass
        except BlockingIOError:
            pass
        k.ended()
        os.close(write_end)
        os.close(read_end)
    assert f1.task is None and f1.returned and f1.withdrawn and f1.why == "kill"
    assert lines.endswith(b"?f1\n^f1\n") and ran(tmp, "f1") == ""


def test_a_chained_start_whose_note_goes_in_after_the_stop_began_is_dropped_and_unnoted(
        tmp_path):
    # The thread waits to write ?f's note (the watchdog stopped, its pipe full) when close()
    # begins; the watchdog then reads on and the note goes in. The start must not be made
    # (nobody takes it over: its task would run unwatched, its job released to run
    # elsewhere), and the watchdog must not count a start that never happened (^f undoes ?f).
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    report = os.path.join(tmp, "dog.json")
    dog = Watchdog(5.0, report=report)
    assert dog.proc is not None
    k = Kernel()
    spawner = k.spawns._spawner
    closer = threading.Thread(target=lambda: k.spawns.close(60.0), daemon=True)
    before = children()  # (the watchdog)
    try:
        fcntl.fcntl(dog._fd, F_SETPIPE_SZ, 4096)
        os.kill(dog.proc.pid, signal.SIGSTOP)
        assert fill(dog._fd) > 0
        k.spawns.watch(dog._fd)
        spawner.note_wait(60)
        k.submit(gated(tmp, "h", gate))
        h = k.wait("h")
        k.submit(marking(tmp, "f"), after=os.dup(h.fd), note=b"?f\n")
        open(gate, "w").close()
        wait_for(in_note_wait, 60, "the thread waiting to write ?f")
        closer.start()
        wait_for(lambda: spawner.stopping, 30, "the stop to begin")
        os.kill(dog.proc.pid, signal.SIGCONT)  # room: ?f goes in after the stop began
        closer.join(60)
        assert not closer.is_alive() and k.spawns.stuck == 0
    finally:
        open(gate, "w").close()
        os.kill(dog.proc.pid, signal.SIGCONT)
        closer.join(60)
        k.ended()
        dog.close()
    assert made_since(before) == [] and ran(tmp, "f") == ""  # (h was reaped: ended())
    with open(report) as fh:
        assert json.load(fh)["started"] == []  # ?f was undone: no lost run recorded for f


def test_a_start_whose_second_mkdir_returns_after_the_stop_is_not_made(tmp_path):
    # Its directory was made ahead and removed since: the thread makes it again after the
    # first spawn failed (ENOENT), past the first check for the stop. It hangs there, the
    # stop gives up on it; once the mkdir returns the task must not start.
    tmp = str(tmp_path)
    hang_r, hang_w = os.pipe()
    poller = select.epoll()
    spawns = spawn_native.make({"PATH": os.environ["PATH"]}, poller)
    assert isinstance(spawns, spawn_native.NativeSpawns)
    work = marking(tmp, "p")  # (its directory does not exist)
    before = children()
    try:
        spawns._spawner.hang_mkdirs(hang_r)
        spawns.submit(work.job_id, work.argv, work.workdir, work.output_path, True, {}, (0,))
        wait_for(lambda: reading(hang_r), 30, "the spawning thread in its second mkdir")
        spawns.close(1.0)
        assert spawns.stuck == 1
    finally:
        os.write(hang_w, b"x")
        wait_for(lambda: not spawning_threads(), 30, "the stuck thread to end")
        os.close(hang_r)
        os.close(hang_w)
        poller.close()
    assert made_since(before) == [] and ran(tmp, "p") == ""
