"""The newer API's example (issue 14) on the real Slurm of ``tests/infra/slurm.sh``: `balsam site
init --machine generic-slurm`, ten Hello jobs and a BatchJob made with balsam.api in a user
script, `balsam site start` (the service submits that BatchJob with sbatch; its serial launcher
runs the jobs on a Slurm node), and the service sees the batch job end. Skipped, with the
reason, where no Slurm runs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import make_public_tmpdir, run_balsam
from launcher_support import QUICK, settings, wait_for
from service_support import launches
from slurm_support import (
    Slurm,
    batch_env,
    slurm_command,
    slurm_fixture,  # noqa: F401 - the `slurm` fixture
)
from test_site_e2e import DEMO
from test_site_e2e import SCRIPT as E2E_SCRIPT

from balsam.core import schema

pytestmark = pytest.mark.slow

SCRIPT = E2E_SCRIPT.replace('queue="local"', 'queue="debug"')
QUEUES = {"debug": {"min_nodes": 1, "max_nodes": 2, "min_minutes": 1, "max_minutes": 10,
                    "max_queued": 2, "max_running": 2, "max_total_nodes": 4}}


@pytest.fixture
def workspace(test_home, slurm: Slurm):
    root = make_public_tmpdir("balsam-site-slurm-")
    slurm.watch(root)
    yield root
    site = os.path.join(root, "my-site")
    if os.path.isdir(site):
        run_balsam("site", "stop", site)
        from balsam.db import cluster

        cluster.stop(site)
    shutil.rmtree(root, ignore_errors=True)


def test_the_newer_api_example_runs_through_slurm_with_balsam_site_start(workspace):
    from balsam.db.connect import connect

    t0 = time.monotonic()
    site = os.path.join(workspace, "my-site")
    env = {k: v for k, v in batch_env(site).items() if k != "BALSAM_DB_PATH"}
    init = subprocess.run([sys.executable, "-m", "balsam", "site", "init", "my-site",
                           "--machine", "generic-slurm"], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    with open(os.path.join(site, "apps", "demo.py"), "w") as fh:
        fh.write(DEMO)
    user = subprocess.run([sys.executable, "-c", SCRIPT], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=120)
    assert user.returncode == 0, user.stderr
    conn = connect(site, autocommit=True)
    try:
        with conn.cursor() as cur, settings(site, queues=QUEUES, mpi="mpich", launcher=QUICK,
                                            service={"cycle_seconds": 0.5}):
            start = run_balsam("site", "start", site, env=env)
            assert start.returncode == 0, start.stdout + start.stderr
            t_start = time.monotonic() - t0

            def states() -> list[str]:
                cur.execute(f"SELECT state FROM {schema.JOB_TABLE}")
                return [r[0] for r in cur.fetchall()]
            wait_for(lambda: states() == ["JOB_FINISHED"] * 10, 60, "all ten jobs to finish")
            (final,) = wait_for(lambda: [r for r in launches(cur) if r["state"] == "finished"],
                                30, "the service to see the batch job end")
            t_done = time.monotonic() - t0
            assert len(launches(cur)) == 1  # the user's own batch job, as given
            assert (final["queue"], final["nodes"], final["project"]) == ("debug", 1,
                                                                          "datascience")
            with open(final["command"]) as fh:
                script = fh.read()
            assert "#SBATCH --account=datascience" in script and "--partition=debug" in script
            cur.execute(f"SELECT hostname FROM {schema.SESSION_TABLE} WHERE job_mode = 'serial'")
            (host,) = cur.fetchone()
            stop = run_balsam("site", "stop", site, env=env)
            assert stop.returncode == 0 and "stopped the service" in stop.stdout
    finally:
        conn.close()
    nodes = set(slurm_command("sinfo", "-h", "-N", "-o", "%N").stdout.split())
    assert host in nodes  # the launcher ran inside the Slurm allocation
    for n in range(10):
        work = os.path.join(site, "data", "test", str(n))
        with open(os.path.join(work, "job.out")) as fh:
            assert fh.read() == f"hello world {n} out of 10!\n"
        with open(os.path.join(work, "preprocess.log")) as fh:
            assert "Preprocessing!\n" in fh.read()
    print(f"\nslurm site example: service up {t_start:.1f} s, ten jobs finished and the batch job "
          f"seen finished {t_done:.1f} s after `balsam site init`")
