"""The warm hook runner (balsam.processing.warm_hooks): site app hooks run in forks of one
long-lived runner per worker, with the same log, job writes, timeout and isolation as the
``python -m balsam.api.hooks STEP`` script they replace."""
from __future__ import annotations

import os
import re
import shutil
import time

import pytest
from test_api import make_site

from balsam.api import Job, sites
from balsam.api.sites import HOOK_RUNNER
from balsam.platform.procgroup import live_members
from balsam.processing import scripts, warm_hooks

APPS = '''import os
import time
from balsam.site import ApplicationDefinition

print("importing demo")


class Hello(ApplicationDefinition):
    command_template = "echo {{ name }}"

    def preprocess(self):
        print("Preprocessing", self.job.parameters["name"], "in", os.getcwd())
        print("LEAK is", os.environ.get("LEAK"))
        os.environ["LEAK"] = "set by " + self.job.parameters["name"]
        self.job.data = {"seen": self.job.parameters["name"]}
        self.job.state = "PREPROCESSED"


class Hang(ApplicationDefinition):
    command_template = "echo never"

    def preprocess(self):
        print("hanging in", os.getpid(), flush=True)
        time.sleep(120)


class Crash(ApplicationDefinition):
    command_template = "echo never"

    def preprocess(self):
        print("killing my runner", flush=True)
        os.kill(os.getppid(), 9)
        time.sleep(120)
'''


@pytest.fixture
def site(db):
    yield make_site(db, demo=APPS)
    shutil.rmtree(os.path.join(db, "apps"), ignore_errors=True)
    sites.forget_apps()


@pytest.fixture
def runner():
    r = warm_hooks.HookRunner()
    yield r
    r.close()


def run(site: str, job: Job, runner, timeout: float = 60.0) -> scripts.ScriptResult:
    """The preprocess step of ``job`` as processing runs it (steps._script)."""
    env = scripts.script_environment(dict(os.environ, LEAK="from the worker"), {
        "BALSAM_JOB_ID": str(job.id), "BALSAM_DB_PATH": site})
    work = os.path.join(site, "data", job.workdir)
    return scripts.run_script("preprocess", f"{HOOK_RUNNER} preprocess", work, env,
                              timeout=timeout, hooks=runner, app=job.app_name, kill_grace=1.0)


def log_of(site: str, job: Job) -> str:
    with open(os.path.join(site, "data", job.workdir, "preprocess.log")) as fh:
        return fh.read()


def hello(site: str, name: str) -> Job:
    return Job.objects.create(site_path=site, app_name="demo.Hello", workdir=f"hello/{name}",
                              parameters={"name": name})


def test_only_this_interpreters_hook_command_without_envscript_runs_warm():
    assert warm_hooks.warm_step(f"{HOOK_RUNNER} postprocess", None) == "postprocess"
    assert warm_hooks.warm_step(f"{HOOK_RUNNER} postprocess", "/x/pre.sh") is None
    assert warm_hooks.warm_step("/other/python -m balsam.api.hooks preprocess", None) is None
    assert warm_hooks.warm_step(f"{HOOK_RUNNER} other", None) is None
    assert warm_hooks.warm_step("/bin/true", None) is None


@pytest.mark.slow
def test_many_hooks_run_through_one_runner_with_the_scripts_log_and_writes(site, runner):
    cold_job = hello(site, "cold")
    cold = run(site, cold_job, None)
    jobs = [hello(site, f"w{i}") for i in range(12)]
    results = [run(site, job, runner) for job in jobs]
    assert runner.started == 1
    assert all(r.ok for r in results), [r.tail for r in results]
    for job in jobs:
        job.refresh_from_db()
        assert job.data == {"seen": job.parameters["name"]}
    # The log reads as the script's did (times and ids aside); env and cwd are the job's,
    # and what a hook set in os.environ did not reach the next hook.
    def norm(text: str, job: Job) -> str:
        # the site's path first: it is random and may hold a job's name ("w5" in "rpsbw537")
        text = text.replace(site, "SITE").replace(str(job.id)[:8], "ID")
        text = text.replace(job.workdir, "WD")
        text = text.replace(job.parameters["name"], "NAME")
        return re.sub(r"Started \S+|after [\d.]+ s", "T", text)

    assert cold.ok
    assert norm(log_of(site, jobs[5]), jobs[5]) == norm(log_of(site, cold_job), cold_job)
    text = log_of(site, jobs[5])
    assert "importing demo\n" in text and "LEAK is from the worker\n" in text
    assert f"Preprocessing w5 in {os.path.join(site, 'data', 'hello', 'w5')}\n" in text


@pytest.mark.slow
def test_a_hung_hook_is_timed_out_and_the_next_hook_still_runs(site, runner):
    hang = Job.objects.create(site_path=site, app_name="demo.Hang", workdir="hang")
    result = run(site, hang, runner, timeout=3.0)
    assert result.timed_out and not result.ok
    assert "preprocess timed out after 3.0 s and was killed" in scripts.failure_message(
        "preprocess", result)
    pid = int(result.tail.split("hanging in ")[1].split()[0])
    assert not live_members(pid)  # the fork's whole group is gone
    nxt = hello(site, "after")
    assert run(site, nxt, runner).ok
    assert runner.started == 1  # the hung fork was stopped, not the runner
    nxt.refresh_from_db()
    assert nxt.data == {"seen": "after"}


