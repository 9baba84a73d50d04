"""`balsam job` and `balsam dep` through the real CLI against the real test DB, plus the error
behaviour every job command shares (no DB, dead server) and the no-Django fast path."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest
from cli_support import (
    add_app,
    add_edge,
    add_jobs,
    assert_one_line_error,
    dead_server_db,
    job_row,
    jobs_by_name,
    run_tty,
    snapshot,
)
from conftest import run_balsam

from balsam.core import schema

JOB_ARGS = ["job", "--name", "sim", "--workflow", "wf", "--application", "hello"]


@pytest.fixture
def app(cursor):
    add_app(cursor, "hello", "echo")
    return cursor


def test_job_with_every_flag_stores_each_field(app, db):
    proc = run_balsam(
        "job", "--name", "sim 1", "--workflow", "wf", "--application", "hello",
        "--wall-time-minutes", "7", "--num-nodes", "3", "--coschedule-num-nodes", "2",
        "--node-packing-count", "4", "--ranks-per-node", "5", "--description", "two", "words",
        "--threads-per-rank", "2", "--threads-per-core", "2", "--mpi-flags=-envall",
        "--args", "a", "b", "--post_handle_error", "--post_handle_timeout",
        "--disable_auto_timeout_retry", "--input-files", "*.dat", "*.txt", "--url-in", "/in/x",
        "--url-out", "/out/y", "--stage-out-files", "*.out", "res*", "--env", "A=1",
        "--env", "B=x=y", "--yes")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    row = jobs_by_name(app)["sim 1"]
    expected = dict(
        workflow="wf", application="hello", wall_time_minutes=7, num_nodes=3, coschedule_num_nodes=2,
        node_packing_count=4, ranks_per_node=5, description="two words", threads_per_rank=2,
        threads_per_core=2, mpi_flags="-envall", args="a b", post_error_handler=True,
        post_timeout_handler=True, auto_timeout_retry=False, input_files="*.dat *.txt",
        stage_in_url="/in/x", stage_out_url="/out/y", stage_out_files="*.out res*",
        environ_vars="A=1:B=x=y", state="CREATED", data={}, lock="", cpu_affinity="none",
        user_workdir="", wait_for_parents=True, queued_launch_id=None)
    assert {k: row[k] for k in expected} == expected
    job_id = str(row["job_id"])
    workdir = os.path.join(db, "data", "wf", f"sim_1_{job_id[:8]}")
    assert proc.stdout.startswith(f"BalsamJob {job_id}\n")
    assert "  *** Executed command: echo a b\n" in proc.stdout
    assert f"  *** Working directory: {workdir}\n" in proc.stdout
    assert proc.stdout.endswith(f"Added job [sim 1 | {job_id[:8]}] to the database\n")
    assert "[INFO]" not in proc.stdout  # --yes: no count, no question

    from balsam.core.models import BalsamJob

    job = BalsamJob.objects.get(pk=job_id)
    assert job.working_directory == workdir
    assert job.get_envs()["B"] == "x=y"
    assert job.state_history.count("CREATED") == 1 and list(job.events) == []
    # the CLI prints exactly what the ORM's repr prints
    assert proc.stdout.split("\nAdded job")[0] == repr(job)


def test_job_defaults_take_no_input_files(app):
    proc = run_balsam(*JOB_ARGS, "--yes")
    assert proc.returncode == 0, proc.stderr
    row = jobs_by_name(app)["sim"]
    assert row["input_files"] == ""
    assert (row["wall_time_minutes"], row["num_nodes"], row["coschedule_num_nodes"],
            row["node_packing_count"], row["ranks_per_node"], row["threads_per_rank"],
            row["threads_per_core"]) == (1, 1, 0, 1, 1, 1, 1)
    assert (row["args"], row["description"], row["environ_vars"], row["mpi_flags"]) == ("", "", "", "")
    assert (row["post_error_handler"], row["post_timeout_handler"], row["auto_timeout_retry"]) == \
        (False, False, True)


def test_job_prompt_shows_workflow_count_and_adds_on_yes(app):
    add_jobs(app, 2, workflow="wf", application="hello")
    add_jobs(app, 1, workflow="other", application="hello")
    status, out = run_tty(*JOB_ARGS, answer="y\n")
    assert status == 0, out
    assert '[INFO]: The workflow "wf" currently has 2 jobs in the database\n' in out
    assert "Add this job to the database? [y/n]" in out
    assert "Added job [sim |" in out
    assert "sim" in jobs_by_name(app)


@pytest.mark.parametrize("answer", ["n\n", "\n", "whatever\n"])
def test_job_prompt_declined_adds_nothing_and_exits_1(app, answer):
    before = snapshot(app)
    status, out = run_tty(*JOB_ARGS, answer=answer)
    assert status == 1, out
    assert "aborted: job not added" in out
    assert snapshot(app) == before


def test_job_without_terminal_or_yes_refuses_on_empty_stdin_and_adds_nothing(app):
    before = snapshot(app)
    proc = run_balsam(*JOB_ARGS, input="")
    assert_one_line_error(proc, "balsam job: error:", "--yes")
    assert snapshot(app) == before


def test_job_without_terminal_reads_the_answer_from_stdin_as_classic(app):
    proc = run_balsam(*JOB_ARGS, input="y\n")
    assert proc.returncode == 0, proc.stderr
    assert "Add this job to the database? [y/n] y" in proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("Added job [")


def test_job_help_documents_the_exit_statuses(db):
    proc = run_balsam("job", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "exits with status 1" in text and "exit with status 2" in text
    assert "(default: none)" in text  # --input-files


@pytest.mark.parametrize("extra, fragment", [
    (["--num-nodes", "0"], "num_nodes must be >= 1, not 0"),
    (["--num-nodes", "-2"], "num_nodes must be >= 1, not -2"),
    (["--num-nodes", "abc"], "num_nodes must be a whole number, not 'abc'"),
    (["--wall-time-minutes", "1.5"], "wall_time_minutes must be a whole number"),
    (["--ranks-per-node", "99999999999"], "ranks_per_node is too large"),
    (["--coschedule-num-nodes", "-1"], "coschedule_num_nodes must be >= 0"),
    (["--threads-per-core", "0"], "threads_per_core must be >= 1"),
    (["--env", "NOEQUALS"], "--env 'NOEQUALS' is not of the form VAR=VALUE"),
    (["--env", "1A=2"], "--env '1A=2' is not of the form VAR=VALUE"),
    (["--env", "=2"], "is not of the form VAR=VALUE"),
    (["--env", "A=b:c"], "may not contain ':'"),
])
@pytest.mark.slow
def test_job_bad_values_exit_2_and_add_nothing(app, extra, fragment):
    before = snapshot(app)
    proc = run_balsam(*JOB_ARGS, *extra, "--yes")
    assert_one_line_error(proc, "balsam job: error:", fragment)
    assert snapshot(app) == before


def test_job_with_unknown_application_adds_nothing(app):
    before = snapshot(app)
    proc = run_balsam("job", "--name", "a", "--workflow", "w", "--application", "nope", "--yes")
    assert_one_line_error(proc, "application 'nope' does not exist")
    assert snapshot(app) == before


@pytest.mark.parametrize("flag", ["--name", "--workflow", "--application"])
def test_job_empty_required_value_is_refused(app, flag):
    args = {"--name": "a", "--workflow": "w", "--application": "hello"}
    args[flag] = " "
    proc = run_balsam("job", *[x for kv in args.items() for x in kv], "--yes")
    assert_one_line_error(proc, f"{flag} may not be empty")


def test_job_missing_required_flag_is_a_one_line_usage_error(app):
    proc = run_balsam("job", "--name", "a", "--workflow", "w", "--yes")
    assert_one_line_error(proc, "the following arguments are required: --application")


def test_job_and_ls_do_not_import_django(app):
    for args in (JOB_ARGS + ["--yes"], ["ls"], ["ls", "--verbose"]):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "balsam", *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr[-500:]
        modules = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                   if line.startswith("import time:")]
        assert "psycopg2" in modules  # the measurement works
        assert not [m for m in modules if m.split(".")[0] == "django"], args


# ---- balsam dep ------------------------------------------------------------------------------

def test_dep_links_jobs_by_id_prefix(app):
    parent, child = add_jobs(app, 2, name="j")
    proc = run_balsam("dep", parent[:6], child[:10])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"Created link [j0 | {parent[:8]}] --> [j1 | {child[:8]}]\n"
    app.execute(f"SELECT parent_id::text, child_id::text FROM {schema.DEP_TABLE}")
    assert app.fetchall() == [(parent, child)]
    from balsam.core.models import BalsamJob

    assert BalsamJob.objects.get(pk=child).get_parents_by_id() == [parent]


def test_dep_accepts_full_ids_with_or_without_dashes(app):
    parent, child = add_jobs(app, 2, name="j")
    proc = run_balsam("dep", parent.upper(), child.replace("-", ""))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("which, fragment", [
    ("ambiguous", "matches more than one job"),
    ("unknown", "no job id starts with 'ffff'"),
    ("nothex", "is not a job id or id prefix"),
])
def test_dep_bad_prefixes_exit_2_and_link_nothing(app, which, fragment):
    ids = add_jobs(app, ids=["abcd0000-0000-4000-8000-000000000001",
                             "abcd0000-0000-4000-8000-000000000002"])
    other = add_jobs(app, name="x")[0]
    arg = {"ambiguous": "abcd", "unknown": "ffff", "nothex": "zz-top"}[which]
    before = snapshot(app)
    proc = run_balsam("dep", arg, other)
    assert_one_line_error(proc, "balsam dep: error:", fragment)
    proc = run_balsam("dep", ids[0], arg)
    assert_one_line_error(proc, fragment)
    assert snapshot(app) == before


def test_dep_refuses_cycles_duplicates_self_edges_and_started_children(app):
    a, b, c = add_jobs(app, 3, name="j")
    started = add_jobs(app, name="started", state="READY")[0]
    add_edge(app, a, b)
    add_edge(app, b, c)
    before = snapshot(app)
    cases = [((c, a), "would create a cycle"), ((a, b), "already depends on"),
             ((a, a), "cannot depend on itself"), ((a, started), "is already READY")]
    for (parent, child), fragment in cases:
        assert_one_line_error(run_balsam("dep", parent, child), fragment)
    assert snapshot(app) == before


# ---- errors shared by every job command ----------------------------------------------------

EVERY_COMMAND = [
    JOB_ARGS + ["--yes"], ["dep", "aaaa", "bbbb"], ["ls"], ["ls", "apps"], ["ls", "wf"],
    ["ls", "queues"], ["ls", "--by-states"], ["modify", "aaaa", "num_nodes", "2"],
    ["modify", "1", "name", "x", "--type", "apps"], ["rm", "jobs", "--all", "--force"],
    ["rm", "apps", "--all", "--force"], ["killjob", "--id", "aaaa", "--yes"], ["make_dummies", "3"],
]


@pytest.mark.parametrize("args", EVERY_COMMAND, ids=lambda a: " ".join(a[:2]))
@pytest.mark.slow
def test_every_command_without_active_db_says_so_in_one_line(app, args):
    before = snapshot(app)
    proc = run_balsam(*args, env={"BALSAM_DB_PATH": ""})
    assert_one_line_error(proc, f"balsam {args[0]}: error: no Balsam DB is active")
    proc = run_balsam(*args, env={"BALSAM_DB_PATH": "/nonexistent/db"})
    assert_one_line_error(proc, "is not a Balsam DB directory")
    assert snapshot(app) == before


@pytest.mark.parametrize("args", EVERY_COMMAND, ids=lambda a: " ".join(a[:2]))
@pytest.mark.slow
def test_every_command_with_server_down_says_so_in_one_line(app, db, args):
    dead = dead_server_db(db)
    before = snapshot(app)
    proc = run_balsam(*args, env={"BALSAM_DB_PATH": dead})
    assert_one_line_error(proc, f"balsam {args[0]}: error: cannot reach the Balsam DB server")
    assert snapshot(app) == before


def test_job_ids_in_output_are_real_uuids(app):
    proc = run_balsam(*JOB_ARGS, "--yes")
    job_id = re.match(r"BalsamJob (\S+)\n", proc.stdout).group(1)
    assert str(uuid.UUID(job_id)) == job_id
    assert job_row(app, job_id)["name"] == "sim"
