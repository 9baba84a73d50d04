"""Chained starts (:mod:`balsam.launcher.serial_starts`): a slot's next task, queued behind its
running one, is started by the native spawning thread once that task has exited, never before,
never twice, never after a kill, stop or abort withdrew it, with its clock started at its real
start. No timing: every task that must still run when the test acts waits for a gate file the
test creates (bounded: tests/gates.py), and each test waits for conditions."""
from __future__ import annotations

import os
import select
import shlex
import time
from typing import Any

import pytest
from gates import gate_sh
from launcher_support import Inbox, wait_for

from balsam.launcher import spawn_native, spawn_threads
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Work, Worker

pytestmark = pytest.mark.skipif(not spawn_threads.usable(), reason="no glibc posix_spawn here")
native = pytest.mark.skipif(spawn_native.KERNEL != "cython",
                            reason=f"the kernel is not built here ({spawn_native.KERNEL_ERROR})")


def shell(tmp: str, name: str, script: str, workdir: str = "") -> Work:
    wd = workdir or os.path.join(tmp, name)
    return Work(name, ["sh", "-c", script], None, {}, wd, os.path.join(tmp, name + ".out"), 1, 1)


def gated(tmp: str, name: str, gate: str) -> Work:
    """Waits for ``gate``, then notes its end (wall clock) in ``<name>.end`` and exits."""
    end = shlex.quote(os.path.join(tmp, name + ".end"))
    return shell(tmp, name, f"{gate_sh(shlex.quote(gate), 0.02)}; date +%s.%N > {end}.t; "
                            f"mv {end}.t {end}")


def marking(tmp: str, name: str) -> Work:
    """Appends a line to ``<name>.ran`` (a second run would make two)."""
    return shell(tmp, name, f"echo ran >> {shlex.quote(os.path.join(tmp, name + '.ran'))}")


def worker_for(cpus: list[int]) -> tuple[Inbox, Worker]:
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots(cpus, 0), {"PATH": os.environ["PATH"]}, kill_grace=0.5)
    return inbox, worker


def serve(worker: Worker, until, what: str):  # type: ignore[no-untyped-def]
    return wait_for(lambda: (worker.step() or worker.wait(5), until())[1], 60, what, interval=0)


def stop_and_exit(inbox: Inbox, worker: Worker) -> None:
    """The master's stop (grace 0.5 s) until the worker says it drained, then its exit until
    the goodbye."""
    inbox.orders.append({"stop": 0.5})
    serve(worker, lambda: inbox.flagged("drained"), "drained")
    inbox.orders.append({"exit": True})
    serve(worker, lambda: inbox.flagged("bye"), "the goodbye")


def chained_behind(tmp: str, follow: Work) -> tuple[Inbox, Worker, str]:
    """A one-slot worker running g0 (until the gate) with ``follow`` chained behind it."""
    gate = os.path.join(tmp, "gate")
    inbox, worker = worker_for([0])
    inbox.orders.append({"work": [gated(tmp, "g0", gate), follow]})
    serve(worker, lambda: "g0" in worker.running and worker._leader, "a chained start")
    assert worker._leader == {follow.job_id: "g0"} and worker.queue == type(worker.queue)()
    assert follow.job_id in worker._spawns.chained_ids()  # type: ignore[union-attr]
    assert len(worker.node) == 1 and worker.node.full  # its share: the one of g0
    return inbox, worker, gate


