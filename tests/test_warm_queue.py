"""A function task queued behind a short running one in its warm process (no MPI, no database:
the tasks' rows are given): it begins in the same process the moment that one ends, is taken
back (never run) when cancelled first or when the process dies, and a worker reports it like
any task: started once it began, killed or returned (never run) when a kill or a stop came
first. Every wait is for a condition, with a generous deadline."""
from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from typing import Any, Callable

from launcher_support import Inbox, serve

from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Work, Worker
from balsam.launcher.warm_pool import WarmPool, WarmTask
from balsam.site import pyfunc

APPS = '''import os
import time

from balsam.site import ApplicationDefinition


class Gate(ApplicationDefinition):
    def run(self, gate):
        end = time.monotonic() + 600  # bounded: a test cut short never opens the gate
        while not os.path.exists(gate) and time.monotonic() < end:
            time.sleep(0.005)
        return os.getpid()


class Pid(ApplicationDefinition):
    def run(self):
        print("ran")
        return os.getpid()


class Nap(ApplicationDefinition):
    def run(self, seconds):
        time.sleep(seconds)
        return os.getpid()
'''
RUNNER = [sys.executable, "-m", pyfunc.RUNNER_MODULE]


def wait_for(condition: Callable[[], Any], timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.005)


def make_site(tmp_path: Any) -> str:
    site = tmp_path / "site"
    (site / "apps").mkdir(parents=True)
    (site / "apps" / "fn.py").write_text(APPS)
    return str(site)


def row(app: str, **kwargs: Any) -> tuple[str, str, str, str, bytes]:
    return (app, "{}", "{}", "{}", pyfunc.serialize(kwargs))


def value(task: WarmTask) -> Any:
    assert task.outcome is not None
    return pyfunc.deserialize(task.outcome[2])


class Pool:
    """A warm pool with the tasks' workdirs under ``tmp``."""

    def __init__(self, tmp: Any, site: str) -> None:
        self.tmp, self.env = tmp, {"BALSAM_DB_PATH": site}
        self.pool = WarmPool({"PATH": os.environ["PATH"]}, str(tmp), sys.executable)

    def paths(self, name: str) -> tuple[str, str]:
        wd = str(self.tmp / name)
        return wd, os.path.join(wd, f"{name}.out")

    def start(self, name: str, task_row: Any) -> WarmTask:
        return self.pool.start(name, self.env, *self.paths(name), [0], task_row)

    def behind(self, running: WarmTask, name: str, task_row: Any) -> WarmTask:
        return self.pool.queue_behind(running, name, self.env, *self.paths(name), task_row)


def ended(task: WarmTask) -> int:
    wait_for(lambda: task.poll() is not None)
    assert task.returncode is not None
    return task.returncode


def test_a_task_queued_behind_begins_in_the_same_process_when_the_first_ends(tmp_path):
    p = Pool(tmp_path, make_site(tmp_path))
    gate = tmp_path / "go"
    try:
        first = p.start("first", row("fn.Gate", gate=str(gate)))
        second = p.behind(first, "second", row("fn.Pid"))
        assert not second.begun and first.successor is second
        assert not p.pool.can_follow(first, time.monotonic())  # second is the last now
        gate.touch()
        assert ended(first) == 0
        fd = first.fd
        assert p.pool.finished(first, clean=True) is second and second.begun
        assert (second.fd, first.fd) == (fd, -1)  # the connection's descriptor goes on
        assert ended(second) == 0
        assert p.pool.finished(second, clean=True) is None
        os.close(second.fd)
        assert value(first) == value(second) == first.pid  # one warm process ran both
        assert (tmp_path / "second" / "second.out").read_text() == "ran\n"
        assert p.pool.started == 1 and len(p.pool.idle) == 1
    finally:
        p.pool.close()


def test_a_queued_task_cancelled_before_the_first_ends_never_runs(tmp_path):
    p = Pool(tmp_path, make_site(tmp_path))
    gate = tmp_path / "go"
    try:
        first = p.start("first", row("fn.Gate", gate=str(gate)))
        second = p.behind(first, "second", row("fn.Pid"))
        p.pool.cancel(second)
        gate.touch()
        assert ended(first) == 0
        assert p.pool.finished(first, clean=True) is second
        assert second.cancelled and not second.begun and second.returncode is None
        assert not (tmp_path / "second").exists()
        os.close(first.fd)
        third = p.start("third", row("fn.Pid"))  # the process is idle again, and serves
        assert ended(third) == 0 and value(third) == first.pid
        p.pool.finished(third, clean=True)
        os.close(third.fd)
    finally:
        p.pool.close()