@pytest.mark.slow
def test_a_runner_that_dies_mid_hook_fails_the_hook_and_is_replaced(site, runner):
    assert run(site, hello(site, "first"), runner).ok
    first_pid = runner.pid
    crash = Job.objects.create(site_path=site, app_name="demo.Crash", workdir="crash")
    result = run(site, crash, runner)
    assert not result.ok and result.returncode == -9
    message = scripts.failure_message("preprocess", result)
    assert "killed by SIGKILL" in message and "warm hook runner" in message
    assert "killing my runner" in message
    assert runner.pid is None and not live_members(first_pid)
    nxt = hello(site, "next")
    assert run(site, nxt, runner).ok and runner.started == 2
    nxt.refresh_from_db()
    assert nxt.data == {"seen": "next"}


@pytest.mark.slow
def test_an_edited_app_file_is_picked_up_by_a_fresh_runner(site, runner):
    assert run(site, hello(site, "v1"), runner).ok
    path = os.path.join(site, "apps", "demo.py")
    with open(path) as fh:
        text = fh.read()
    with open(path, "w") as fh:
        fh.write(text.replace('print("Preprocessing"', 'print("Edited preprocessing"'))
    later = time.time() + 2  # a distinct mtime even on a coarse clock
    os.utime(path, (later, later))
    job = hello(site, "v2")
    assert run(site, job, runner).ok
    assert "Edited preprocessing v2" in log_of(site, job)
    assert runner.started == 2


@pytest.mark.slow
def test_transition_workers_run_site_hooks_in_their_warm_runner(site, cursor):
    import logging

    from balsam.core import schema
    from balsam.processing import transitions
    from balsam.processing.steps import Limits
    from balsam.processing.worker import TransitionPool

    jobs = [hello(site, f"p{i}") for i in range(6)]
    pool = TransitionPool(1, site, wf_filter=None, base_env=dict(os.environ),
                          limits=Limits(60.0), log=logging.getLogger("test"),
                          heartbeat_seconds=10.0, lease_seconds=60, idle_wait_seconds=0.2,
                          reconnect_max_seconds=5.0)
    pool.start()
    try:
        deadline = time.monotonic() + 60
        done = 0
        while done < len(jobs) and time.monotonic() < deadline:
            transitions.advance(cursor, None, 100)
            cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE state = "
                           "'PREPROCESSED'")
            done = cursor.fetchone()[0]
            time.sleep(0.1)
        worker = pool.workers[0]
        assert done == len(jobs)
        assert worker.hooks is not None and worker.hooks.started == 1
        runner_pid = worker.hooks.pid
    finally:
        pool.stop()
    assert runner_pid is not None and not live_members(runner_pid)  # closed with the worker
    for job in jobs:
        job.refresh_from_db()
        assert job.data == {"seen": job.parameters["name"]}
        assert "# hook preprocess() of job" in log_of(site, job)


@pytest.mark.slow
def test_an_abort_stops_the_hook_and_keeps_the_runner(site, runner):
    hang = Job.objects.create(site_path=site, app_name="demo.Hang", workdir="hang")
    env = scripts.script_environment(os.environ, {"BALSAM_JOB_ID": str(hang.id),
                                                  "BALSAM_DB_PATH": site})
    stop_at = time.monotonic() + 1.5
    result = scripts.run_script("preprocess", f"{HOOK_RUNNER} preprocess",
                                os.path.join(site, "data", "hang"), env, timeout=60,
                                hooks=runner, app="demo.Hang", kill_grace=1.0,
                                should_abort=lambda: time.monotonic() > stop_at)
    assert result.aborted and not result.timed_out and result.seconds < 10
    pid = int(result.tail.split("hanging in ")[1].split()[0])
    assert not live_members(pid)
    assert run(site, hello(site, "after"), runner).ok and runner.started == 1


@pytest.mark.slow
def test_a_job_with_its_own_interpreter_variables_runs_its_hook_as_a_script(site, runner):
    assert run(site, hello(site, "a"), runner).ok and runner.served == 1
    job = hello(site, "b")
    env = scripts.script_environment(os.environ, {"BALSAM_JOB_ID": str(job.id),
                                                  "BALSAM_DB_PATH": site,
                                                  "PYTHONPATH": "/nonexistent/extra"})
    assert not runner.accepts(env)
    result = scripts.run_script("preprocess", f"{HOOK_RUNNER} preprocess",
                                os.path.join(site, "data", job.workdir), env, timeout=60,
                                hooks=runner, app=job.app_name)
    assert result.ok and runner.served == 1 and runner.started == 1
    job.refresh_from_db()
    assert job.data == {"seen": "b"}
