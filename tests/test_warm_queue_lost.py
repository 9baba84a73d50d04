"""A worker rank that dies with function tasks queued inside its warm processes: a queued task
that never began is not counted as started (no run recorded, no retry used), one that began
is. Its watchdog learns which began from the warm processes' began file
(``launcher/warm_channel.py``), read once they are dead. Every wait is for a condition."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from typing import Any, Callable

import pytest
from launcher_procs import launchers
from launcher_support import QUICK, kill_group_of, settings
from once_support import kill, rank_pid
from test_warm_queue import make_site
from test_warm_queue_launcher import (
    assert_one_at_a_time,
    ended_runs,
    final_states,
    in_claim_order,
    name_of,
    recorded_runs,
    runs,
    site,
    step,
    timed_out_jobs,
)

from balsam.api import Job
from balsam.core import schema
from balsam.launcher.warm_pool import WarmPool, WarmTask
from balsam.launcher.watchdog import began_queued
from balsam.platform.process import start_time
from balsam.site import pyfunc

__all__ = ["site"]  # the fixture

OWNER = textwrap.dedent("""
    import os, sys, time
    from balsam.launcher.warm_pool import WarmPool
    from balsam.launcher.watchdog import Watchdog
    from balsam.site import pyfunc

    report, site, tmp = sys.argv[1:4]
    dog = Watchdog(0.5, report=report)
    pool = WarmPool({"PATH": os.environ["PATH"]}, tmp, sys.executable, watchdog=dog)
    env = {"BALSAM_DB_PATH": site}

    def row(app, **kwargs):
        return (app, "{}", "{}", "{}", pyfunc.serialize(kwargs))

    def paths(name):
        return os.path.join(tmp, name), os.path.join(tmp, name, "out")

    def reap(task):
        while task.poll() is None:
            time.sleep(0.005)
        return pool.finished(task, clean=True)

    first = pool.start("first", env, *paths("first"), [0],
                       row("fn.Gate", gate=os.path.join(tmp, "go")))
    second = pool.queue_behind(first, "second", env, *paths("second"), row("fn.Pid"))
    open(os.path.join(tmp, "go"), "w").close()
    assert reap(first) is second and second.begun  # queued, and it began
    assert reap(second) is None
    hold = pool.start("hold", env, *paths("hold"), [0],
                      row("fn.Gate", gate=os.path.join(tmp, "never")))
    waiting = pool.queue_behind(hold, "waiting", env, *paths("waiting"), row("fn.Pid"))
    dog.flush()
    print(hold.pid, flush=True)
    time.sleep(120)