def test_two_queued_tasks_begin_in_order_and_a_cancel_takes_back_those_after_it(tmp_path):
    p = Pool(tmp_path, make_site(tmp_path))
    gate = tmp_path / "go"
    try:
        first = p.start("first", row("fn.Gate", gate=str(gate)))
        second = p.behind(first, "second", row("fn.Pid"))
        third = p.behind(second, "third", row("fn.Pid"))
        assert not p.pool.can_follow(third, time.monotonic())  # two wait already
        gate.touch()
        for task, successor in ((first, second), (second, third), (third, None)):
            assert ended(task) == 0
            assert p.pool.finished(task, clean=True) is successor
        assert value(first) == value(second) == value(third)
        again = p.start("again", row("fn.Gate", gate=str(tmp_path / "later")))
        fourth = p.behind(again, "fourth", row("fn.Pid"))
        fifth = p.behind(fourth, "fifth", row("fn.Pid"))
        p.pool.cancel(fourth)  # fifth too: one message, taken back together
        (tmp_path / "later").touch()
        assert ended(again) == 0
        assert p.pool.finished(again, clean=True) is fourth
        assert fourth.cancelled and fifth.cancelled and not (fourth.begun or fifth.begun)
        assert not (tmp_path / "fourth").exists() and not (tmp_path / "fifth").exists()
        os.close(third.fd)
        os.close(again.fd)
    finally:
        p.pool.close()


def test_a_cancel_racing_the_start_of_a_queued_task_has_exactly_one_outcome(tmp_path):
    """Cancels sent while the task ahead runs (taken at once by the watcher once it runs long),
    as it ends, or after the queued one began on arrival: each queued task either began and
    ran once (its reply comes, its output exists) or was taken back and never ran; which one
    depends on timing, and the check holds either way."""
    p = Pool(tmp_path, make_site(tmp_path))
    outcomes = Counter()
    try:
        for i in range(40):
            first = p.start(f"a{i}", row("fn.Nap", seconds=(i % 5) * 0.004))
            second = p.behind(first, f"b{i}", row("fn.Pid"))
            if i % 3 == 0:  # the reply of "first" read: "second" began or is on its way
                assert ended(first) == 0
            p.pool.cancel(second, recall=bool(i % 2))
            assert ended(first) == 0
            follower = p.pool.finished(first, clean=True)
            # Taken back while "first" ran: unlinked from it, handed to the worker as taken.
            assert follower is second or (follower is None and p.pool.taken == [second])
            p.pool.taken.clear()
            if second.begun:
                assert not second.cancelled and second.fd >= 0 and first.fd == -1
                assert ended(second) == 0 and value(second) == first.pid
                assert p.pool.finished(second, clean=True) is None
                os.close(second.fd)
                assert (tmp_path / f"b{i}" / f"b{i}.out").read_text() == "ran\n"
            else:
                assert second.cancelled and second.returncode is None and second.fd == -1
                assert not (tmp_path / f"b{i}").exists()
                os.close(first.fd)
            outcomes["began" if second.begun else "at once" if follower is None else "after"] += 1
        assert p.pool.started == 1  # one process served every task
    finally:
        p.pool.close()
    assert sum(outcomes.values()) == 40, outcomes


def test_a_queued_task_never_runs_when_the_process_dies_first(tmp_path):
    p = Pool(tmp_path, make_site(tmp_path))
    try:
        first = p.start("first", row("fn.Gate", gate=str(tmp_path / "never")))
        second = p.behind(first, "second", row("fn.Pid"))
        first.signal_group(signal.SIGKILL)
        assert ended(first) == -signal.SIGKILL
        assert p.pool.finished(first, clean=False) is second
        assert second.cancelled and not second.begun
        assert not (tmp_path / "second").exists() and second.fd == -1
        os.close(first.fd)
    finally:
        p.pool.close()


# ---- a worker ------------------------------------------------------------------------------

def fn_work(tmp: Any, site: str, name: str, task_row: Any) -> Work:
    wd = str(tmp / name)
    return Work(name, RUNNER, None, {"BALSAM_DB_PATH": site, "BALSAM_JOB_ID": name}, wd,
                os.path.join(wd, f"{name}.out"), 1, 1, task_row)


