"""`balsam wait` through the real CLI against the real test DB: exit codes, selections, waking
on the database's notifications, the progress line."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from cli_support import add_app, add_jobs, assert_one_line_error, run_tty
from conftest import run_balsam

from balsam.core import lifecycle


@pytest.fixture
def app(cursor):
    add_app(cursor, "hello", "echo")
    return cursor


def finish(cursor, ids: list[str], state: str = "JOB_FINISHED") -> None:
    moved = lifecycle.transition(cursor, ids, state, "test", user=True, force=True)
    assert len(moved) == len(ids)


def start_wait(*args: str, fallback_seconds: float = 0) -> subprocess.Popen:
    """A real ``balsam wait`` process; ``fallback_seconds``: its re-count interval instead of
    :data:`balsam.defaults.WAIT_FALLBACK_SECONDS` (set in the process before the CLI runs)."""
    argv = [sys.executable, "-m", "balsam", "wait", *args]
    if fallback_seconds:
        argv = [sys.executable, "-c",
                "import sys; from balsam import defaults; "
                f"defaults.WAIT_FALLBACK_SECONDS = {fallback_seconds!r}; "
                "from balsam.cli.main import main; sys.exit(main(sys.argv[1:]))",
                "wait", *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ))


def until_listening(cursor, waits: int = 1, timeout: float = 60) -> None:
    """Block until ``waits`` `balsam wait` processes listen: their connection (application_name
    balsam-wait; selection already resolved on another one) is idle after a COMMIT, which comes
    after the LISTEN sent right after connecting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'balsam-wait' "
                       "AND state = 'idle' AND query = 'COMMIT'")
        if cursor.fetchone()[0] >= waits:
            return
        time.sleep(0.05)
    raise AssertionError("balsam wait did not start listening")


def test_wait_returns_0_when_every_selected_job_finished(app):
    add_jobs(app, 3, workflow="camp", application="hello", state="JOB_FINISHED")
    add_jobs(app, workflow="other", application="hello")  # not selected: never final
    proc = run_balsam("wait", "--wf", "camp", "--timeout", "30")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "all 3 jobs finished\n", "")


def test_wait_returns_1_naming_failed_and_killed_counts(app):
    add_jobs(app, 2, workflow="camp", application="hello", state="JOB_FINISHED")
    add_jobs(app, 2, workflow="camp", application="hello", state="FAILED")
    add_jobs(app, workflow="camp", application="hello", state="USER_KILLED")
    proc = run_balsam("wait", "--wf", "camp")
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == "3 of 5 jobs did not finish: 2 FAILED, 1 USER_KILLED\n"


def test_wait_times_out_with_124_saying_what_is_left(app):
    add_jobs(app, workflow="camp", application="hello", state="JOB_FINISHED")
    add_jobs(app, 2, workflow="camp", application="hello", state="RUNNING")
    started = time.monotonic()
    proc = run_balsam("wait", "--wf", "camp", "--timeout", "0.5")
    assert proc.returncode == 124, proc.stderr
    assert time.monotonic() - started < 10
    assert proc.stdout.startswith("timed out after 0.5 s: 2 of 3 jobs not final; 1/3 final ")
    assert "2 RUNNING" in proc.stdout


def test_wait_wakes_on_the_notification_of_the_last_final_state(app):
    ids = add_jobs(app, 3, workflow="camp", application="hello", state="RUNNING")
    # No re-count for 10 minutes but at the start: an exit within the 60-s timeout can only
    # come from the notification of the last final state (no timing assumption).
    proc = start_wait("--wf", "camp", "--timeout", "60", fallback_seconds=600)
    try:
        until_listening(app)
        assert proc.poll() is None, proc.communicate()
        finish(app, ids[:2])
        finish(app, ids[2:], "FAILED")
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 1, err  # not 124: the timeout did not end it
    assert out == "1 of 3 jobs did not finish: 1 FAILED\n"


def test_wait_selection_follows_jobs_added_later_to_the_workflow(app):
    first = add_jobs(app, workflow="camp", application="hello", state="RUNNING")
    proc = start_wait("--wf", "camp", "--timeout", "60")
    try:
        until_listening(app)
        second = add_jobs(app, workflow="camp", application="hello", name="spawned")
        finish(app, first)
        time.sleep(1.0)
        assert proc.poll() is None, "the spawned job is not final yet"
        finish(app, second)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (proc.returncode, out) == (0, "all 2 jobs finished\n"), err


def test_wait_ids_from_arguments_and_stdin_select_only_those_jobs(app):
    done = add_jobs(app, 2, workflow="camp", application="hello", state="JOB_FINISHED")
    add_jobs(app, workflow="camp", application="hello", state="RUNNING")
    proc = run_balsam("wait", done[0], done[1][:8], "--timeout", "10")
    assert (proc.returncode, proc.stdout) == (0, "all 2 jobs finished\n"), proc.stderr
    proc = run_balsam("wait", "-", "--timeout", "10", input="\n".join(done) + "\n")
    assert (proc.returncode, proc.stdout) == (0, "all 2 jobs finished\n"), proc.stderr


