"""`balsam mkchild` through the real CLI against the real test DB: a child of the job named by
BALSAM_JOB_ID, with the flags of `balsam job`, without Django, and one-line errors that write
nothing."""
from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from cli_support import add_app, add_edge, add_jobs, assert_one_line_error, jobs_by_name, snapshot
from conftest import run_balsam

from balsam.core import schema

CHILD_ARGS = ["mkchild", "--name", "kid", "--application", "hello", "--yes"]


@pytest.fixture
def parent(cursor):
    """A running job with a parent of its own and a queued launch; returns its id."""
    add_app(cursor, "hello", "echo")
    cursor.execute(f"INSERT INTO {schema.QLAUNCH_TABLE} (scheduler_id, project, queue, nodes, "
                   "wall_minutes, job_mode, wf_filter, sched_flags, command, state, "
                   "prescheduled_only, from_balsam) VALUES (9, '', '', 1, 10, 'mpi', '', '', '', "
                   "'running', false, true) RETURNING id")
    launch = cursor.fetchone()[0]
    (grand,) = add_jobs(cursor, name="grand", workflow="wf", application="hello",
                        state="JOB_FINISHED")
    (job_id,) = add_jobs(cursor, name="current", workflow="wf", application="hello",
                         state="RUNNING")
    add_edge(cursor, grand, job_id)
    cursor.execute(f"UPDATE {schema.JOB_TABLE} SET queued_launch_id = %s WHERE job_id = %s",
                   [launch, job_id])
    return job_id


def parents_of(cursor, job_id):
    cursor.execute(f"SELECT parent_id::text FROM {schema.DEP_TABLE} WHERE child_id = %s", [job_id])
    return [r[0] for r in cursor.fetchall()]


def test_mkchild_adds_a_child_of_the_current_job_in_its_workflow_and_launch(cursor, parent):
    proc = run_balsam(*CHILD_ARGS, "--args", "in.dat", "2", "--num-nodes", "2", "--env", "A=1",
                      "--input-files", "*.dat", env={"BALSAM_JOB_ID": parent})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    jobs = jobs_by_name(cursor)
    kid, current = jobs["kid"], jobs["current"]
    assert (kid["workflow"], kid["application"], kid["args"], kid["num_nodes"]) == \
        ("wf", "hello", "in.dat 2", 2)
    assert (kid["environ_vars"], kid["input_files"], kid["state"]) == ("A=1", "*.dat", "CREATED")
    assert kid["queued_launch_id"] == current["queued_launch_id"] is not None
    assert parents_of(cursor, str(kid["job_id"])) == [parent]  # the current job only
    short = str(kid["job_id"])[:8]
    assert f"    parents: ['{parent}']\n" in proc.stdout
    assert proc.stdout.endswith(f"Added job [kid | {short}] as a child of [current | {parent[:8]}]\n")


def test_mkchild_workflow_flag_overrides_the_current_jobs(cursor, parent):
    proc = run_balsam(*CHILD_ARGS, "--workflow", "other", env={"BALSAM_JOB_ID": parent})
    assert proc.returncode == 0, proc.stderr
    assert jobs_by_name(cursor)["kid"]["workflow"] == "other"


def test_mkchild_outside_a_job_is_a_one_line_error(cursor, parent, monkeypatch):
    monkeypatch.delenv("BALSAM_JOB_ID", raising=False)
    before = snapshot(cursor)
    proc = run_balsam(*CHILD_ARGS)
    assert_one_line_error(proc, "balsam mkchild: error: BALSAM_JOB_ID is not set")
    assert snapshot(cursor) == before


@pytest.mark.parametrize("extra, env_id, fragment", [
    ([], "gone", "BALSAM_JOB_ID names job {gone}, which is not in the database"),
    ([], "not-a-uuid", "BALSAM_JOB_ID='not-a-uuid' is not a job id"),
    (["--application", "nosuch"], None, "application 'nosuch' does not exist"),
    (["--num-nodes", "0"], None, "num_nodes must be >= 1"),
    (["--env", "bad"], None, "--env 'bad' is not of the form VAR=VALUE"),
    (["--name", " "], None, "--name may not be empty"),
])
def test_mkchild_errors_are_one_line_and_write_nothing(cursor, parent, extra, env_id, fragment):
    gone = str(uuid.uuid4())
    job_id = {"gone": gone, None: parent}.get(env_id, env_id)
    before = snapshot(cursor)
    proc = run_balsam(*CHILD_ARGS, *extra, env={"BALSAM_JOB_ID": job_id})
    assert_one_line_error(proc, fragment.format(gone=gone))
    assert snapshot(cursor) == before


def test_mkchild_without_yes_or_terminal_refuses(cursor, parent):
    before = snapshot(cursor)
    proc = run_balsam(*[a for a in CHILD_ARGS if a != "--yes"], env={"BALSAM_JOB_ID": parent})
    assert_one_line_error(proc, "pass --yes")
    assert snapshot(cursor) == before


def test_mkchild_does_not_import_django(cursor, parent):
    env = dict(__import__("os").environ, BALSAM_JOB_ID=parent)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "balsam", *CHILD_ARGS],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr[-500:]
    modules = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
               if line.startswith("import time:")]
    assert "psycopg2" in modules and not [m for m in modules if m.split(".")[0] == "django"]


def test_mkchild_help_lists_the_job_flags(db):
    proc = run_balsam("mkchild", "--help")
    assert proc.returncode == 0
    for flag in ("--name", "--workflow", "--application", "--wall-time-minutes", "--node-packing-count",
                 "--mpi-flags", "--post-handle-timeout", "--stage-out-files", "--env", "--yes",
                 "BALSAM_JOB_ID"):
        assert flag in proc.stdout, flag


def test_mkchild_accepts_the_classic_wall_minutes_and_preprocessor_flags(cursor, parent):
    proc = run_balsam(*CHILD_ARGS, "--wall-minutes", "12", "--preprocessor", "pre.sh",
                      "--postprocessor", "post.sh", env={"BALSAM_JOB_ID": parent})
    assert proc.returncode == 0, proc.stderr
    assert jobs_by_name(cursor)["kid"]["wall_time_minutes"] == 12
    assert "--preprocessor is obsolete and ignored" in proc.stderr
    assert "--postprocessor is obsolete and ignored" in proc.stderr
