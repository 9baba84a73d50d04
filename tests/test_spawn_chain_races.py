"""Chained starts (:mod:`balsam.launcher.serial_starts`, the kernel's ``_spawner_chain.h``) at
their risky interleavings: a stop that withdraws a follow-on while the task it follows dies, a
start asked for again behind a start in flight after the first one asked for was withdrawn,
the kernel's room for waiting starts after a cancel, ``close`` while threads wait in ``poll``,
a predecessor the loop already reaped, a ``?JOBID`` line written for a start that then fails,
a rank that dies between the kernel's ``?JOBID`` and the loop's collect, and descriptors,
zombies and threads left after many chains. No timing: tasks that must still run wait for a
gate file (bounded: tests/gates.py); the order of two starts on one thread is read from the
order the kernel notes them in (FIFO), never from a sleep."""
from __future__ import annotations

import json
import os
import select
import shlex
import threading
from typing import Any

from gates import forever_sh
from launcher_support import wait_for
from test_spawn_chain import (
    chained_behind,
    gated,
    marking,
    native,
    serve,
    shell,
    stop_and_exit,
    worker_for,
)

from balsam.launcher import spawn_native
from balsam.launcher.serial_worker import Work, Worker
from balsam.launcher.spawn_threads import Started
from balsam.launcher.watchdog import Watchdog
from balsam.platform.process import wait_child

pytestmark = native


class Kernel:
    """A :class:`NativeSpawns` on CPU 0 (one native thread) and what it gave back."""

    def __init__(self) -> None:
        self.poller = select.epoll()
        spawns = spawn_native.make({"PATH": os.environ["PATH"]}, self.poller)
        assert isinstance(spawns, spawn_native.NativeSpawns)
        self.spawns = spawns
        self.taken: dict[str, Started] = {}
        self.order: list[str] = []  # the order the kernel noted the starts in

    def submit(self, work: Work, **kwargs: Any) -> None:
        self.spawns.submit(work.job_id, work.argv, work.workdir, work.output_path, False,
                           kwargs.pop("extra", {}), (0,), **kwargs)

    def collected(self, job_id: str) -> Started:
        for s in self.spawns.collect():
            self.taken[s.job_id] = s
            self.order.append(s.job_id)
        return self.taken.get(job_id)  # type: ignore[return-value]

    def wait(self, job_id: str) -> Started:
        return wait_for(lambda: self.collected(job_id), 15, f"{job_id}'s start")

    def ended(self) -> None:
        """Wait for (and reap) every task started, close their pidfds and the spawner."""
        self.spawns.close()
        for s in self.taken.values():
            if s.task is not None:
                wait_for(lambda t=s.task: t.poll() is not None, 60, f"{s.job_id} to end")
            if s.fd >= 0:
                os.close(s.fd)
        self.poller.close()


def ran(tmp: str, name: str) -> str:
    """What ``marking(tmp, name)`` wrote ("" if it never ran)."""
    path = os.path.join(tmp, name + ".ran")
    if not os.path.exists(path):
        return ""
    with open(path) as fh:
        return fh.read()


def test_a_stop_withdraws_a_chained_start_before_the_task_it_follows_is_signalled(
        tmp_path, monkeypatch):
    # Had the stop signalled g0 before withdrawing f1, the kernel would start f1 the moment g0
    # died: the window is made wide here (wait until f1 ran), so the order alone decides.
    tmp = str(tmp_path)
    withdraw = Worker._cancel_all_chained

    def withdraw_late(self: Worker, key: str) -> None:
        r = self.running.get("g0")
        if r is not None and r.why == "stop":  # g0 was signalled already
            wait_for(lambda: ran(tmp, "f1"), 60, "f1 to start behind the dead g0")
        withdraw(self, key)

    monkeypatch.setattr(Worker, "_cancel_all_chained", withdraw_late)
    inbox, worker, gate = chained_behind(tmp, marking(tmp, "f1"))
    try:
        stop_and_exit(inbox, worker)
    finally:
        worker.close()
        open(gate, "w").close()
    assert inbox.collected("returned") == ["f1"] and inbox.collected("started") == ["g0"]
    assert ran(tmp, "f1") == "" and worker.node.occupancy == 0


