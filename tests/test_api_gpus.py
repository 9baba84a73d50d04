"""``Job(gpus_per_rank=...)`` of the newer API: checked against the site's GPUs when the job is
made, stored with the job, and honoured by launchers: one whose nodes lack the GPUs leaves the
job alone; serial mode gives each task one GPU of its own (``CUDA_VISIBLE_DEVICES``), MPI mode a
job every GPU of its nodes. The machine's GPUs are faked with ``gpus_per_node`` in settings.yml."""
from __future__ import annotations

import os
import shutil

import pytest
from launcher_procs import launchers
from launcher_support import QUICK, settings, states

from balsam.api import Job, sites
from balsam.api.names import TranslationError
from balsam.core import leases, schema

TOP = "gpu-tests"
"""Every job's workdir is under data/gpu-tests (removed after each test)."""
GPU_APP = '''from balsam.site import ApplicationDefinition


class Show(ApplicationDefinition):
    command_template = "sh -c 'sleep {{ nap }}; echo gpus=$CUDA_VISIBLE_DEVICES'"
'''


@pytest.fixture
def site(db):
    apps = os.path.join(db, "apps")
    shutil.rmtree(apps, ignore_errors=True)
    os.makedirs(apps)
    with open(os.path.join(apps, "gpu.py"), "w") as fh:
        fh.write(GPU_APP)
    sites.forget_apps()
    yield db
    shutil.rmtree(apps, ignore_errors=True)
    shutil.rmtree(os.path.join(db, "data", TOP), ignore_errors=True)  # the session's DB
    sites.forget_apps()


def make(site: str, workdir: str, **fields) -> Job:
    return Job.objects.create(site_path=site, app_name="gpu.Show", workdir=f"{TOP}/{workdir}",
                              parameters={"nap": 0}, **fields)


def test_gpus_per_rank_is_checked_against_the_sites_gpus_and_stored(site, cursor):
    with settings(site, gpus_per_node=0):
        with pytest.raises(TranslationError, match=r"more than the 0 GPU\(s\) per node of this "
                                                   r"site \(gpus_per_node in"):
            make(site, "g/0", gpus_per_rank=1)
    with settings(site, gpus_per_node=2):
        one = make(site, "g/1", gpus_per_rank=1)
        two_ranks = make(site, "g/2", gpus_per_rank=1, ranks_per_node=2)
        for fields, message in (({"gpus_per_rank": 2}, "a single-rank job runs in serial mode"),
                                ({"gpus_per_rank": 2, "ranks_per_node": 2}, "2 x ranks_per_node 2"),
                                ({"gpus_per_rank": "1"}, "whole number >= 0")):
            with pytest.raises(TranslationError, match=message):
                make(site, "g/bad", **fields)
        assert make(site, "g/3").gpus_per_rank == 0
    assert (one.gpus_per_rank, two_ranks.gpus_per_rank) == (1, 1)
    with pytest.raises(TranslationError, match="gpus_per_rank was checked"):
        one.gpus_per_rank = 4  # fixed once made, as the creation check would be bypassed
    assert Job.objects.count(site_path=site, gpus_per_rank=1) == 2
    cursor.execute(f"SELECT user_workdir, gpus_per_rank FROM {schema.JOB_TABLE} "
                   "ORDER BY user_workdir")
    assert [(os.path.basename(w), g) for w, g in cursor.fetchall()] == [("1", 1), ("2", 1),
                                                                        ("3", 0)]


def test_a_launcher_claims_only_jobs_whose_gpus_fit_its_nodes(site, cursor):
    with settings(site, gpus_per_node=4):
        make(site, "c/serial", gpus_per_rank=1)
        make(site, "c/mpi", gpus_per_rank=2, ranks_per_node=2)
        make(site, "c/none")
    cursor.execute(f"UPDATE {schema.JOB_TABLE} SET state = 'PREPROCESSED'")
    sid = leases.open_session(cursor, hostname="h", pid=1, job_mode="mpi", num_nodes=1,
                              lease_seconds=60)

    def claimed(**kw) -> list[str]:
        rows = leases.claim(cursor, sid, 10, max_nodes=1, **kw)
        leases.release(cursor, sid)
        return sorted(os.path.basename(r["user_workdir"]) for r in rows)
    assert claimed(serial=True, gpus_per_node=0) == ["none"]
    assert claimed(serial=True, gpus_per_node=4) == ["none", "serial"]
    assert claimed(serial=False, gpus_per_node=2) == ["none", "serial"]
    assert claimed(serial=False, gpus_per_node=4) == ["mpi", "none", "serial"]


def gpus_seen(site: str, workdir: str) -> str:
    with open(os.path.join(site, "data", TOP, workdir, "job.out")) as fh:
        return fh.read().strip()


@pytest.mark.slow
def test_gpu_jobs_wait_for_a_launcher_with_gpus_which_gives_each_task_its_own(site, cursor):
    with settings(site, gpus_per_node=2):
        for i in range(4):
            Job.objects.create(site_path=site, app_name="gpu.Show", workdir=f"{TOP}/s/{i}",
                               parameters={"nap": 0.3}, gpus_per_rank=1, node_packing_count=4)
        make(site, "m/0", gpus_per_rank=1, ranks_per_node=2)
    with settings(site, local_nodes=1, launcher=QUICK), launchers() as start:
        blind = start("--consume-all", "--job-mode", "serial", "--gpus-per-node", "0")
        assert blind.wait(60) == 0, blind.output()  # nothing it can run: it exits
        assert set(states(cursor).values()) == {"PREPROCESSED"}
        with settings(site, gpus_per_node=2):
            assert start("--consume-all", "--job-mode", "serial").wait(90) == 0
            assert start("--consume-all", "--job-mode", "mpi").wait(90) == 0
    assert set(states(cursor).values()) == {"JOB_FINISHED"}
    seen = [gpus_seen(site, f"s/{i}") for i in range(4)]
    assert set(seen) == {"gpus=0", "gpus=1"}  # one GPU each, the two shared out over time
    # MPI mode: the job has the node's GPUs; each of its two ranks printed them.
    assert gpus_seen(site, "m/0").splitlines() == ["gpus=0,1", "gpus=0,1"]
