"""Site app hooks run by processing (python -m balsam.api.hooks) with real launchers: preprocess
output is kept with the job, handle_error decides retry or fail, handle_timeout reruns, a hook
that raises fails the job with its traceback, and hooks move jobs only through the state
writer (the events say so)."""
from __future__ import annotations

import os
import shutil

import pytest
from launcher_support import events
from test_api import make_site
from test_processing_e2e import run_launcher
from test_processing_scenarios import STOPPED, stop_first_launcher_while_running

from balsam.api import Job, sites

APPS = '''import os
from balsam.site import ApplicationDefinition


class Hello(ApplicationDefinition):
    command_template = "echo hello {{ name }}"
    cleanup_files = ["*.tmp"]

    def preprocess(self):
        print("Preprocessing!")
        open("scratch.tmp", "w").close()
        self.job.state = "PREPROCESSED"

    def postprocess(self):
        self.job.data = {"checked": os.path.exists("scratch.tmp")}
        self.job.state = "POSTPROCESSED"


class Scratchy(ApplicationDefinition):
    """cleanup_files and no hook: cleaned by the stdlib cleanup script, not the hook runner."""
    command_template = "touch a.tmp b.keep"
    cleanup_files = ["*.tmp"]


class Flaky(ApplicationDefinition):
    command_template = "sh -c {{ script }}"
    parameters = {"script": "test -f marker || { touch marker; exit 3; }", "retries": 1}

    def handle_error(self):
        tries = self.job.data.get("tries", 0)
        self.job.data["tries"] = tries + 1
        print("error handler, try", tries)
        retry = tries < self.job.parameters["retries"]
        self.job.state = "RESTART_READY" if retry else "FAILED"


class Slow(ApplicationDefinition):
    command_template = "sh -c {{ script }}"
    parameters = {"script": "if [ -e slept_once ]; then echo rerun; exit 0; fi; "
                            "touch slept_once; sleep 300 & echo $$ $! > pids; wait"}

    def handle_timeout(self):
        self.job.data = {"timed_out": True}
        self.job.state = "RESTART_READY"


class Env(ApplicationDefinition):
    command_template = "sh -c {{ script }}"
    parameters = {"script": 'echo "$GREETING from $FROM_PREAMBLE"'}
    environment_variables = {"GREETING": "hi there"}

    def shell_preamble(self):
        return ["export FROM_PREAMBLE=preamble"]


class Cheat(ApplicationDefinition):
    command_template = "echo never"

    def preprocess(self):
        self.job.state = "RUNNING"


class Broken(ApplicationDefinition):
    command_template = "echo never"

    def preprocess(self):
        raise ValueError("bad input deck")
'''


@pytest.fixture
def site(db):
    yield make_site(db, demo=APPS)
    shutil.rmtree(os.path.join(db, "apps"), ignore_errors=True)
    sites.forget_apps()


def read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def moves(cur, job_id) -> list[tuple[str, str]]:
    return [(e[2], e[3]) for e in events(cur, str(job_id))]


@pytest.mark.slow
def test_hooks_run_with_the_job_bound_and_move_it_through_processing(site, cursor):
    hello = Job.objects.create(site_path=site, app_name="demo.Hello", workdir="hello/0",
                               parameters={"name": "world 0 out of 10!"})
    flaky = Job.objects.create(site_path=site, app_name="demo.Flaky", workdir="flaky/ok")
    failing = Job.objects.create(site_path=site, app_name="demo.Flaky", workdir="flaky/no",
                                 parameters={"script": "exit 5", "retries": 0})
    broken = Job.objects.create(site_path=site, app_name="demo.Broken", workdir="broken")
    Job.objects.create(site_path=site, app_name="demo.Env", workdir="env")
    cheat = Job.objects.create(site_path=site, app_name="demo.Cheat", workdir="cheat")
    scratchy = Job.objects.create(site_path=site, app_name="demo.Scratchy", workdir="scratchy")
    run_launcher(site)
    scratchy.refresh_from_db()
    assert scratchy.state == "JOB_FINISHED"
    assert sorted(os.listdir(os.path.join(site, "data", "scratchy"))) == [
        "b.keep", "job.out", "postprocess.log"]
    log = read(os.path.join(site, "data", "scratchy", "postprocess.log"))
    assert "-m balsam.processing.cleanup" in log and "removed 1 file(s)" in log
    assert read(os.path.join(site, "data", "env", "job.out")) == "hi there from preamble\n"
    for job in (hello, flaky, failing, broken):
        job.refresh_from_db()

    work = os.path.join(site, "data", "hello", "0")
    assert read(os.path.join(work, "job.out")) == "hello world 0 out of 10!\n"
    assert "Preprocessing!\n" in read(os.path.join(work, "preprocess.log"))
    assert not os.path.exists(os.path.join(work, "scratch.tmp"))  # cleanup_files
    assert (hello.state, hello.data, hello.return_code) == ("JOB_FINISHED", {"checked": True}, 0)
    assert [s for s, _ in moves(cursor, hello.id)] == [
        "STAGED_IN", "PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED", "JOB_FINISHED"]

    assert (flaky.state, flaky.data) == ("JOB_FINISHED", {"tries": 1})
    assert [s for s, _ in moves(cursor, flaky.id)][2:6] == [
        "RUN_ERROR", "RESTART_READY", "RUNNING", "RUN_DONE"]
    log = read(os.path.join(site, "data", "flaky", "ok", "postprocess.log"))
    assert "# Invoked to handle RUN_ERROR" in log and "error handler, try 0" in log

    assert (failing.state, failing.data, failing.return_code) == ("FAILED", {"tries": 1}, 5)
    assert moves(cursor, failing.id)[-1] == ("FAILED", "set by demo.Flaky.handle_error()")
    assert moves(cursor, flaky.id)[3] == ("RESTART_READY", "set by demo.Flaky.handle_error()")

    cheat.refresh_from_db()
    assert cheat.state == "FAILED"
    assert "preprocess() set the state RUNNING" in moves(cursor, cheat.id)[-1][1]

    assert broken.state == "FAILED"
    last = moves(cursor, broken.id)[-1][1]
    assert "preprocess exited with code 1" in last and "ValueError: bad input deck" in last


def test_handle_timeout_decides_what_follows_a_run_stopped_by_its_launcher(site, cursor):
    slow = Job.objects.create(site_path=site, app_name="demo.Slow", workdir="slow")
    stop_first_launcher_while_running(site, cursor, [str(slow.id)])
    slow.refresh_from_db()
    assert (slow.state, slow.data) == ("JOB_FINISHED", {"timed_out": True})
    assert moves(cursor, slow.id)[2:4] == [
        ("RUN_TIMEOUT", STOPPED), ("RESTART_READY", "set by demo.Slow.handle_timeout()")]
    assert [s for s, _ in moves(cursor, slow.id)[4:]] == [
        "RUNNING", "RUN_DONE", "POSTPROCESSED", "JOB_FINISHED"]
    assert read(os.path.join(site, "data", "slow", "job.out")).endswith("rerun\n")