def test_wait_state_selects_the_jobs_in_that_state_when_it_starts(app):
    add_jobs(app, workflow="camp", application="hello", state="RUNNING")
    killed = add_jobs(app, 2, workflow="camp", application="hello", state="PREPROCESSED")
    proc = start_wait("--state", "preprocessed", "--timeout", "60")
    try:
        until_listening(app)
        lifecycle.kill(app, killed)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (proc.returncode, out) == (1, "2 of 2 jobs did not finish: 2 USER_KILLED\n"), err


@pytest.mark.parametrize("args, fragment", [
    (["--wf", "nothing-like-this"], "no job matches the selection"),
    (["--state", "DONE"], "invalid state 'DONE'"),
    (["0000dead"], "no job id starts with '0000dead'"),
    (["00000000-0000-4000-8000-000000000000"], "1 job id(s) match no job"),
    (["xyz"], "'xyz' is not a job id"),
    (["--timeout", "-1"], "--timeout must be a number of seconds >= 0"),
    (["--timeout", "soon"], "invalid float value"),
    (["-"], "no job ids were read from stdin"),
])
def test_wait_bad_input_is_one_line_and_exit_2(app, args, fragment):
    add_jobs(app, workflow="camp", application="hello", state="JOB_FINISHED")
    proc = run_balsam("wait", *args, input="")
    assert_one_line_error(proc, fragment)


def test_wait_shows_a_progress_line_on_a_terminal(app):
    add_jobs(app, workflow="camp", application="hello", state="JOB_FINISHED")
    add_jobs(app, workflow="camp", application="hello", state="RUNNING")
    code, screen = run_tty("wait", "--wf", "camp", "--timeout", "0.5")
    assert code == 124, screen
    assert "\rbalsam wait: 1/2 final (1 finished, 0 failed or killed), 1 RUNNING [0 s]" in screen
    proc = run_balsam("wait", "--wf", "camp", "--timeout", "0.5")
    assert "balsam wait:" not in proc.stderr  # no terminal, no progress line


def test_wait_ids_combine_with_filters(app):
    camp = add_jobs(app, 2, workflow="camp", application="hello", state="JOB_FINISHED")
    other = add_jobs(app, workflow="other", application="hello", state="RUNNING")
    proc = run_balsam("wait", "-", "--wf", "camp", "--timeout", "10",
                      input="\n".join(camp + other).upper())
    assert (proc.returncode, proc.stdout) == (0, "all 2 jobs finished\n"), proc.stderr


@pytest.mark.slow
def test_wait_on_ids_outlives_a_server_restart(restart_db):
    from balsam.db import cluster
    from balsam.db.connect import connect

    conn = connect(restart_db, autocommit=True)
    try:
        with conn.cursor() as cur:
            add_app(cur, "hello", "echo")
            ids = add_jobs(cur, 3, workflow="camp", application="hello", state="RUNNING")
        env = dict(os.environ, BALSAM_DB_PATH=restart_db)
        proc = subprocess.Popen([sys.executable, "-m", "balsam", "wait", "-", "--timeout", "120"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        proc.stdin.write("\n".join(ids) + "\n")
        proc.stdin.close()
        with conn.cursor() as cur:
            until_listening(cur)
        assert proc.poll() is None
    finally:
        conn.close()
    try:
        cluster.stop(restart_db)
        time.sleep(1)
        cluster.start(restart_db)
        conn = connect(restart_db, autocommit=True)
        with conn.cursor() as cur:
            finish(cur, ids)
        conn.close()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    out, err = proc.stdout.read(), proc.stderr.read()
    assert (proc.returncode, out) == (0, "all 3 jobs finished\n"), err


def test_wait_counts_removed_jobs_as_not_finished(app):
    ids = add_jobs(app, 3, workflow="camp", application="hello", state="RUNNING")
    proc = start_wait("--wf", "camp", "--timeout", "60")
    fixed = start_wait(*ids, "--timeout", "60")
    try:
        until_listening(app, waits=2)
        finish(app, ids[:1])
        assert run_balsam("rm", "jobs", "--wf-filter", "camp", "--name", "job1", "--force").returncode == 0
        finish(app, ids[2:])
        out, err = fixed.communicate(timeout=30)
        assert (fixed.returncode, out) == (1, "1 of 3 jobs did not finish: 1 removed\n"), err
        out, err = proc.communicate(timeout=30)
        assert (proc.returncode, out) == (0, "all 2 jobs finished\n"), err
    finally:
        proc.kill()
        fixed.kill()


@pytest.mark.slow
def test_wait_fails_when_every_selected_job_is_removed(app):
    add_jobs(app, 2, workflow="camp", application="hello", state="RUNNING")
    proc = start_wait("--wf", "camp", "--timeout", "60")
    try:
        until_listening(app)
        assert run_balsam("rm", "jobs", "--all", "--force").returncode == 0
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (proc.returncode, out) == (1, "no selected job is left: they were removed while waiting\n"), err
