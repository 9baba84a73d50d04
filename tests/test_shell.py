"""The shell helpers `balsamactivate`, `balsamdeactivate` and `bcd`, sourced in real bash and zsh."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid

import pytest

from balsam.core import schema
from balsam.db import index, serverinfo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB_ID = "5eed1111-0000-4000-8000-00000000000a"
OTHER_ID = "5eed2222-0000-4000-8000-00000000000b"


@pytest.fixture(params=["bash", "zsh"])
def shell(request: pytest.FixtureRequest, balsam_db_path: str) -> str:
    if shutil.which(request.param) is None:
        pytest.skip(f"{request.param} is not installed (apt-get install {request.param}); "
                    "its activation test cannot run")
    index.register(balsam_db_path)  # activation resolves the session DB by its name, "testdb"
    return request.param


def run_shell(shell: str, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a non-interactive ``shell`` (no rc files) in the repository, no DB active."""
    env = {k: v for k, v in os.environ.items() if k not in ("BALSAM_DB_PATH", "BASH_ENV", "ENV")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    argv = ["bash", "--norc", "--noprofile", "-c", script] if shell == "bash" else ["zsh", "-f", "-c", script]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def connected_line(path: str) -> str:
    info = serverinfo.read(path)
    return f"Connected to the Balsam DB server on {info['host']}:{info['port']}"


SHOW = 'echo "rc=$rc"; echo "path=${BALSAM_DB_PATH-}"; echo "ps1=$PS1"'


@pytest.mark.parametrize("how", ["name", "path"])
def test_activate_exports_the_db_sets_the_prompt_and_defines_bcd(shell: str, balsam_db_path: str,
                                                                 how: str) -> None:
    target = "testdb" if how == "name" else balsam_db_path
    proc = run_shell(shell, f"PS1='orig> '; source ./balsamactivate {target}; rc=$?; {SHOW}; "
                            "type bcd | head -n 1; type _balsam_activate >/dev/null 2>&1 || echo clean")
    assert proc.stdout.splitlines()[:4] == [
        connected_line(balsam_db_path), "rc=0", f"path={balsam_db_path}", "ps1=[BalsamDB: testdb] orig> "]
    assert "function" in proc.stdout.splitlines()[4]
    assert proc.stdout.splitlines()[5] == "clean"


def test_activating_twice_does_not_stack_the_prompt(shell: str, balsam_db_path: str) -> None:
    proc = run_shell(shell, "PS1='orig> '; source ./balsamactivate testdb >/dev/null; "
                            f"source ./balsamactivate {balsam_db_path} >/dev/null; rc=$?; {SHOW}")
    assert proc.stdout.splitlines() == ["rc=0", f"path={balsam_db_path}", "ps1=[BalsamDB: testdb] orig> "]


def test_activate_an_unknown_db_changes_nothing(shell: str) -> None:
    proc = run_shell(shell, f"PS1='orig> '; source ./balsamactivate no-such-db; rc=$?; {SHOW}")
    assert proc.stdout.splitlines() == ["rc=2", "path=", "ps1=orig> "]
    assert proc.stderr.strip().splitlines() == [
        f"balsam which: error: no Balsam DB named 'no-such-db' (known: {', '.join(index.read())}); "
        "create one with `balsam init PATH`"]


def test_activate_without_an_argument_prints_usage_and_known_dbs(shell: str, balsam_db_path: str) -> None:
    proc = run_shell(shell, f"source ./balsamactivate; rc=$?; {SHOW}")
    assert proc.stdout.splitlines()[0] == "rc=2"
    lines = proc.stderr.splitlines()
    assert lines[:2] == ["Usage: source balsamactivate NAME-or-PATH", "Known Balsam DBs:"]
    assert os.path.realpath(balsam_db_path) in lines[2:]


def test_deactivate_restores_the_prompt_and_a_second_time_says_none_active(shell: str) -> None:
    proc = run_shell(shell, "PS1='orig> '; source ./balsamactivate testdb >/dev/null; "
                            f"source ./balsamdeactivate; rc=$?; {SHOW}; type bcd >/dev/null 2>&1 && "
                            "type bcd | grep -c function; source ./balsamdeactivate; echo rc=$?")
    assert proc.stdout.splitlines()[:3] == ["rc=0", "path=", "ps1=orig> "]
    assert "1" not in proc.stdout.splitlines()[3:-1]  # bcd is no longer a function
    assert proc.stdout.splitlines()[-1] == "rc=1"
    assert proc.stderr.strip() == "balsamdeactivate: no Balsam DB is active"


def add_job(cursor, db: str, job_id: str, **values) -> str:
    row = schema.new_job_row(values, job_id=uuid.UUID(job_id))
    cols = list(row)
    vals = [json.dumps(v) if isinstance(v, dict) else str(v) if c == "job_id" else v for c, v in row.items()]
    cursor.execute(f"INSERT INTO {schema.JOB_TABLE} ({', '.join(cols)}) "
                   f"VALUES ({', '.join(['%s'] * len(cols))})", vals)
    return schema.working_directory(db, row["workflow"], row["name"], job_id)


@pytest.fixture
def job_dirs(cursor, db: str) -> tuple[str, str]:
    """A job whose working directory exists, and one whose directory does not exist yet."""
    ready = add_job(cursor, db, JOB_ID, workflow="shellwf", name="sim")
    os.makedirs(ready, exist_ok=True)
    later = add_job(cursor, db, OTHER_ID, workflow="shellwf", name="later")
    yield ready, later
    shutil.rmtree(os.path.join(db, "data", "shellwf"), ignore_errors=True)


def test_bcd_changes_into_the_job_directory(shell: str, job_dirs: tuple[str, str]) -> None:
    proc = run_shell(shell, "source ./balsamactivate testdb >/dev/null && "
                            f"bcd {JOB_ID[:6]} && pwd -P")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == os.path.realpath(job_dirs[0])


def test_bcd_reports_a_missing_directory_or_an_unknown_job(shell: str, job_dirs: tuple[str, str]) -> None:
    proc = run_shell(shell, "source ./balsamactivate testdb >/dev/null; "
                            f"bcd {OTHER_ID}; echo rc=$?; bcd 5eed; echo rc=$?; bcd ffff; echo rc=$?; pwd")
    assert proc.stdout.splitlines() == ["rc=1", "rc=1", "rc=1", REPO]
    assert proc.stderr.splitlines() == [
        f"bcd: the job directory {job_dirs[1]} does not exist yet",
        "balsam which: error: job id prefix '5eed' matches more than one job: give more characters",
        "balsam which: error: no job id starts with 'ffff'",
    ]


def test_standalone_bcd_sourced_changes_directory_and_run_prints_it(shell: str, balsam_db_path: str,
                                                                    job_dirs: tuple[str, str]) -> None:
    sourced = run_shell(shell, f"export BALSAM_DB_PATH={balsam_db_path}; source ./bcd {JOB_ID[:12]}; pwd")
    assert sourced.stdout.strip() == job_dirs[0]
    executed = run_shell(shell, f"export BALSAM_DB_PATH={balsam_db_path}; ./bcd {JOB_ID[:12]}; echo rc=$?")
    assert executed.stdout.splitlines() == [job_dirs[0], "rc=0"]
    assert "a program cannot change your shell's directory" in executed.stderr


@pytest.mark.parametrize("script", ["balsamactivate", "balsamdeactivate"])
def test_running_a_script_instead_of_sourcing_it_says_so(shell: str, script: str) -> None:
    proc = run_shell(shell, f"{shell} ./{script} testdb; echo rc=$?; echo path=${{BALSAM_DB_PATH-}}")
    assert proc.stdout.splitlines() == ["rc=2", "path="]
    assert proc.stderr.strip() == f"{script} must be sourced to change your shell: source {script}" + \
        (" NAME-or-PATH" if script == "balsamactivate" else "")


@pytest.mark.slow
def test_activate_starts_a_stopped_server(shell: str) -> None:
    from conftest import make_public_tmpdir

    from balsam.db import cluster, dbdir

    root = make_public_tmpdir("balsam-shell-")
    path = dbdir.init(os.path.join(root, f"stopped_{shell}"))
    try:
        cluster.stop(path)
        proc = run_shell(shell, f"PS1='$ '; source ./balsamactivate stopped_{shell}; rc=$?; {SHOW}")
        where = f"{socket.gethostname()}:{serverinfo.read(path)['port']}"
        assert proc.stdout.splitlines() == [f"Started the Balsam DB server on {where}",
                                            f"Connected to the Balsam DB server on {where}", "rc=0",
                                            f"path={path}", f"ps1=[BalsamDB: stopped_{shell}] $ "]
    finally:
        cluster.stop(path)
        shutil.rmtree(root, ignore_errors=True)