def test_a_start_asked_for_again_behind_a_start_in_flight_still_waits_for_it(tmp_path):
    # g0's start is noted (not collected) when f1 is asked for behind it; f1 is withdrawn and
    # f2 asked for behind g0 instead: f2 must wait for g0, not start beside it.
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    end0 = shlex.quote(os.path.join(tmp, "g0.end"))
    seen = shlex.quote(os.path.join(tmp, "f2.seen"))
    k = Kernel()
    try:
        k.submit(gated(tmp, "g0", gate))
        k.submit(marking(tmp, "s1"))  # same thread, FIFO: once s1 ran, g0's start is noted
        wait_for(lambda: ran(tmp, "s1"), 60, "s1 to run")
        k.submit(marking(tmp, "f1"), after_job="g0")
        assert k.spawns.cancel("f1")
        k.submit(shell(tmp, "f2", f"if [ -e {end0} ]; then echo after; else echo before; fi "
                                  f"> {seen}"), after_job="g0")
        k.submit(marking(tmp, "s2"))  # f2, if it did not wait, is noted before s2
        k.wait("s2")
        assert "f2" not in k.order and k.spawns.pending("f2")
        open(gate, "w").close()
        k.wait("f2")
    finally:
        open(gate, "w").close()
        k.ended()
    assert k.order.index("f2") > k.order.index("s2") and ran(tmp, "f1") == ""
    with open(os.path.join(tmp, "f2.seen")) as fh:
        assert fh.read() == "after\n"


def test_a_start_asked_for_while_the_thread_prepares_a_waiting_one_is_made(tmp_path):
    # f1's output file is a FIFO: the thread, making it ahead (bs_prepare_waiting), blocks
    # in open() until a reader comes; s2 is asked for meanwhile (no wake: it is not asleep).
    # It must look again before it sleeps in poll, or s2 waits until g0 ends.
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    follow = marking(tmp, "f1")
    os.mkfifo(follow.output_path)
    k = Kernel()
    try:
        k.submit(gated(tmp, "g0", gate))
        g0 = k.wait("g0")
        k.submit(follow, after=os.dup(g0.fd))
        wait_for(lambda: os.path.isdir(follow.workdir), 60, "f1's directory made ahead")
        k.submit(marking(tmp, "s2"))  # the thread is inside the open() of f1's FIFO
        os.close(os.open(follow.output_path, os.O_RDONLY | os.O_NONBLOCK))  # it returns
        assert k.wait("s2").error is None and not os.path.exists(gate)
        assert k.spawns.cancel("f1")  # (its start would wait for a reader of the FIFO)
    finally:
        open(gate, "w").close()
        k.ended()
    assert ran(tmp, "s2") == "ran\n" and ran(tmp, "f1") == ""


def test_a_withdrawn_start_frees_its_room_among_the_waiting_starts_at_once(tmp_path):
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    k = Kernel()
    names = [f"f{i}" for i in range(spawn_native.CHAINED_PER_THREAD)]
    try:
        k.submit(gated(tmp, "g0", gate))
        g0 = k.wait("g0")
        for name in names:  # the most that may wait on one thread
            k.submit(marking(tmp, name), after=os.dup(g0.fd))
        assert not k.spawns.can_chain((0,))
        assert k.spawns.cancel("f0") and k.spawns.can_chain((0,))
        k.submit(marking(tmp, "f64"), after=os.dup(g0.fd))  # room: the kernel took it
        assert k.spawns.pending("f64") and "f64" not in k.taken
        open(gate, "w").close()
        for name in [*names[1:], "f64"]:
            assert k.wait(name).error is None, name
    finally:
        open(gate, "w").close()
        k.ended()
    assert ran(tmp, "f0") == "" and all(ran(tmp, n) == "ran\n" for n in [*names[1:], "f64"])


def descriptors() -> dict[int, str]:
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor
            continue
    return found


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def zombies() -> list[int]:
    """This process's children that exited and were never reaped."""
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            found.append(int(name))
    return found


def test_close_while_chained_starts_wait_in_poll_joins_and_leaks_nothing(tmp_path):
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    before, threads_before = descriptors(), threads()
    k = Kernel()
    try:
        k.submit(gated(tmp, "g0", gate))
        k.submit(marking(tmp, "f1"), after_job="g0")  # waits for g0's start, then its end
        k.submit(marking(tmp, "f2"), after_job="f1")  # waits for f1's start
        g0 = k.wait("g0")
        k.submit(marking(tmp, "f3"), after=os.dup(g0.fd))
        closing = threading.Thread(target=k.spawns.close)
        closing.start()
        closing.join(60)
        assert not closing.is_alive()  # the threads woke from poll and were joined
    finally:
        open(gate, "w").close()
        k.ended()
    assert not any(ran(tmp, n) for n in ("f1", "f2", "f3"))  # joined: nothing starts now
    assert descriptors() == before and threads() == threads_before and zombies() == []


