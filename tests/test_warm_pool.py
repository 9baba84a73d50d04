"""Serial mode's warm pool and worker driven directly (no MPI, no database: the tasks' rows are
given): a task goes to the idle warm process already pinned to its cores; short function tasks
are sent behind the running one (follow-ons), each still reported started once, before its end;
a follow-on that never began is given back by a stop, and one killed while it waits is stopped
when it begins."""
from __future__ import annotations

import os
import sys
import time

import pytest
from test_launcher_serial import Inbox, serve

from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Work, Worker
from balsam.launcher import warm_pool
from balsam.launcher.warm_pool import WarmPool, WarmTask
from balsam.site import pyfunc

APP = '''from balsam.site import ApplicationDefinition


class Pid(ApplicationDefinition):
    def run(self):
        import os
        return os.getpid()
'''


def finish(pool: WarmPool, task: WarmTask, timeout: float = 30.0) -> int:
    end = time.monotonic() + timeout
    while task.poll() is None:
        assert time.monotonic() < end, "the warm task did not reply"
        time.sleep(0.005)
    os.close(task.fd)
    pool.finished(task, clean=True)
    assert task.returncode == 0 and task.outcome is not None
    return pyfunc.deserialize(task.outcome[2])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to")
def test_a_task_goes_to_the_idle_warm_process_already_on_its_cores(tmp_path):
    site = tmp_path / "site"
    (site / "apps").mkdir(parents=True)
    (site / "apps" / "fn.py").write_text(APP)
    cpus = sorted(os.sched_getaffinity(0))[:2]
    pool = WarmPool({"PATH": os.environ["PATH"]}, str(tmp_path), sys.executable)
    row = ("fn.Pid", "{}", "{}", "{}", pyfunc.serialize({}))
    env = {"BALSAM_DB_PATH": str(site)}

    def start(name: str, cpu: int) -> WarmTask:
        wd = str(tmp_path / name)
        return pool.start(name, env, wd, os.path.join(wd, "out"), [cpu], row)

    try:
        first, second = start("a", cpus[0]), start("b", cpus[1])  # two processes, one per core
        pid_on = {cpus[0]: finish(pool, first), cpus[1]: finish(pool, second)}
        assert pid_on[cpus[0]] != pid_on[cpus[1]]
        for n, cpu in enumerate([cpus[0], cpus[1], cpus[1], cpus[0]]):
            task = start(f"t{n}", cpu)
            assert finish(pool, task) == pid_on[cpu]
            assert os.sched_getaffinity(pid_on[cpu]) == {cpu}
        assert pool.started == 2
    finally:
        pool.close()


# ---- a worker sending short tasks behind the running one (follow-ons) -------------------------

WORKER_APP = APP + '''

class Add(ApplicationDefinition):
    def run(self, a):
        return a + 1


class Sleep(ApplicationDefinition):
    def run(self, seconds):
        import time
        time.sleep(seconds)
'''


@pytest.fixture
def worker_site(tmp_path, monkeypatch):
    # "Short" made generous: a loaded machine can take 50 ms over a no-op, and the first task of
    # a process imports the app file.
    monkeypatch.setattr(warm_pool, "FOLLOW_ON_SECONDS", 5.0)
    site = tmp_path / "site"
    (site / "apps").mkdir(parents=True)
    (site / "apps" / "fn.py").write_text(WORKER_APP)
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([sorted(os.sched_getaffinity(0))[0]], 0),
                    {"PATH": os.environ["PATH"]})
    yield str(site), inbox, worker
    worker.warm.close()


def function_work(site: str, name: str, app: str, **kwargs) -> Work:
    wd = os.path.join(os.path.dirname(site), "work", name)
    return Work(name, [sys.executable, "-m", pyfunc.RUNNER_MODULE], None,
                {"BALSAM_DB_PATH": site, "BALSAM_JOB_ID": name}, wd,
                os.path.join(wd, f"{name}.out"), 1, 1,
                (app, "{}", "{}", "{}", pyfunc.serialize(kwargs)))


def ended(inbox: Inbox) -> set:
    return (set(inbox.collected("done")) | {f[0] for f in inbox.collected("failed")}
            | set(inbox.collected("killed")) | set(inbox.collected("returned"))
            | {s[0] for s in inbox.collected("stopped")})


def test_short_function_tasks_are_sent_behind_the_running_one_and_each_is_reported_once(
        worker_site):
    site, inbox, worker = worker_site
    names = [f"t{i}" for i in range(40)]
    inbox.orders.append({"work": [function_work(site, n, "fn.Add", a=i)
                                  for i, n in enumerate(names)]})
    serve(worker, inbox, lambda: len(inbox.collected("done")) == 40, timeout=60)
    assert worker.warm.follow_ons > 0 and worker.warm.started == 1  # one core, one process
    assert sorted(inbox.collected("started")) == sorted(names) == sorted(inbox.collected("done"))
    seen: set = set()
    for report in inbox.reports:  # a task's start is reported no later than its end
        seen.update(report.get("started", ()))
        assert set(report.get("done", ())) <= seen
    outcomes = {o[0]: pyfunc.deserialize(o[2]) for o in inbox.collected("outcomes")}
    assert outcomes == {n: i + 1 for i, n in enumerate(names)}
    assert worker.node.occupancy == 0 and not worker._follow


def test_a_follow_on_not_begun_is_returned_by_a_stop_and_one_killed_early_is_killed(
        worker_site):
    site, inbox, worker = worker_site
    inbox.orders.append({"work": [function_work(site, "quick", "fn.Add", a=1),
                                  function_work(site, "sleep", "fn.Sleep", seconds=30),
                                  function_work(site, "next", "fn.Add", a=2)]})
    serve(worker, inbox, lambda: "next" in {w.job_id for w in worker._follow.values()},
          timeout=30)
    inbox.orders.append({"stop": 0.2})  # the sleeper is stopped before it replies
    serve(worker, inbox, lambda: inbox.flagged("drained"), timeout=30)
    assert inbox.collected("returned") == ["next"] and "next" not in inbox.collected("started")
    assert [s[0] for s in inbox.collected("stopped")] == ["sleep"]

    inbox2 = Inbox()
    second = Worker(inbox2, NodeSlots([sorted(os.sched_getaffinity(0))[0]], 0),
                    {"PATH": os.environ["PATH"]}, kill_grace=0.2)
    try:
        inbox2.orders.append({"work": [function_work(site, "quick2", "fn.Add", a=1),
                                       function_work(site, "nap", "fn.Sleep", seconds=0.5),
                                       function_work(site, "after", "fn.Sleep", seconds=30)]})
        serve(second, inbox2, lambda: "after" in {w.job_id for w in second._follow.values()},
              timeout=30)
        inbox2.orders.append({"kill": ["after"]})  # named while it waits behind the nap
        serve(second, inbox2, lambda: ended(inbox2) >= {"quick2", "nap", "after"}, timeout=30)
        assert inbox2.collected("killed") == ["after"]
        assert set(inbox2.collected("done")) == {"quick2", "nap"}
        assert not second.running and second.node.occupancy == 0
    finally:
        second.warm.close()