def one_core_worker(tmp_path: Any, site: str, gate: Any) -> tuple[Worker, Inbox]:
    """A one-core worker with "first" (waits for ``gate``) running and "second" queued behind
    it in its warm process (a minute counts as short here: the test does not race a clock)."""
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]})
    worker.warm.short_seconds, worker.warm.mean_seconds = 60.0, 0.0
    inbox.orders.append({"work": [fn_work(tmp_path, site, "first", row("fn.Gate",
                                                                         gate=str(gate))),
                                  fn_work(tmp_path, site, "second", row("fn.Pid"))]})
    worker.step()
    assert inbox.collected("started") == ["first"]
    assert worker.warm.queued_behind == 1 and not worker.queue
    return worker, inbox


def test_a_worker_reports_the_task_behind_started_once_it_began_and_its_outcome(tmp_path):
    site, gate = make_site(tmp_path), tmp_path / "go"
    worker, inbox = one_core_worker(tmp_path, site, gate)
    try:
        gate.touch()
        serve(worker, inbox, lambda: len(inbox.collected("done")) == 2)
    finally:
        worker.close()
    assert inbox.collected("started") == ["first", "second"]
    outcomes = {o[0]: pyfunc.deserialize(o[2]) for o in inbox.collected("outcomes")}
    assert outcomes["first"] == outcomes["second"]  # one warm process, no start in between
    assert worker.node.occupancy == 0 and worker.started == 2


def test_a_task_behind_that_a_user_kills_first_is_killed_without_running(tmp_path):
    site, gate = make_site(tmp_path), tmp_path / "go"
    worker, inbox = one_core_worker(tmp_path, site, gate)
    try:
        inbox.orders.append({"kill": ["second"]})
        worker.step()
        gate.touch()
        serve(worker, inbox, lambda: inbox.collected("killed") == ["second"]
              and inbox.collected("done") == ["first"])
    finally:
        worker.close()
    assert inbox.collected("started") == ["first"]
    assert not (tmp_path / "second").exists()
    assert worker.node.occupancy == 0


def test_a_kill_of_a_task_queued_behind_a_long_one_is_answered_while_that_one_runs(tmp_path):
    """The warm process's watcher takes the cancel while "first" runs: "second" is reported
    killed before "first" ends (its gate opens only after that)."""
    site, gate = make_site(tmp_path), tmp_path / "go"
    worker, inbox = one_core_worker(tmp_path, site, gate)
    try:
        inbox.orders.append({"kill": ["second"]})
        serve(worker, inbox, lambda: inbox.collected("killed") == ["second"])
        assert "first" in worker.running and not inbox.collected("done")
        gate.touch()
        serve(worker, inbox, lambda: inbox.collected("done") == ["first"])
    finally:
        worker.close()
    assert inbox.collected("started") == ["first"]
    assert not (tmp_path / "second").exists()
    assert worker.node.occupancy == 0


def test_a_kill_of_the_first_of_two_queued_sends_the_second_back_to_the_queue(tmp_path):
    site, gate = make_site(tmp_path), tmp_path / "go"
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]})
    worker.warm.short_seconds, worker.warm.mean_seconds = 60.0, 0.0
    inbox.orders.append({"work": [
        fn_work(tmp_path, site, "first", row("fn.Gate", gate=str(gate))),
        fn_work(tmp_path, site, "second", row("fn.Pid")),
        fn_work(tmp_path, site, "third", row("fn.Pid"))]})
    try:
        worker.step()
        assert worker.warm.queued_behind == 2 and not worker.queue
        inbox.orders.append({"kill": ["second"]})
        worker.step()
        gate.touch()
        serve(worker, inbox, lambda: sorted(inbox.collected("done")) == ["first", "third"])
    finally:
        worker.close()
    assert inbox.collected("killed") == ["second"]
    assert inbox.collected("started") == ["first", "third"]
    assert not (tmp_path / "second").exists()
    assert (tmp_path / "third" / "third.out").read_text() == "ran\n"
    assert worker.node.occupancy == 0


def test_a_stop_returns_the_task_behind_unrun_and_stops_the_running_one(tmp_path):
    site, gate = make_site(tmp_path), tmp_path / "never"
    worker, inbox = one_core_worker(tmp_path, site, gate)
    try:
        inbox.orders.append({"stop": 1.0})
        serve(worker, inbox, lambda: inbox.flagged("drained"))
    finally:
        worker.close()
    assert inbox.collected("returned") == ["second"]
    assert [job for job, _ in inbox.collected("stopped")] == ["first"]
    assert inbox.collected("started") == ["first"]
    assert not (tmp_path / "second").exists()


