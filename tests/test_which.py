"""`balsam which`: the active DB, the DB index, resolving a DB by name, a job's working directory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from conftest import make_public_tmpdir, run_balsam

from balsam.core import schema
from balsam.db import index, serverinfo


def which_inactive(*args: str) -> subprocess.CompletedProcess:
    """`balsam which ARGS` with no active DB."""
    env = {k: v for k, v in os.environ.items() if k != "BALSAM_DB_PATH"}
    return subprocess.run([sys.executable, "-m", "balsam", "which", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("balsam which: error: ") and fragment in proc.stderr, proc.stderr


@pytest.fixture
def fake_dbs(balsam_db_path: str) -> Iterator[list[str]]:
    """Two more indexed DB directories (server-info and balsamdb/ only: no server needed); the
    index is restored afterwards."""
    with open(index.index_path()) as fh:
        saved = fh.read()
    root = make_public_tmpdir("balsam-which-")
    paths = []
    for name in ("zebra-one", "zebra-two"):
        path = os.path.join(root, name)
        os.makedirs(os.path.join(path, "balsamdb"))
        serverinfo.write(path, {"host": "", "port": None, "owner": "someone"})
        index.register(path)
        paths.append(os.path.realpath(path))
    yield paths
    with open(index.index_path(), "w") as fh:
        fh.write(saved)
    shutil.rmtree(root, ignore_errors=True)


def test_which_shows_the_active_db_and_its_server(balsam_db_path: str) -> None:
    info = serverinfo.read(balsam_db_path)
    proc = run_balsam("which")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"Current Balsam DB: {balsam_db_path}",
        f"  server: {info['host']}:{info['port']} (pid {info['pid']})",
        "  database: balsam",
        f"  owner: {info['owner']}; server runs as: {info['server_account']}",
        f"  PostgreSQL: {info['pg_version']} ({info['pg_bin']})",
    ]


def test_which_without_an_active_db_lists_the_known_dbs(balsam_db_path: str) -> None:
    proc = which_inactive()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "No Balsam DB is active (`source balsamactivate NAME` activates one). Known DBs:"
    assert lines[1:] == index.read() and os.path.realpath(balsam_db_path) in lines


def test_which_with_a_bad_active_path_is_a_one_line_error(balsam_db_path: str) -> None:
    one_line_error(run_balsam("which", env={"BALSAM_DB_PATH": "/nonexistent/db"}),
                   "BALSAM_DB_PATH=/nonexistent/db is not a Balsam DB directory")


def test_list_prints_the_index_without_dbs_that_are_gone(fake_dbs: list[str]) -> None:
    paths = index.read()
    with open(index.index_path(), "w") as fh:
        json.dump(paths[:1] + ["/nonexistent/old-db"] + paths[1:], fh)
    shutil.rmtree(os.path.join(fake_dbs[1], "balsamdb"))
    proc = which_inactive("--list")
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == [p for p in paths if p != fake_dbs[1]]


def test_list_with_an_empty_index_says_how_to_create_a_db(fake_dbs: list[str]) -> None:
    with open(index.index_path(), "w") as fh:
        json.dump([], fh)
    proc = which_inactive("--list")
    assert proc.stdout.strip() == "No Balsam DBs are known yet: create one with `balsam init PATH`"


def test_name_resolves_a_path_a_directory_name_or_a_unique_part(fake_dbs: list[str]) -> None:
    one, two = fake_dbs
    for name, expected in ((one, one), ("zebra-two", two), ("bra-tw", two), (one + "/", one)):
        proc = which_inactive("--name", name)
        assert (proc.returncode, proc.stdout) == (0, expected + "\n"), proc.stderr


def test_name_that_is_ambiguous_or_unknown_exits_2_with_one_line(fake_dbs: list[str]) -> None:
    one_line_error(which_inactive("--name", "zebra"), "'zebra' matches several Balsam DBs")
    one_line_error(which_inactive("--name", "no-such-db"), "no Balsam DB named 'no-such-db'")
    one_line_error(which_inactive("--name", " "), "--name needs a DB name or path")


def test_flags_are_mutually_exclusive(balsam_db_path: str) -> None:
    proc = run_balsam("which", "--list", "--name", "x")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr


def insert_job(cur, job_id: str, **values) -> None:
    row = schema.new_job_row(values, job_id=uuid.UUID(job_id))
    cols = list(row)
    vals = [json.dumps(v) if isinstance(v, dict) else str(v) if c == "job_id" else v for c, v in row.items()]
    cur.execute(f"INSERT INTO {schema.JOB_TABLE} ({', '.join(cols)}) "
                f"VALUES ({', '.join(['%s'] * len(cols))})", vals)


ID1 = "abc00000-0000-4000-8000-000000000001"
ID2 = "abc00000-0000-4000-8000-000000000002"


def test_workdir_prints_the_job_directory_by_id_prefix(cursor, db: str) -> None:
    insert_job(cursor, ID1, workflow="wf", name="first job")
    insert_job(cursor, ID2, name="second", user_workdir="/tmp/somewhere/else")
    assert run_balsam("which", "--workdir", ID1).stdout == f"{db}/data/wf/first_job_abc00000\n"
    assert run_balsam("which", "--workdir", ID2.upper()).stdout == "/tmp/somewhere/else\n"
    assert run_balsam("which", "--workdir", ID1.replace("-", "")).stdout == \
        f"{db}/data/wf/first_job_abc00000\n"


@pytest.mark.slow
def test_workdir_with_a_bad_prefix_exits_2_with_one_line(cursor, db: str) -> None:
    insert_job(cursor, ID1, name="a")
    insert_job(cursor, ID2, name="b")
    one_line_error(run_balsam("which", "--workdir", "abc"), "matches more than one job")
    one_line_error(run_balsam("which", "--workdir", "fff"), "no job id starts with 'fff'")
    one_line_error(run_balsam("which", "--workdir", "xyz"), "'xyz' is not a job id")
    one_line_error(run_balsam("which", "--workdir", ""), "give a job id prefix")