@native
def test_a_follow_on_starts_only_after_its_predecessor_exited_with_its_real_start_time(tmp_path):
    tmp = str(tmp_path)
    gate1 = os.path.join(tmp, "gate1")
    end0 = shlex.quote(os.path.join(tmp, "g0.end"))
    follow = shell(tmp, "f1", f"if [ -e {end0} ]; then echo after; else echo before; fi "
                              f"> {shlex.quote(os.path.join(tmp, 'f1.seen'))}; "
                              f"{gate_sh(shlex.quote(gate1), 0.02)}")
    inbox, worker, gate = chained_behind(tmp, follow)
    try:
        assert not os.path.exists(os.path.join(tmp, "f1.seen"))  # g0 waits for the gate
        opened = time.time()
        open(gate, "w").close()
        serve(worker, lambda: "f1" in worker.running and "g0" not in worker.running, "f1 runs")
        assert worker.running["f1"].task.started >= opened  # its clock: its real start
        assert "f1" in worker.node and "g0" not in worker.node and len(worker.node) == 1
        open(gate1, "w").close()
        serve(worker, lambda: len(inbox.collected("done")) == 2, "both done")
    finally:
        worker.close()
    with open(os.path.join(tmp, "f1.seen")) as fh:
        assert fh.read().strip() == "after"
    assert inbox.collected("started") == ["g0", "f1"] and inbox.collected("done") == ["g0", "f1"]
    assert worker.node.occupancy == 0 and worker.chained == 1


@native
def test_a_kill_of_a_chained_job_never_starts_it_and_reports_it_killed(tmp_path):
    tmp = str(tmp_path)
    inbox, worker, gate = chained_behind(tmp, marking(tmp, "f1"))
    try:
        inbox.orders.append({"kill": ["f1"]})
        serve(worker, lambda: inbox.collected("killed"), "f1 killed")
        assert worker._spawns.chained_ids() == [] and worker._leader == {}  # type: ignore
        inbox.orders.append({"work": [marking(tmp, "w2")]})
        open(gate, "w").close()
        serve(worker, lambda: len(inbox.collected("done")) == 2, "g0 and w2 done")
    finally:
        worker.close()  # the spawning threads are joined: nothing can start after this
    assert inbox.collected("killed") == ["f1"] and inbox.collected("done") == ["g0", "w2"]
    assert inbox.collected("started") == ["g0", "w2"]
    assert not os.path.exists(os.path.join(tmp, "f1.ran"))
    assert worker.node.occupancy == 0


@native
def test_a_kill_of_the_task_a_job_follows_still_starts_the_follow_on(tmp_path):
    tmp = str(tmp_path)
    inbox, worker, gate = chained_behind(tmp, marking(tmp, "f1"))
    try:
        inbox.orders.append({"kill": ["g0"]})
        serve(worker, lambda: inbox.collected("done"), "f1 done")
    finally:
        worker.close()
        open(gate, "w").close()
    assert inbox.collected("killed") == ["g0"] and inbox.collected("done") == ["f1"]
    with open(os.path.join(tmp, "f1.ran")) as fh:
        assert fh.read() == "ran\n"
    assert worker.node.occupancy == 0


@native
def test_a_stop_returns_a_chained_job_that_never_starts(tmp_path):
    tmp = str(tmp_path)
    inbox, worker, gate = chained_behind(tmp, marking(tmp, "f1"))
    try:
        stop_and_exit(inbox, worker)
    finally:
        worker.close()
        open(gate, "w").close()
    assert inbox.collected("returned") == ["f1"] and inbox.collected("started") == ["g0"]
    assert [job for job, _ in inbox.collected("stopped")] == ["g0"]
    assert not os.path.exists(os.path.join(tmp, "f1.ran")) and worker.node.occupancy == 0


@native
def test_an_abort_returns_a_chained_job_that_never_starts(tmp_path):
    tmp = str(tmp_path)
    inbox, worker, gate = chained_behind(tmp, marking(tmp, "f1"))
    try:
        inbox.orders.append({"abort": True})
        serve(worker, lambda: inbox.flagged("bye"), "the goodbye")
        task = worker.running["g0"].task
        wait_for(lambda: task.poll() is not None, 60, "g0 to die")
        assert task.returncode == -9
    finally:
        worker.close()
        open(gate, "w").close()
    assert inbox.collected("returned") == ["f1"] and inbox.collected("started") == ["g0"]
    assert not os.path.exists(os.path.join(tmp, "f1.ran"))


