"""A serial worker starts its tasks from threads pinned to the tasks' CPUs
(:mod:`balsam.launcher.spawn_threads`): a start is in flight until the loop takes it over, and
a kill, a stop or an abort that comes meanwhile still ends the task; a thread serving several
CPU sets re-pins itself, so each task gets its own. No timing: each test waits for conditions,
and a start is in flight by construction (the loop takes starts over only at its next
iteration, after reading the orders). Every test runs on both start paths where both exist: the
pure-Python threads and the native ones of the Cython kernel (:mod:`balsam.launcher.spawn_native`)."""
from __future__ import annotations

import os
import select
import signal
from typing import Any

import pytest
from launcher_support import Inbox, process_gone, wait_for

from balsam.launcher import libc_spawn, spawn_native, spawn_threads
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Work, Worker

pytestmark = pytest.mark.skipif(not spawn_threads.usable(), reason="no glibc posix_spawn here")


@pytest.fixture(autouse=True, params=["python", "native"])
def path(request, monkeypatch) -> str:
    """The start path under test: the Worker's (spawn_native.make) and :func:`threads`'."""
    if request.param == "native" and spawn_native.KERNEL != "cython":
        pytest.skip(f"the kernel is not built here ({spawn_native.KERNEL_ERROR})")
    monkeypatch.setattr(spawn_native, "KERNEL", "cython" if request.param == "native" else "python")
    return str(request.param)


def threads_for(poller: select.epoll, **env: str) -> spawn_threads.SpawnThreads:
    threads = spawn_native.make({"PATH": os.environ["PATH"], **env}, poller)
    assert isinstance(threads, spawn_native.NativeSpawns) == (spawn_native.KERNEL == "cython")
    return threads


def sleeper(tmp: str, name: str) -> Work:
    wd = os.path.join(tmp, name)
    script = f"echo $$ > {os.path.join(tmp, name + '.pid')}; exec sleep 60"
    return Work(name, ["sh", "-c", script], None, {}, wd, os.path.join(wd, "out"), 1, 1)


def serve(worker: Worker, until: Any, what: str) -> None:
    wait_for(lambda: (worker.step() or worker.wait(5), until())[1], 60, what, interval=0)


def gone(tmp: str, name: str) -> bool:
    """The task's process is gone, or it never got to write its pid."""
    try:
        with open(os.path.join(tmp, name + ".pid")) as fh:
            text = fh.read().strip()
    except FileNotFoundError:
        return True
    return not text or process_gone(int(text))


def in_flight_worker(tmp: str) -> tuple[Inbox, Worker]:
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]}, kill_grace=0.5)
    assert isinstance(worker._spawns, spawn_native.NativeSpawns) == (spawn_native.KERNEL == "cython")
    inbox.orders.append({"work": [sleeper(tmp, "s0"), sleeper(tmp, "s1")]})
    worker.step()  # s0 handed to a thread; taken over only in the next iteration
    chained = ["s1"] if worker._spawns.chains else []  # native: s1 chained behind s0's start
    assert worker._leader == dict.fromkeys(chained, "s0")
    assert worker._in_flight() == 1 + len(chained) and "s0" not in worker.running
    assert not inbox.collected("started")
    return inbox, worker


def test_a_task_killed_while_it_starts_is_reported_started_then_killed(tmp_path, path):
    # (withdrawn instead if its posix_spawn had not begun -- never made, reported killed
    # only: native since session 20, Spawner.withdraw; the Python threads since session 21)
    inbox, worker = in_flight_worker(str(tmp_path))
    try:
        inbox.orders.append({"kill": ["s0"]})
        serve(worker, lambda: inbox.collected("killed"), "s0 killed")
        started = inbox.collected("started")
        assert started[:1] == ["s0"] or "s0" not in started
        assert inbox.collected("killed") == ["s0"]
        assert gone(str(tmp_path), "s0")
        inbox.orders.append({"stop": 0.5})
        serve(worker, lambda: inbox.flagged("drained"), "drained")
    finally:
        worker.close()
    assert worker.node.occupancy == 0 and gone(str(tmp_path), "s1")


def test_a_stop_while_a_task_starts_stops_it_and_drains(tmp_path, path):
    inbox, worker = in_flight_worker(str(tmp_path))
    try:
        inbox.orders.append({"stop": 0.5})
        serve(worker, lambda: inbox.flagged("drained"), "drained")
    finally:
        worker.close()
    if not inbox.collected("started"):  # withdrawn before its spawn
        assert sorted(inbox.collected("returned")) == ["s0", "s1"]
        assert inbox.collected("stopped") == []
    else:
        assert inbox.collected("started") == ["s0"] and inbox.collected("returned") == ["s1"]
        assert [job for job, _ in inbox.collected("stopped")] == ["s0"]
    assert worker.node.occupancy == 0 and gone(str(tmp_path), "s0")


def test_an_abort_while_a_task_starts_kills_it_before_the_goodbye(tmp_path):
    inbox, worker = in_flight_worker(str(tmp_path))
    try:
        inbox.orders.append({"abort": True})
        serve(worker, lambda: inbox.flagged("bye"), "the goodbye")
        assert inbox.collected("started") == ["s0"] and worker._in_flight() == 0
        task = worker.running["s0"].task
        wait_for(lambda: task.poll() is not None, 60, "s0 to die")
        assert task.returncode == -9
    finally:
        worker.close()