def test_killing_the_running_task_sends_the_one_behind_back_to_the_queue(tmp_path):
    site, gate = make_site(tmp_path), tmp_path / "never"
    worker, inbox = one_core_worker(tmp_path, site, gate)
    try:
        inbox.orders.append({"kill": ["first"]})
        serve(worker, inbox, lambda: "second" in inbox.collected("done"), timeout=60)
    finally:
        worker.close()
    assert inbox.collected("killed") == ["first"]
    assert inbox.collected("started") == ["first", "second"]  # again, in a new process
    assert (tmp_path / "second" / "second.out").read_text() == "ran\n"
    assert worker.warm.started == 2


def test_a_task_recalled_after_it_began_runs_on_where_it_began(tmp_path):
    """A recall (what the worker sends when a place frees) that reaches the warm process after
    the queued task began there does not stop it: it runs on and is reported as usual (a kill
    or a stop that comes too late stops it; the tests above)."""
    site = make_site(tmp_path)
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]})
    worker.warm.short_seconds, worker.warm.mean_seconds = 60.0, 0.0
    inbox.orders.append({"work": [
        fn_work(tmp_path, site, name, row("fn.Gate", gate=str(tmp_path / f"{name}-go")))
        for name in ("first", "second")]})
    try:
        worker.step()
        assert inbox.collected("started") == ["first"] and worker.warm.queued_behind == 1
        second = worker.running["first"].task.successor
        assert isinstance(second, WarmTask) and second.job_id == "second"
        (tmp_path / "first-go").touch()
        wait_for(lambda: (tmp_path / "second").exists())  # began; the worker has not looked
        worker.warm.cancel(second, recall=True)
        (tmp_path / "second-go").touch()
        serve(worker, inbox, lambda: sorted(inbox.collected("done")) == ["first", "second"])
    finally:
        worker.close()
    assert inbox.collected("started") == ["first", "second"]
    assert not (inbox.collected("stopped") or inbox.collected("returned"))
    assert worker.node.occupancy == 0


def test_a_task_handed_a_place_keeps_its_share_cores_and_gpu():
    node = NodeSlots([0, 1], gpus=2)
    first = node.place("a", 2)
    node.place("b", 2)
    node.hand_over("a", "c")
    assert "a" not in node and "c" in node and node.occupancy == 1
    node.free("b")
    again = node.place("d", 2)  # b's place: a's cores and GPU stay with c
    assert again is not None and (again.cpus, again.gpu) != (first.cpus, first.gpu)
    node.free("c")
    node.free("d")
    assert node.occupancy == 0


def test_a_task_queued_behind_one_that_turns_long_runs_elsewhere_when_a_place_frees(tmp_path):
    """"next" is queued behind "long" while it is young; "long" then turns long (it waits for
    a gate) and "other" ends: its place is free, so the worker takes "next" back from long's
    warm process while "long" runs (the process's watcher answers the cancel at once) and runs
    it in the free place. Only conditions are waited for: "long" ends only when the test
    opens its gate, after "next" is done."""
    site = make_site(tmp_path)
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0, 1], 0), {"PATH": os.environ["PATH"]})
    worker.warm.short_seconds, worker.warm.mean_seconds = 60.0, 0.0  # the first is young...
    two = [fn_work(tmp_path, site, name, row("fn.Gate", gate=str(tmp_path / f"{name}-go")))
           ._replace(packing=2) for name in ("long", "other")]
    inbox.orders.append({"work": two + [fn_work(tmp_path, site, "next", row("fn.Pid"))
                                        ._replace(packing=2)]})
    try:
        worker.step()
        assert sorted(inbox.collected("started")) == ["long", "other"]
        assert worker.warm.queued_behind == 1 and not worker.queue
        long_task = worker.running["long"].task
        assert isinstance(long_task, WarmTask) and long_task.successor is not None
        assert long_task.successor.job_id == "next"
        worker.warm.short_seconds = 0.0  # ...and long now
        (tmp_path / "other-go").touch()
        serve(worker, inbox, lambda: "next" in inbox.collected("done"))
        assert "long" in worker.running and not inbox.collected("returned")
        assert long_task.successor is None  # taken back, unlinked
        (tmp_path / "long-go").touch()
        serve(worker, inbox, lambda: "long" in inbox.collected("done"))
    finally:
        worker.close()
    assert sorted(inbox.collected("started")) == ["long", "next", "other"]  # once each
    assert sorted(inbox.collected("done")) == ["long", "next", "other"]
    outcomes = {o[0]: o for o in inbox.collected("outcomes")}
    assert pyfunc.deserialize(outcomes["next"][2]) == pyfunc.deserialize(outcomes["other"][2])
    assert pyfunc.deserialize(outcomes["next"][2]) != pyfunc.deserialize(outcomes["long"][2])
    assert (tmp_path / "next" / "next.out").read_text() == "ran\n"
    assert worker.node.occupancy == 0