@native
def test_a_follow_on_that_cannot_start_is_reported_started_then_failed(tmp_path):
    tmp = str(tmp_path)
    blocker = os.path.join(tmp, "file")
    open(blocker, "w").close()  # its directory cannot be made: a file is in the way
    inbox, worker, gate = chained_behind(
        tmp, shell(tmp, "f1", "true", workdir=os.path.join(blocker, "sub")))
    try:
        open(gate, "w").close()
        serve(worker, lambda: inbox.collected("failed") and inbox.collected("done"), "the ends")
    finally:
        worker.close()
    assert inbox.collected("started") == ["g0", "f1"] and inbox.collected("done") == ["g0"]
    [(job, rc, message)] = inbox.collected("failed")
    assert job == "f1" and rc == -1 and message.startswith("cannot start:")
    assert worker.node.occupancy == 0 and worker._follower == {} and worker._leader == {}


@native
def test_every_task_runs_once_when_starts_are_chained(tmp_path):
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    names = [f"t{i}" for i in range(40)]
    mark = os.path.join(tmp, "{}.ran")
    works = [shell(tmp, n, f"{gate_sh(shlex.quote(gate), 0.02)}; echo ran >> "
                           f"{shlex.quote(mark.format(n))}")._replace(packing=2)
             for n in names]  # two slots of one CPU each
    inbox, worker = worker_for([0, 1])
    inbox.orders.append({"work": works})
    try:
        serve(worker, lambda: len(worker._leader) == 2, "two chained starts")
        open(gate, "w").close()
        serve(worker, lambda: len(inbox.collected("done")) == len(names), "all done")
    finally:
        worker.close()
    assert sorted(inbox.collected("started")) == sorted(names) == sorted(inbox.collected("done"))
    for n in names:
        with open(mark.format(n)) as fh:
            assert fh.read() == "ran\n", n
    assert worker.chained >= 2 and worker.node.occupancy == 0


def test_the_python_spawning_threads_chain_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(spawn_native, "KERNEL", "python")
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    inbox, worker = worker_for([0])
    inbox.orders.append({"work": [gated(tmp, "g0", gate), marking(tmp, "f1")]})
    try:
        serve(worker, lambda: "g0" in worker.running, "g0 runs")
        assert [w.job_id for w in worker.queue] == ["f1"] and worker._leader == {}
        open(gate, "w").close()
        serve(worker, lambda: len(inbox.collected("done")) == 2, "both done")
    finally:
        worker.close()
    assert worker.chained == 0 and inbox.collected("done") == ["g0", "f1"]


@native
def test_a_kill_inside_a_chain_passes_the_wait_on_to_the_next_start(tmp_path):
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    end0 = shlex.quote(os.path.join(tmp, "g0.end"))
    seen = shlex.quote(os.path.join(tmp, "f2.seen"))
    inbox, worker = worker_for([0])
    follow = shell(tmp, "f2", f"if [ -e {end0} ]; then echo after; else echo before; fi >> {seen}")
    inbox.orders.append({"work": [gated(tmp, "g0", gate), marking(tmp, "f1"), follow]})
    try:  # f1 behind g0's start, f2 behind f1's: both asked for before either began
        serve(worker, lambda: worker._leader == {"f1": "g0", "f2": "f1"}, "a chain of three")
        inbox.orders.append({"kill": ["f1"]})
        serve(worker, lambda: inbox.collected("killed"), "f1 killed")
        assert worker._leader == {"f2": "g0"} and worker._follower == {"g0": "f2"}
        open(gate, "w").close()
        serve(worker, lambda: len(inbox.collected("done")) == 2, "g0 and f2 done")
    finally:
        worker.close()
    assert inbox.collected("killed") == ["f1"] and inbox.collected("done") == ["g0", "f2"]
    assert not os.path.exists(os.path.join(tmp, "f1.ran"))
    with open(os.path.join(tmp, "f2.seen")) as fh:
        assert fh.read() == "after\n"
    assert worker.node.occupancy == 0 and worker._leader == {} and worker._follower == {}


