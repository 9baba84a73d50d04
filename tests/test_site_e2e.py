"""The newer API's example end to end on the local profile: `balsam site init`, an app class in
apps/demo.py, ten jobs and a BatchJob made with balsam.api in a user script, `balsam site start`
(the service submits that BatchJob to the local scheduler, whose launcher runs the jobs),
`balsam site status` and `balsam site stop`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import make_public_tmpdir, run_balsam
from launcher_support import QUICK, settings, wait_for
from service_support import kill_local_jobs, launches

from balsam.core import schema

DEMO = '''from balsam.site import ApplicationDefinition

class Hello(ApplicationDefinition):
    command_template = "echo hello {{ name }}"

    def preprocess(self):
        print("Preprocessing!")
        self.job.state = "PREPROCESSED"
'''

SCRIPT = '''from balsam.api import Job, BatchJob

jobs = [
    Job(site_path="my-site", app_name="demo.Hello", workdir=f"test/{n}",
        parameters={"name": f"world {n} out of 10!"})
    for n in range(10)
]
Job.objects.bulk_create(jobs)

BatchJob.objects.create(site_id=jobs[0].site_id, num_nodes=1, wall_time_min=10, job_mode="serial",
                        project="datascience", queue="QUEUE")
'''.replace("QUEUE", "local")  # the example; the Slurm test runs it with its own queue


@pytest.fixture
def workspace(test_home):
    root = make_public_tmpdir("balsam-site-e2e-")
    yield root
    site = os.path.join(root, "my-site")
    if os.path.isdir(site):
        run_balsam("site", "stop", site)
        kill_local_jobs(site)
        from balsam.db import cluster

        cluster.stop(site)
    shutil.rmtree(root, ignore_errors=True)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "BALSAM_DB_PATH"}


@pytest.mark.slow
def test_the_newer_api_example_runs_through_the_service_on_the_local_profile(workspace):
    from balsam.db.connect import connect

    init = subprocess.run([sys.executable, "-m", "balsam", "site", "init", "my-site"],
                          cwd=workspace, env=clean_env(), capture_output=True, text=True,
                          timeout=120)
    assert init.returncode == 0, init.stderr
    site = os.path.join(workspace, "my-site")
    assert os.path.isdir(os.path.join(site, "apps"))
    with open(os.path.join(site, "apps", "demo.py"), "w") as fh:
        fh.write(DEMO)
    user = subprocess.run([sys.executable, "-c", SCRIPT], cwd=workspace, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert user.returncode == 0, user.stderr

    conn = connect(site, autocommit=True)
    try:
        with conn.cursor() as cur, settings(site, service={"cycle_seconds": 0.5},
                                            launcher=QUICK):
            (batch,) = launches(cur)
            assert (batch["state"], batch["queue"], batch["nodes"], batch["project"]) == (
                "pending-submission", "local", 1, "datascience")
            start = run_balsam("site", "start", site, env=clean_env())
            assert start.returncode == 0, start.stdout + start.stderr
            assert "apps: demo.Hello" in start.stdout and "agent: service started" in start.stdout

            def states() -> list[str]:
                cur.execute(f"SELECT state FROM {schema.JOB_TABLE}")
                return [r[0] for r in cur.fetchall()]
            wait_for(lambda: states() == ["JOB_FINISHED"] * 10, 120, "all ten jobs to finish")
            (final,) = wait_for(lambda: [r for r in launches(cur) if r["state"] == "finished"],
                                60, "the service to see the batch job end")
            assert final["id"] == batch["id"] and final["scheduler_id"]  # the user's, as given
            assert len(launches(cur)) == 1  # the planner counted it: no batch job of its own
            status = run_balsam("site", "status", site, env=clean_env())
            assert status.returncode == 0 and "agent: running" in status.stdout
            stop = run_balsam("site", "stop", site, env=clean_env())
            assert stop.returncode == 0 and "stopped the service" in stop.stdout
    finally:
        conn.close()
    for n in range(10):
        work = os.path.join(site, "data", "test", str(n))
        with open(os.path.join(work, "job.out")) as fh:
            assert fh.read() == f"hello world {n} out of 10!\n"
        with open(os.path.join(work, "preprocess.log")) as fh:
            assert "Preprocessing!\n" in fh.read()


def test_site_commands_name_a_missing_site_in_one_line(workspace):
    out = run_balsam("site", "status", os.path.join(workspace, "nowhere"), env=clean_env())
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "is not a Balsam site" in out.stderr


def test_site_status_lists_the_apps_and_names_a_broken_file_and_line(db):
    apps = os.path.join(db, "apps")
    shutil.rmtree(apps, ignore_errors=True)  # only this test's apps, whatever ran before
    os.makedirs(apps)
    try:
        with open(os.path.join(apps, "demo.py"), "w") as fh:
            fh.write(DEMO)
        with open(os.path.join(apps, "broken.py"), "w") as fh:
            fh.write("from balsam.site import ApplicationDefinition\n\nclass B(:\n")
        out = run_balsam("site", "status", db)
        assert out.returncode == 1, out.stderr  # no agent running
        lines = out.stdout.splitlines()
        assert "agent: not running" in lines and "apps: demo.Hello" in lines
        assert f"app error: {apps}/broken.py line 3: syntax error: invalid syntax" in lines
    finally:
        shutil.rmtree(apps, ignore_errors=True)
