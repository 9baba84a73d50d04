"""``balsam submit-launch``: a real launcher batch job on the local scheduler, a dry run, and
errors (bad workflow filter, unknown queue on a cluster scheduler, no DB) as one line, exit 2,
nothing submitted or recorded."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from balsam.core import schema
from balsam.platform import schedulers
from tests.conftest import run_balsam

QL = schema.QLAUNCH_TABLE


def count_rows(cursor) -> int:
    cursor.execute(f"SELECT count(*) FROM {QL}")
    return cursor.fetchone()[0]


@pytest.mark.slow
def test_local_submission_runs_a_launcher_that_runs_the_filtered_jobs(db, cursor):
    assert run_balsam("app", "--name", "hello", "--executable", "echo").returncode == 0
    made = run_balsam("job", "--name", "j", "--workflow", "cli-wf", "--application", "hello",
                      "--args", "hi", "--yes")
    assert made.returncode == 0, made.stderr
    proc = run_balsam("submit-launch", "-n", "1", "-t", "5", "-q", "anything", "-A", "any",
                      "--job-mode", "serial", "--wf-filter", "cli-wf")
    assert proc.returncode == 0, proc.stderr
    cursor.execute(f"SELECT id, scheduler_id, state, command, queue, nodes, wall_minutes, job_mode, "
                   f"wf_filter FROM {QL}")
    (rid, sched_id, state, command, *rest), = cursor.fetchall()
    assert proc.stdout == f"Submit OK: batch job {rid} (qlaunch{rid}), scheduler id {sched_id}\n"
    assert state == "submitted" and command == os.path.join(db, "qsubmit", f"qlaunch{rid}.sh")
    assert rest == ["anything", 1, 5, "serial", "cli-wf"]
    sched = schedulers.get("local", os.path.join(db, "qsubmit"))
    try:
        for _ in range(600):
            cursor.execute(f"SELECT state FROM {schema.JOB_TABLE}")
            if cursor.fetchone()[0] in ("RUN_DONE", "JOB_FINISHED"):
                break
            time.sleep(0.1)
        cursor.execute(f"SELECT state FROM {schema.JOB_TABLE}")
        assert cursor.fetchone()[0] in ("RUN_DONE", "JOB_FINISHED")
    finally:
        sched.cancel(sched_id)


def test_dry_run_prints_the_script_and_records_nothing(db, cursor):
    proc = run_balsam("submit-launch", "-n", "2", "-t", "30", "-q", "debug", "-A", "P1",
                      "--job-mode", "mpi", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#!/bin/bash")
    assert ("-m balsam launcher --consume-all --job-mode mpi --time-limit-minutes 28"
            in proc.stdout)
    assert count_rows(cursor) == 0


def test_a_workflow_filter_matching_no_job_is_one_line_and_submits_nothing(db, cursor):
    proc = run_balsam("submit-launch", "-n", "1", "-t", "5", "-q", "local", "-A", "",
                      "--job-mode", "mpi", "--wf-filter", "tpyo")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("balsam submit-launch: error: --wf-filter 'tpyo' matches no job's "
                           "workflow (see `balsam ls wf`); nothing submitted\n")
    assert count_rows(cursor) == 0


@pytest.fixture
def pbs_db(db):
    """The test DB with scheduler pbs for one test (settings.yml restored afterwards)."""
    path = os.path.join(db, "settings.yml")
    with open(path) as fh:
        saved = fh.read()
    with open(path, "a") as fh:
        fh.write("\nscheduler: pbs\nmachine: generic-pbs\nqueues:\n  workq: {min_nodes: 1, "
                 "max_nodes: 4, min_minutes: 1, max_minutes: 60, max_queued: 1, max_running: 1, "
                 "max_total_nodes: 4}\n")
    yield db
    with open(path, "w") as fh:
        fh.write(saved)


def test_an_unknown_queue_on_a_cluster_scheduler_is_one_line_and_submits_nothing(pbs_db, cursor):
    proc = run_balsam("submit-launch", "-n", "1", "-t", "5", "-q", "debgu", "-A", "P1",
                      "--job-mode", "mpi")
    assert proc.returncode == 2
    assert proc.stderr == ("balsam submit-launch: error: queue 'debgu' is not in this DB's "
                           "settings.yml queues (workq); nothing submitted\n")
    assert count_rows(cursor) == 0


def test_without_a_database_it_is_one_line(tmp_path):
    env = {"BALSAM_DB_PATH": str(tmp_path / "nowhere")}
    proc = run_balsam("submit-launch", "-n", "1", "-t", "5", "-q", "q", "-A", "P",
                      "--job-mode", "mpi", env=env)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("balsam submit-launch: error: ")


def test_ls_queues_shows_our_jobs_the_users_other_jobs_and_a_failing_status(pbs_db, cursor,
                                                                           tmp_path):
    fakes = os.path.join(os.path.dirname(__file__), "fakes", "bin")
    env = {"PATH": f"{fakes}:{os.environ['PATH']}", "BALSAM_FAKE_SCHED": "pbs",
           "BALSAM_FAKE_SCHED_STATE": str(tmp_path / "state.json")}
    proc = run_balsam("submit-launch", "-n", "2", "-t", "30", "-q", "workq", "-A", "P1",
                      "--job-mode", "mpi", env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("scheduler id 1000.fakepbs\n")
    script = tmp_path / "other.sh"
    script.write_text("#!/bin/bash\n#PBS -A P1\n#PBS -q workq\n#PBS -l select=1\n"
                      "#PBS -l walltime=00:10:00\ntrue\n")
    subprocess.run([os.path.join(fakes, "qsub"), "-N", "mine", str(script)], check=True,
                   env=dict(os.environ, **env), capture_output=True, timeout=30)
    out = run_balsam("ls", "queues", env=env).stdout
    assert "1000.fakepbs | workq" in out and "submitted" in out
    assert "Other batch jobs of this user:" in out and "1001.fakepbs" in out and "mine" in out
    failing = run_balsam("ls", "queues", env=dict(env, BALSAM_FAKE_SCHED_FAIL="qstat"))
    assert failing.returncode == 0
    assert failing.stdout.splitlines()[-1].startswith(
        "Note: the scheduler's status command failed (`qstat")
