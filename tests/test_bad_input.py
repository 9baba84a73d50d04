"""Bad input to every command: one line on stderr naming the problem, exit 2, no traceback, and
nothing changed in the database (issue 12).

Each case runs the real ``balsam`` command in a subprocess against the test DB holding a known
app, two jobs and an edge, and compares a fingerprint of every table before and after.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
from cli_support import add_app, add_edge, add_jobs, assert_one_line_error, snapshot
from conftest import make_public_tmpdir, run_balsam

JOB_A = "aaaaaaaa-1111-4111-8111-111111111111"
JOB_B = "bbbbbbbb-2222-4222-8222-222222222222"
LONG = "x" * 100_000

Setup = Callable[[str, str], dict]
"""(live DB path, a fresh scratch directory) -> environment overrides for the command."""


@dataclass
class Case:
    """One bad command line, what its error line must contain, and how to prepare for it."""

    id: str
    argv: list[str]
    fragment: str
    setup: Optional[Setup] = None
    cwd_scratch: bool = field(default=False)


def _fake_db(live: str, scratch: str) -> str:
    """A DB directory of the live server (its server-info, settings and login; no data) that a
    test may break freely."""
    path = os.path.join(scratch, "fakedb")
    os.makedirs(os.path.join(path, "balsamdb"))
    for name in ("server-info", "settings.yml"):
        shutil.copy(os.path.join(live, name), path)
    shutil.copytree(os.path.join(live, ".auth"), os.path.join(path, ".auth"))  # its login
    return path


def _log_is_a_file(live: str, scratch: str) -> dict:
    path = _fake_db(live, scratch)
    with open(os.path.join(path, "log"), "w") as fh:
        fh.write("not a directory\n")
    return {"BALSAM_DB_PATH": path}


def _dag_file(live: str, scratch: str) -> dict:
    """A campaign file whose third row names a parent job that does not exist."""
    with open(os.path.join(scratch, "dag.csv"), "w") as fh:
        fh.write(f"x,parents\n1,{JOB_A}\n2,p1\n3,p2;{JOB_A[:-1]}0\n")
    return {}


def _corrupt_index(live: str, scratch: str) -> dict:
    os.makedirs(os.path.join(scratch, ".balsam"))
    with open(os.path.join(scratch, ".balsam", "databases.json"), "w") as fh:
        fh.write('["/some/db", ')
    return {"HOME": scratch}


def _non_empty_dir(live: str, scratch: str) -> dict:
    os.makedirs(os.path.join(scratch, "stuff"))
    with open(os.path.join(scratch, "stuff", "thesis.tex"), "w") as fh:
        fh.write("precious\n")
    return {}


def _no_db(live: str, scratch: str) -> dict:
    return {"BALSAM_DB_PATH": os.path.join(scratch, "nowhere")}


JOB = ["job", "--name", "j", "--workflow", "w", "--application", "hello", "--yes"]
LAUNCH = ["launcher", "--consume-all", "--job-mode", "mpi"]
SUBMIT = ["submit-launch", "-q", "debug", "-A", "proj", "--job-mode", "mpi", "--dry-run"]

CASES = [
    # init
    Case("init-proc", ["init", "/proc/x"], "/proc/x"),
    Case("init-empty-path", ["init", ""], "empty", cwd_scratch=True),
    Case("init-non-empty-dir", ["init", "stuff"], "not empty", _non_empty_dir, cwd_scratch=True),
    Case("init-corrupt-index", ["init", "newdb"], "databases.json", _corrupt_index, cwd_scratch=True),
    Case("init-unknown-machine", ["init", "newdb", "--machine", "nosuch"], "nosuch", cwd_scratch=True),
    # site (the newer API's site commands)
    Case("site-not-a-site", ["site", "status", "/nonexistent/site"], "is not a Balsam site"),
    Case("site-init-without-path", ["site", "init"], "needs the PATH", cwd_scratch=True),
    Case("site-init-unknown-machine", ["site", "init", "newsite", "--machine", "nosuch"], "nosuch",
         cwd_scratch=True),
    Case("site-unknown-action", ["site", "restart"], "invalid choice"),
    # server, which
    Case("server-drop-unknown-user", ["server", "--drop-user", "nosuchrole"], "nosuchrole"),
    Case("server-add-bad-user-name", ["server", "--add-user", "bad name;"], "bad name;"),
    Case("which-unknown-db", ["which", "--name", "nosuchdb"], "nosuchdb"),
    Case("which-corrupt-index", ["which", "--list"], "databases.json", _corrupt_index),
    Case("which-workdir-bad-id", ["which", "--workdir", "zzz"], "zzz"),
    # app
    Case("app-empty-name", ["app", "--name", "", "--executable", "echo"], "name"),
    Case("app-duplicate", ["app", "--name", "hello", "--executable", "echo"], "hello"),
    Case("app-empty-executable", ["app", "--name", "x", "--executable", " "], "--executable"),
    Case("app-long-name", ["app", "--name", LONG, "--executable", "echo"], "too long"),
    # job
    Case("job-unknown-app", JOB[:5] + ["--application", "nosuch", "--yes"], "nosuch"),
    Case("job-negative-nodes", JOB + ["--num-nodes", "-1"], "num_nodes"),
    Case("job-wall-time-text", JOB + ["--wall-time-minutes", "ten"], "wall_time_minutes"),
    Case("job-args-unbalanced-quote", JOB + ["--args", 'say "hi'], "args"),
    Case("job-mpi-flags-unbalanced-quote", JOB + ["--mpi-flags", "--env 'A=1"], "mpi_flags"),
    Case("job-url-in-unknown-scheme", JOB + ["--url-in", "gopher://host/x"], "gopher"),
    Case("job-url-out-unknown-scheme", JOB + ["--url-out", "ftp://host/x"], "ftp"),
    Case("job-long-name", ["job", "--name", LONG, "--workflow", "w", "--application", "hello",
                           "--yes"], "too long"),
    Case("job-long-workflow", ["job", "--name", "j", "--workflow", LONG, "--application", "hello",
                               "--yes"], "too long"),
    Case("job-huge-nodes", JOB + ["--num-nodes", "99999999999"], "too large"),
    Case("job-bad-env", JOB + ["--env", "1X=2"], "--env"),
    Case("job-file-unknown-parent", ["job", "--name", "p{x}", "--workflow", "w", "--application",
                                     "hello", "--from-file", "dag.csv", "--yes"],
         f"dag.csv, line 4: parent job {JOB_A[:-1]}0 does not exist", _dag_file, cwd_scratch=True),
    Case("job-empty-name", ["job", "--name", " ", "--workflow", "w", "--application", "hello",
                            "--yes"], "--name"),
    # mkchild (needs BALSAM_JOB_ID of a parent)
    Case("mkchild-outside-a-job", ["mkchild", "--name", "c", "--application", "hello", "--yes"],
         "BALSAM_JOB_ID"),
    Case("mkchild-args-unbalanced-quote", ["mkchild", "--name", "c", "--application", "hello",
                                           "--args", "'x", "--yes"], "args",
         lambda live, s: {"BALSAM_JOB_ID": JOB_A}),
    # modify: the same checks as `balsam job`
    Case("modify-zero-nodes", ["modify", JOB_A[:8], "num_nodes", "0"], "num_nodes"),
    Case("modify-args-unbalanced-quote", ["modify", JOB_A[:8], "args", "'oops"], "args"),
    Case("modify-relative-workdir", ["modify", JOB_A[:8], "user_workdir", "rel/dir"], "absolute"),
    Case("modify-empty-name", ["modify", JOB_A[:8], "name", ""], "name"),
    Case("modify-long-name", ["modify", JOB_A[:8], "name", LONG], "too long"),
    Case("modify-unknown-app", ["modify", JOB_A[:8], "application", "nosuch"], "nosuch"),
    Case("modify-url-unknown-scheme", ["modify", JOB_A[:8], "stage_in_url", "gopher://x"], "gopher"),
    Case("modify-bad-environ", ["modify", JOB_A[:8], "environ_vars", "NOVALUE"], "NOVALUE"),
    Case("modify-state-running", ["modify", JOB_A[:8], "state", "RUNNING"], "RUNNING"),
    Case("modify-bad-state", ["modify", JOB_A[:8], "state", "DONE"], "DONE"),
    Case("modify-bad-id", ["modify", "xyz", "num_nodes", "2"], "xyz"),
    Case("modify-unknown-field", ["modify", JOB_A[:8], "colour", "red"], "colour"),
    Case("modify-app-empty-executable", ["modify", "--type", "apps", "hello", "executable", ""],
         "executable"),
    Case("modify-app-not-found", ["modify", "--type", "apps", "999", "name", "x"], "999"),
    # dep, rm, killjob
    Case("dep-cycle", ["dep", JOB_B[:8], JOB_A[:8]], "cycle"),
    Case("dep-self", ["dep", JOB_A[:8], JOB_A[:8]], "itself"),
    Case("dep-bad-id", ["dep", "nothex", JOB_A[:8]], "nothex"),
    Case("rm-bad-id", ["rm", "jobs", "--id", "xyz", "--force"], "xyz"),
    Case("rm-app-bad-number", ["rm", "apps", "--id", "abc", "--force"], "abc"),
    Case("killjob-empty-id", ["killjob", "--id", "", "--yes"], "''"),
    Case("killjob-unknown", ["killjob", "--id", "ffff", "--yes"], "ffff"),
    # make_dummies
    Case("make-dummies-negative", ["make_dummies", "-5"], "-5"),
    Case("make-dummies-unbounded", ["make_dummies", "10000000000"], "at most"),
    # ls
    Case("ls-bad-state", ["ls", "--state", "DONE"], "DONE"),
    Case("ls-bad-id", ["ls", "--id", "xyz"], "xyz"),
    Case("ls-transfers-bad-state", ["ls", "transfers", "--state", "RUNNING"],
         "not a transfer state"),
    Case("ls-transfers-bad-flag", ["ls", "transfers", "--history"], "--history"),
    Case("ls-transfers-bad-id", ["ls", "transfers", "--id", "zz"], "zz"),
    Case("ls-bad-limit", ["ls"], "BALSAM_LS_LIMIT", lambda live, s: {"BALSAM_LS_LIMIT": "-1"}),
    Case("ls-missing-db", ["ls"], "nowhere", _no_db),
    # launcher
    Case("launcher-too-many-threads", LAUNCH + ["--num-transition-threads", "100000"],
         "--num-transition-threads"),
    Case("launcher-negative-time", LAUNCH + ["--time-limit-minutes", "-5"], "-5"),
    Case("launcher-log-dir-is-a-file", LAUNCH, "log directory", _log_is_a_file),
    Case("launcher-empty-filter", ["launcher", "--wf-filter", " ", "--job-mode", "mpi"], "--wf-filter"),
    Case("launcher-tag-without-value", LAUNCH + ["--tag", "k"], "KEY=VALUE"),
    # submit_launch
    Case("submit-zero-nodes", SUBMIT + ["-n", "0", "-t", "10"], "nodes"),
    Case("submit-negative-minutes", SUBMIT + ["-n", "1", "-t", "-5"], "-5"),
    # service, top
    Case("service-missing-db", ["service", "--status"], "nowhere", _no_db),
    Case("service-log-dir-is-a-file", ["service", "--foreground"], "log directory", _log_is_a_file),
    # globus (no client id anywhere, a client id that is no UUID, no stored login, an unknown action)
    Case("globus-login-no-client-id", ["globus", "login"], "globus_client_id"),
    Case("globus-login-client-id-not-a-uuid", ["globus", "login", "--client-id", "6a3f1c4e-9b2d-4e1f-8a7c",
                                         "--data-access", "my laptop"], "'6a3f1c4e-9b2d-4e1f-8a7c'"),
    Case("globus-status-no-login", ["globus", "status"], "balsam globus login"),
    Case("globus-unknown-action", ["globus", "frobnicate"], "frobnicate"),
    Case("top-nan-interval", ["top", "--interval", "nan", "--once"], "interval"),
    Case("top-negative-interval", ["top", "--interval", "-1", "--once"], "interval"),
    # report
    Case("report-since-huge-age", ["report", "--since", "99999999w"], "99999999w"),
    Case("report-since-year-9999", ["report", "--since", "9999-12-31T23:59:59"], "9999"),
    Case("report-zero-recent", ["report", "--recent", "0m"], "--recent"),
    Case("report-bad-time", ["report", "--until", "tomorrow"], "tomorrow"),
    # log
    Case("log-dir-is-a-file", ["log"], "is not a directory", _log_is_a_file),
    Case("log-negative-lines", ["log", "-n", "-1"], "-n"),
    # web
    Case("web-bad-bind", ["web", "--bind", "not an address", "--token", "t0k3n-t0k3n-t0k3n"],
         "not an address"),
    Case("web-zero-threads", ["web", "--threads", "0"], "--threads"),
    Case("web-bad-port", ["web", "--port", "70000"], "70000"),
    # wait
    Case("wait-negative-timeout", ["wait", "--wf", "x", "--timeout", "-5"], "--timeout"),
    Case("wait-unknown-state", ["wait", "--state", "RUNNIN"], "RUNNIN"),
    # completion
    Case("completion-unknown-shell", ["completion", "fish"], "fish"),
]


@pytest.fixture
def seeded(cursor):
    """The test DB with app ``hello``, jobs A and B and the edge A -> B."""
    add_app(cursor, "hello", "echo")
    add_jobs(cursor, ids=[JOB_A], name="a", workflow="w", application="hello")
    add_jobs(cursor, ids=[JOB_B], name="b", workflow="w", application="hello")
    add_edge(cursor, JOB_A, JOB_B)
    return cursor


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.slow
def test_bad_input_gives_one_line_exit_2_and_changes_nothing(case: Case, seeded, db: str,
                                                             monkeypatch) -> None:
    scratch = make_public_tmpdir("balsam-bad-")
    env = case.setup(db, scratch) if case.setup else {}
    before = snapshot(seeded)
    listing_before = sorted(os.listdir(scratch))
    if case.cwd_scratch:
        monkeypatch.chdir(scratch)
    proc = run_balsam(*case.argv, env=env, timeout=60)
    assert_one_line_error(proc, case.fragment)
    assert len(proc.stderr) < 2000, proc.stderr  # names the problem; never echoes 100k characters
    assert snapshot(seeded) == before
    assert sorted(os.listdir(scratch)) == listing_before  # nothing created (init) or replaced
    if case.setup is _corrupt_index:
        with open(os.path.join(scratch, ".balsam", "databases.json")) as fh:
            assert fh.read() == '["/some/db", '


def test_every_command_has_a_bad_input_case() -> None:
    from balsam.cli.main import COMMANDS

    covered = {c.argv[0].replace("-", "_") for c in CASES}
    assert set(COMMANDS) <= covered, set(COMMANDS) - covered


def test_init_may_retry_in_a_directory_holding_only_what_a_failed_init_left() -> None:
    scratch = make_public_tmpdir("balsam-bad-")
    os.makedirs(os.path.join(scratch, "db", "log"))
    open(os.path.join(scratch, "db", "settings.yml"), "w").close()
    # --pg-bin stops it right after the directory checks, before any server exists
    proc = run_balsam("init", os.path.join(scratch, "db"), "--pg-bin", "/nonexistent/bin")
    assert_one_line_error(proc, "/nonexistent/bin")
    assert "not empty" not in proc.stderr