""")


def wait_for(condition: Callable[[], Any], timeout: float = 60.0) -> Any:
    end = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_a_dead_owner_s_watchdog_counts_a_queued_task_started_only_if_it_began(tmp_path):
    site, report = make_site(tmp_path), str(tmp_path / "rank1.json")
    owner = subprocess.Popen([sys.executable, "-c", OWNER, report, site, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    warm_pid = int(owner.stdout.readline())
    warm_started = start_time(warm_pid)
    try:
        owner.kill()
        owner.wait(30)

        def final() -> dict[str, Any]:
            with open(report) as fh:
                found: dict[str, Any] = json.load(fh)
            return found

        wait_for(lambda: final()["state"] != "running")
        assert final()["state"] == "stopped" and not alive(warm_pid)
        # "second" began behind "first" (counted); "waiting", queued behind "hold", never did.
        assert Counter(final()["started"]) == Counter(["first", "second", "hold"])
        assert not (tmp_path / "waiting").exists()
        assert (tmp_path / "second" / "out").exists()
        assert not os.path.exists(f"{report}.began")  # read, then removed
    finally:
        kill_group_of(warm_pid, warm_started)  # if it is still that process


@pytest.mark.slow
def test_tasks_queued_behind_a_run_when_its_worker_rank_dies_run_once_with_no_retry_used(
        site, cursor, tmp_path):
    """A stream of instant function tasks through a one-task-at-a-time node, then a gated one
    ("hold"), then more (the first of those likely queued behind "hold" in its warm process).
    Once every run before "hold" is recorded, worker rank 1 is SIGKILLed: "hold"'s run is
    stopped and retried (RUN_TIMEOUT), and every other job, which may use no retry at all
    (``max_retries`` 0), runs exactly once, with exactly that run recorded: a task that was
    queued and never began is not counted as started."""
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    hold = Job(site_path=site, app_name="fn.Gate", workdir="wq/hold",
               parameters={"log": log, "name": "hold", "gate": gate})
    jobs = [step(site, log, f"q{i:02d}") for i in range(200)]
    Job.objects.bulk_create(in_claim_order(jobs[:180] + [hold] + jobs[180:]))
    names = {str(j.id): name_of(j) for j in jobs + [hold]}
    cursor.execute(f"UPDATE {schema.JOB_TABLE} SET max_retries = 0 WHERE job_id <> %s",
                   [str(hold.id)])
    with settings(site, launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "serial")
        wait_for(lambda: any(n == "hold" for _, n, *_ in runs(log)), 120)
        before = {n for w, n, *_ in runs(log) if w == "START" and n != "hold"}
        wait_for(lambda: all(final_states(cursor, names)[n] == "JOB_FINISHED" for n in before),
                 120)
        kill(wait_for(lambda: rank_pid(launcher.pid, 1), 60), signal.SIGKILL)
        wait_for(lambda: ended_runs(cursor, str(hold.id)), 120)  # the stopped run recorded
        open(gate, "w").close()
        assert launcher.wait(240) == 0, launcher.output()

    lines = runs(log)
    starts = Counter(name for what, name, _, _ in lines if what == "START")
    assert_one_at_a_time(lines, interrupted={"hold"})
    assert final_states(cursor, names) == {name: "JOB_FINISHED" for name in names.values()}
    assert starts == Counter({name: 2 if name == "hold" else 1 for name in names.values()})
    assert recorded_runs(cursor, names) == dict(starts)
    assert timed_out_jobs(cursor, names) == {"hold"}


def test_a_queued_request_counts_as_begun_as_often_as_the_began_file_names_it_or_when_unknown(
        tmp_path):
    queued = Counter({"a": 1, "b": 2, "c": 1})
    path = tmp_path / "rank1.json.began"
    path.write_text("b\nc\nb\nb\n")
    assert began_queued(queued, str(path), alive=[]) == Counter({"b": 2, "c": 1})
    assert not path.exists()  # read once, then removed
    # Unknown: a group outlived SIGKILL, no file was made, or the file is gone.
    path.write_text("")
    assert began_queued(queued, str(path), alive=[123]) == queued and path.exists()
    assert began_queued(queued, "", alive=[]) == queued
    path.unlink()
    assert began_queued(queued, str(path), alive=[]) == queued


class Noted:
    """What a worker's watchdog hears from its pool (a recorder in the Guard protocol), with a
    began file that cannot be written (its directory does not exist)."""

    def __init__(self, began_path: str) -> None:
        self.began_path = began_path
        self.lines: list[str] = []

    def add(self, pgid: int, job_id: str = "") -> None:
        self.lines.append(f"+{job_id}")

    def queue(self, pgid: int, job_id: str) -> None:
        self.lines.append(f"~{job_id}")

    def remove(self, pgid: int, *, defer: bool = False) -> None:
        self.lines.append("-")


def test_a_queued_request_whose_start_cannot_be_noted_goes_back_unrun(tmp_path):
    site = make_site(tmp_path)
    guard = Noted(str(tmp_path / "missing" / "rank1.json.began"))
    pool = WarmPool({"PATH": os.environ["PATH"]}, str(tmp_path), sys.executable, watchdog=guard)
    env = {"BALSAM_DB_PATH": site}

    def start(name: str, app: str, **kwargs: Any) -> tuple[str, str, str, str, str, Any]:
        wd = str(tmp_path / name)
        return (name, env, wd, os.path.join(wd, "out"), [0],
                (app, "{}", "{}", "{}", pyfunc.serialize(kwargs)))

    def ended(task: WarmTask) -> int:
        wait_for(lambda: task.poll() is not None)
        assert task.returncode is not None
        return task.returncode

    try:
        first = pool.start(*start("first", "fn.Gate", gate=str(tmp_path / "go")))
        name, _, wd, out, _, row = start("second", "fn.Pid")
        second = pool.queue_behind(first, name, env, wd, out, row)
        (tmp_path / "go").touch()
        assert ended(first) == 0
        assert pool.finished(first, clean=True) is second
        assert second.cancelled and not second.begun and not (tmp_path / "second").exists()
        os.close(first.fd)
        third = pool.start(*start("third", "fn.Pid"))  # sent to an idle process: not queued
        assert ended(third) == 0 and pool.finished(third, clean=True) is None
        os.close(third.fd)
        assert guard.lines == ["+first", "~second", "+third"]
    finally:
        pool.close()