def test_a_follow_on_of_a_task_the_loop_already_reaped_starts(tmp_path):
    # poll on the pidfd of a reaped child: readable (the process is gone), never an error
    tmp = str(tmp_path)
    k = Kernel()
    try:
        k.submit(marking(tmp, "g0"))
        g0 = k.wait("g0")
        wait_for(lambda: g0.task.poll() is not None, 60, "g0 reaped")  # type: ignore[union-attr]
        k.submit(marking(tmp, "f1"), after=os.dup(g0.fd))
        assert k.wait("f1").error is None
    finally:
        k.ended()
    assert ran(tmp, "f1") == "ran\n"


def test_a_job_line_written_for_a_start_that_fails_matches_its_recorded_run(tmp_path):
    # The kernel writes ?f1 before posix_spawn, which then fails (the output path is a
    # directory): the loop reports f1 started then failed, one run; a watchdog whose rank then
    # died would count the one ?f1 as that one start (the database already shows it).
    tmp = str(tmp_path)
    read_end, write_end = os.pipe()
    os.makedirs(os.path.join(tmp, "f1.out"))
    k = Kernel()
    try:
        k.spawns.watch(write_end)
        k.submit(marking(tmp, "g0"))
        g0 = k.wait("g0")
        k.submit(marking(tmp, "f1"), after=os.dup(g0.fd), note=b"?f1\n")
        f1 = k.wait("f1")
    finally:
        k.ended()
        os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        assert fh.read() == b"?f1\n"  # every writer closed: the whole pipe
    assert f1.task is None and isinstance(f1.error, OSError) and ran(tmp, "f1") == ""


def test_a_rank_dying_before_it_collects_a_chained_start_leaves_it_killed_and_counted(
        tmp_path):
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    began = os.path.join(tmp, "f1.began")
    report = os.path.join(tmp, "rank.watch")
    dog = Watchdog(1.0, report=report)
    k = Kernel()
    try:
        k.spawns.watch(dog._fd)
        dog.expect("g0")
        k.submit(gated(tmp, "g0", gate))
        k.submit(shell(tmp, "f1", f"touch {shlex.quote(began)}; {forever_sh(0.05)}"),
                 after_job="g0", note=b"?f1\n", extra={"BALSAM_JOB_ID": "f1"})
        g0 = k.wait("g0")
        assert g0.task is not None
        dog.add(g0.task.pgid, "g0")
        open(gate, "w").close()
        wait_for(lambda: os.path.exists(began), 60, "f1 to run")
        wait_for(lambda: g0.task.poll() is not None, 60, "g0 reaped")  # type: ignore
        dog.remove(g0.task.pgid)
        f1 = k.wait("f1")  # taken here only to reap it at the end: the watchdog never hears
        # the rank dies: no "+PGID f1" line, no "." (every write end closes)
        dog.out.close()
        k.spawns.close()

        def written() -> Any:
            with open(report) as fh:
                found = json.load(fh)
            return found if found["state"] != "running" else None

        found = wait_for(written, 60, "the watchdog's report")
        wait_for(lambda: f1.task.poll() is not None, 60, "f1 killed")  # type: ignore[union-attr]
    finally:
        open(gate, "w").close()
        k.ended()
        if dog.proc is not None:
            wait_child(dog.proc, 60)
    assert found["state"] == "stopped" and sorted(found["started"]) == ["f1", "g0"]
    assert f1.task is not None and f1.task.returncode in (-15, -9)


def test_many_chains_leave_no_descriptors_zombies_or_threads(tmp_path):
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    blocker = os.path.join(tmp, "file")
    open(blocker, "w").close()
    names = [f"t{i}" for i in range(30)]
    works = [gated(tmp, "t0", gate)] + [
        shell(tmp, n, "true", workdir=os.path.join(blocker, "sub")) if n == "t7"
        else marking(tmp, n) for n in names[1:]]
    before, threads_before = descriptors(), threads()
    inbox, worker = worker_for([0])
    inbox.orders.append({"work": works})
    try:  # t1..t4 wait behind t0 (CHAIN_AHEAD): t3 is withdrawn, never begun
        serve(worker, lambda: "t3" in worker._leader, "t3 chained")
        inbox.orders.append({"kill": ["t3"]})
        serve(worker, lambda: inbox.collected("killed"), "t3 killed")
        open(gate, "w").close()
        serve(worker, lambda: len(inbox.collected("done")) == 28 and inbox.collected("failed"),
              "every end")
    finally:
        open(gate, "w").close()
        worker.close()
    assert inbox.collected("killed") == ["t3"] and ran(tmp, "t3") == ""
    assert [job for job, *_ in inbox.collected("failed")] == ["t7"]
    assert all(ran(tmp, n) == "ran\n" for n in names if n not in ("t0", "t3", "t7"))
    assert worker.chained >= 4 and worker.node.occupancy == 0
    assert descriptors() == before and threads() == threads_before and zombies() == []