@native
def test_a_start_chained_behind_a_start_that_fails_runs_in_its_place(tmp_path):
    tmp = str(tmp_path)
    blocker = os.path.join(tmp, "file")
    open(blocker, "w").close()
    inbox, worker = worker_for([0])
    bad = shell(tmp, "b0", "true", workdir=os.path.join(blocker, "sub"))
    inbox.orders.append({"work": [bad, marking(tmp, "f1")]})
    try:
        serve(worker, lambda: inbox.collected("done") and inbox.collected("failed"), "the ends")
    finally:
        worker.close()
    assert worker.chained == 1 and inbox.collected("started") == ["b0", "f1"]
    assert [job for job, *_ in inbox.collected("failed")] == ["b0"]
    assert inbox.collected("done") == ["f1"]
    with open(os.path.join(tmp, "f1.ran")) as fh:
        assert fh.read() == "ran\n"
    assert worker.node.occupancy == 0 and worker._leader == {} and worker._follower == {}


@native
def test_a_chained_start_goes_back_to_run_beside_the_others_when_room_frees(tmp_path):
    tmp = str(tmp_path)
    gate_half, gate_quarters = os.path.join(tmp, "gate_half"), os.path.join(tmp, "gate_q")
    inbox, worker = worker_for([0, 1])
    half = gated(tmp, "h0", gate_half)._replace(packing=2)
    quarters = [gated(tmp, f"q{i}", gate_quarters)._replace(packing=4) for i in range(4)]
    inbox.orders.append({"work": [half, *quarters]})
    try:  # h0, q0, q1 fill the node; q2 and q3 wait in chains behind q0 and q1
        serve(worker, lambda: len(worker._leader) == 2 and {"h0", "q0", "q1"} <= set(
            worker.running), "h0, q0, q1 running, two chained starts")
        open(gate_half, "w").close()  # h0 ends: its half of the node is free
        serve(worker, lambda: {f"q{i}" for i in range(4)} <= set(worker.running),
              "four quarters running at once")
        assert worker._leader == {} and worker.node.full
        open(gate_quarters, "w").close()
        serve(worker, lambda: len(inbox.collected("done")) == 5, "all done")
    finally:
        worker.close()
    assert sorted(inbox.collected("started")) == ["h0", "q0", "q1", "q2", "q3"]
    assert inbox.collected("killed") == [] and inbox.collected("returned") == []
    assert worker.node.occupancy == 0


@native
def test_the_kernel_tells_the_watchdog_of_a_chained_start_only_as_it_begins(tmp_path):
    # The watchdog counts a ?JOBID as started if this process dies: a chained start is
    # announced by the spawning thread just before it is made, never while it waits (one that
    # is withdrawn is never announced).
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    poller = select.epoll()
    spawns = spawn_native.make({"PATH": os.environ["PATH"]}, poller)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)

    def notes() -> bytes:
        try:
            return os.read(read_end, 4096)
        except BlockingIOError:
            return b""

    def submit(work: Work, **kwargs: Any) -> None:
        spawns.submit(work.job_id, work.argv, work.workdir, work.output_path, False, {}, (0,),
                      **kwargs)

    taken: dict[str, Any] = {}

    def collected(job_id: str) -> bool:
        taken.update({s.job_id: s for s in spawns.collect()})
        return job_id in taken

    try:
        assert isinstance(spawns, spawn_native.NativeSpawns)
        spawns.watch(write_end)
        submit(gated(tmp, "g0", gate))
        submit(marking(tmp, "f1"), after_job="g0", note=b"?f1\n")
        submit(marking(tmp, "f2"), after_job="f1", note=b"?f2\n")
        wait_for(lambda: collected("g0"), 60, "g0 started")
        assert notes() == b""  # f1 and f2 wait behind g0: not announced
        assert spawns.cancel("f2") and spawns.chained_ids() == ["f1"]
        open(gate, "w").close()
        wait_for(lambda: collected("f1"), 60, "f1 started")
        assert notes() == b"?f1\n" and spawns.in_flight == 0
        for job_id in ("g0", "f1"):
            task = taken[job_id].task
            wait_for(lambda t=task: t.poll() is not None, 60, f"{job_id} to end")
    finally:
        spawns.close()
        for started in taken.values():
            if started.fd >= 0:
                os.close(started.fd)
        os.close(read_end)
        os.close(write_end)
        poller.close()
    assert not os.path.exists(os.path.join(tmp, "f2.ran"))
    with open(os.path.join(tmp, "f1.ran")) as fh:
        assert fh.read() == "ran\n"
