"""One confirmation flag (``--yes``, alias ``--force``), hyphenated flags with hidden classic
spellings, answers to prompts read from a pipe, and the classic ``mkchild`` flags."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cli_support import add_app, add_jobs, assert_one_line_error, jobs_by_name, snapshot
from conftest import run_balsam

from balsam.cli.aliases import HIDDEN_ALIASES, canonical_argv
from balsam.cli.main import build_parser

JOB_ARGS = ["job", "--name", "j", "--workflow", "wf", "--application", "hello"]


@pytest.fixture
def app(cursor):
    add_app(cursor, "hello", "echo")
    return cursor


def states(cursor) -> dict[str, str]:
    return {name: row["state"] for name, row in jobs_by_name(cursor).items()}


def test_canonical_argv_rewrites_hidden_aliases_but_not_after_double_dash():
    argv = ["job", "--post_handle_error", "--wall-minutes=5", "--", "--post_handle_timeout"]
    assert canonical_argv(argv) == ["job", "--post-handle-error", "--wall-time-minutes=5", "--",
                                    "--post_handle_timeout"]


def test_every_hidden_alias_stands_for_a_flag_that_exists():
    parser = build_parser()
    job = parser._subparsers._group_actions[0].choices["job"]  # type: ignore[union-attr]
    flags = {s for a in job._actions for s in a.option_strings}
    assert set(HIDDEN_ALIASES.values()) <= flags


@pytest.mark.parametrize("command", ["job", "mkchild"])
def test_help_shows_hyphenated_flags_only(command):
    out = run_balsam(command, "--help").stdout
    for flag in ("--post-handle-error", "--post-handle-timeout", "--disable-auto-timeout-retry"):
        assert flag in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  --")]
    assert "--post-handle-error" in listed and "--post_handle_error" not in out
    assert "--wall-minutes" not in listed
    assert "--yes, --force" in out


def test_hyphenated_and_classic_spellings_set_the_same_fields(app):
    for name, spelling in (("h", "-"), ("u", "_")):
        flags = [f"--post{spelling}handle{spelling}error", f"--post{spelling}handle{spelling}timeout",
                 f"--disable{spelling}auto{spelling}timeout{spelling}retry"]
        args = ["job", "--name", name, "--workflow", "wf", "--application", "hello", *flags, "--yes"]
        proc = run_balsam(*args)
        assert proc.returncode == 0, proc.stderr
    rows = jobs_by_name(app)
    for name in ("h", "u"):
        row = rows[name]
        assert (row["post_error_handler"], row["post_timeout_handler"],
                row["auto_timeout_retry"]) == (True, True, False)


def test_job_force_is_an_alias_of_yes(app):
    proc = run_balsam(*JOB_ARGS, "--force", input="")
    assert proc.returncode == 0, proc.stderr
    assert "j" in jobs_by_name(app)


def test_killjob_force_is_an_alias_of_yes(app):
    (job_id,) = add_jobs(app, name="k", application="hello")
    proc = run_balsam("killjob", "--id", job_id, "--force", input="")
    assert proc.returncode == 0, proc.stderr
    assert states(app) == {"k": "USER_KILLED"}


def test_rm_yes_skips_the_prompt_but_does_not_remove_apps_in_use(app):
    add_jobs(app, name="uses", application="hello")
    before = snapshot(app)
    assert_one_line_error(run_balsam("rm", "apps", "--all", "--yes", input=""), "--force")
    assert snapshot(app) == before
    proc = run_balsam("rm", "jobs", "--all", "--yes", input="")
    assert proc.returncode == 0 and proc.stdout.startswith("Removed 1 jobs"), proc.stderr


def test_killjob_reads_the_answer_from_a_pipe(app):
    (job_id,) = add_jobs(app, name="k", application="hello")
    proc = run_balsam("killjob", "--id", job_id, input="y\ny\ny\n")  # as `yes | balsam killjob`
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Killed 1 job: ")
    assert "Really kill job [k | " in proc.stderr and "[y/n] y" in proc.stderr
    assert states(app) == {"k": "USER_KILLED"}


def test_rm_reads_the_answer_from_a_pipe_and_no_refuses(app):
    add_jobs(app, name="gone", application="hello")
    before = snapshot(app)
    proc = run_balsam("rm", "jobs", "--name", "gone", input="n\n")
    assert proc.returncode == 1 and "aborted: nothing removed" in proc.stderr
    assert snapshot(app) == before
    proc = run_balsam("rm", "jobs", "--name", "gone", input="y\n")
    assert proc.returncode == 0 and proc.stdout.startswith("Removed 1 jobs: [gone |"), proc.stderr
    assert jobs_by_name(app) == {}


def test_empty_or_closed_stdin_still_refuses(app):
    (job_id,) = add_jobs(app, name="k", application="hello")
    before = snapshot(app)
    assert_one_line_error(run_balsam("killjob", "--id", job_id, input=""),
                          "confirmation needed", "standard input is empty", "--yes")
    closed = subprocess.run([sys.executable, "-m", "balsam", "rm", "jobs", "--all"],
                            preexec_fn=lambda: os.close(0), capture_output=True, text=True,
                            timeout=120)
    assert_one_line_error(closed, "confirmation needed", "standard input is closed")
    assert snapshot(app) == before


WORKFLOWS = ["a_b", "xa_by", "axb", "A_B", "a%b", "pre-a_b"]


def test_workflow_filters_match_the_same_jobs_everywhere(app):
    """`--wf` (ls, wait, report) and `--wf-filter` (rm, launcher, submit-launch): the workflow
    contains the text, literally (`_` and `%` are no wildcards), case-sensitive."""
    from balsam.core import analytics_scope
    from balsam.core.reads.jobs import job_where
    from balsam.processing.transitions import wf_clause

    ids = {wf: add_jobs(app, workflow=wf, application="hello", name=wf, state="JOB_FINISHED")[0]
           for wf in WORKFLOWS}
    expected = {ids["a_b"], ids["xa_by"], ids["pre-a_b"]}

    def selected(where: str, params: list) -> set[str]:
        app.execute(f"SELECT job_id::text FROM core_balsamjob j{where}", params)
        return {r[0] for r in app.fetchall()}

    params: list = []
    clause = wf_clause("a_b", params)  # launchers, processing, submit-launch's check
    assert selected(" WHERE true" + clause, params) == expected
    assert selected(*job_where(wf="a_b")) == expected  # ls, rm, wait
    clauses, params = analytics_scope.job_clauses(analytics_scope.Filters(workflow_contains="a_b"))
    assert selected(" WHERE " + " AND ".join(clauses), params) == expected  # report
    assert set(run_balsam("ls", "--wf", "a_b", "--quiet").stdout.split()) == expected
    waited = run_balsam("wait", "--wf", "a_b", "--timeout", "0")
    assert (waited.returncode, waited.stdout) == (0, "all 3 jobs finished\n"), waited.stderr
    removed = run_balsam("rm", "jobs", "--all", "--wf-filter", "a_b", "--yes", "--quiet")
    assert set(removed.stdout.split()) == expected, removed.stderr
    assert set(run_balsam("ls", "--quiet").stdout.split()) == set(ids.values()) - expected


def test_classic_flag_abbreviations_still_work(app):
    """argparse prefix matching, which classic docs relied on (`--app`, `--hist`)."""
    made = run_balsam("job", "--name", "ab", "--work", "wf", "--app", "hello", "--yes", "--quiet")
    assert made.returncode == 0, made.stderr
    out = run_balsam("ls", "--hist").stdout
    assert f"Job ab [{made.stdout.strip()}]" in out