def test_a_thread_serving_several_cpu_sets_pins_each_task_to_its_own(tmp_path, monkeypatch):
    cpus = sorted(os.sched_getaffinity(0))
    monkeypatch.setattr(spawn_threads, "MAX_THREADS", 1)
    poller = select.epoll()
    threads = threads_for(poller)
    wanted = [(cpus[-1],), (cpus[0],), ()]
    started = []
    try:
        for i, want in enumerate(wanted):
            out = str(tmp_path / f"t{i}.out")
            threads.submit(f"t{i}", ["grep", "Cpus_allowed_list", "/proc/self/status"],
                           str(tmp_path), out, False, {}, want)
            started += threads.settle(60)
    finally:
        threads.close()
        poller.close()
    assert [s.job_id for s in started] == ["t0", "t1", "t2"]
    for s in started:
        assert s.task is not None
        wait_for(lambda t=s.task: t.poll() is not None, 60, "the task's end")
    for i, want in enumerate(wanted):
        with open(tmp_path / f"t{i}.out") as fh:
            assert allowed(fh.read().split()[-1]) == set(want or cpus)


def allowed(text: str) -> set[int]:
    """CPUs of a ``Cpus_allowed_list`` value such as ``0-1,4``."""
    found: set[int] = set()
    for part in text.strip().split(","):
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


def test_a_start_that_fails_in_a_thread_comes_back_with_its_error(tmp_path):
    poller = select.epoll()
    threads = threads_for(poller)
    try:
        threads.submit("bad", ["/no/such/program"], str(tmp_path), str(tmp_path / "o"), False,
                       {}, ())
        (back,) = threads.settle(60)
        threads.submit("bad2", ["/no/such/program"], str(tmp_path), str(tmp_path / "o"), False,
                       {}, ())
        assert threads.mark("bad2", "kill", 1.0) and not threads.mark("other", "kill", 1.0)
        (marked,) = threads.settle(60)  # (native: withdrawn, if before its posix_spawn)
    finally:
        threads.close()
        poller.close()
    assert marked.why == "kill" and marked.task is None
    assert isinstance(marked.error, OSError) or marked.withdrawn and marked.error is None
    assert back.task is None and isinstance(back.error, OSError) and back.why == ""
    assert str(back.error) == "[Errno 2] No such file or directory: '/no/such/program'"
    assert threads.in_flight == 0 and libc_spawn.private() is not None


def test_a_task_gets_its_new_directory_its_variables_over_the_base_and_its_output(tmp_path):
    poller = select.epoll()
    threads = threads_for(poller, A="base", B="kept")
    wd = tmp_path / "x" / "y"  # not prepared: made with its parent
    try:
        threads.submit("t", ["sh", "-c", 'pwd; echo "$A $B $C"; echo err >&2'], str(wd),
                       str(tmp_path / "t.out"), False, {"A": "own", "C": "new"}, ())
        (back,) = threads.settle(60)
        assert back.task is not None and back.fd >= 0
        assert poller.poll(60) == [(back.fd, select.EPOLLIN)]  # the pidfd, ready at the end
        assert back.task.poll() == 0
        os.close(back.fd)
    finally:
        threads.close()
        poller.close()
    assert (tmp_path / "t.out").read_text() == f"{wd}\nown kept new\nerr\n"


def test_a_program_missing_from_the_path_fails_the_job_with_the_same_message(tmp_path):
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": str(tmp_path)})
    wd = str(tmp_path / "w")
    inbox.orders.append({"work": [Work("j", ["no-such-program"], None, {}, wd, wd + "/o", 1, 1)]})
    try:
        serve(worker, lambda: inbox.collected("failed"), "the failure")
    finally:
        worker.close()
    assert inbox.collected("started") == ["j"]
    assert inbox.collected("failed") == [
        ("j", -1, "cannot start: [Errno 2] No such file or directory: 'no-such-program'")]
    assert worker.node.occupancy == 0 and worker._in_flight() == 0


def child_signals(threads: spawn_threads.SpawnThreads, poller: select.epoll, out: str) -> str:
    """The SigIgn/SigBlk/SigCgt lines of a child started by ``threads``."""
    try:
        threads.submit("sig", ["cat", "/proc/self/status"],
                       os.path.dirname(out), out, True, {}, ())
        (back,) = threads.settle(60)
        assert back.task is not None
        wait_for(lambda: back.task.poll() is not None, 60, "the child's end")
    finally:
        threads.close()
    with open(out) as fh:
        return "".join(line for line in fh if line.startswith(("SigIgn", "SigBlk", "SigCgt")))


def test_a_child_has_the_same_signal_dispositions_on_both_paths(tmp_path):
    if spawn_native.KERNEL_ERROR is not None:
        pytest.skip(f"the kernel is not built here ({spawn_native.KERNEL_ERROR})")
    env = {"PATH": os.environ["PATH"]}
    poller = select.epoll()
    was = signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # an ignored signal stays ignored
    try:
        native = child_signals(spawn_native.NativeSpawns(env, poller), poller,
                               str(tmp_path / "native"))
        python = child_signals(spawn_threads.SpawnThreads(env, poller), poller,
                               str(tmp_path / "python"))
    finally:
        signal.signal(signal.SIGUSR1, was)
        poller.close()
    assert native == python and native.count("\n") == 3
    ignored = int(native.split("SigIgn:")[1].split()[0], 16)
    assert ignored & (1 << (signal.SIGUSR1 - 1)) and not ignored & (1 << (signal.SIGPIPE - 1))
    assert int(native.split("SigCgt:")[1].split()[0], 16) == 0
