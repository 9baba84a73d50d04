"""Balsam's credentials never reach the processes it runs for jobs (issue 12, item 7).

A launcher, the service or ``balsam web`` may be given the DB password (``BALSAM_DB_PASSWORD``,
libpq's ``PGPASSWORD``) or the dashboard token in its environment. Tasks (MPI and serial mode),
pre/postprocess scripts and transfer programs must not inherit them -- their output is shown by
``balsam log`` and the dashboard -- while a script using ``balsam.launcher.dag`` still reaches the
database through the stored credential. Real launchers, real PostgreSQL, real MPICH.
"""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator

import pytest
from conftest import make_public_tmpdir
from launcher_procs import launchers
from launcher_support import QUICK, add_jobs, job_row, settings, states, workdir, write_script

from balsam.core import schema
from balsam.core.jobenv import is_credential, task_environment, without_credentials
from balsam.db import credentials, serverinfo
from balsam.processing import transfer

PY = sys.executable
WEB_TOKEN = "web-token-that-must-not-leak-0123"

DUMP_ENV = f"""#!{PY}
import os, sys
for key, value in sorted(os.environ.items()):
    print(f"{{key}}={{value}}")
print("argv", sys.argv[1:])
"""

# A classic postprocess script: it reads and writes its job through the Python API.
POST_WITH_DAG = f"""#!{PY}
import os
from balsam.launcher import dag
job = dag.current_job
job.data = dict(job.data, post="reached the DB as " + str(os.environ.get("BALSAM_USER", "owner")))
job.save()
for key, value in sorted(os.environ.items()):
    print(f"{{key}}={{value}}")
"""


@pytest.fixture
def scripts() -> Iterator[str]:
    path = make_public_tmpdir("balsam-cred-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def owner_password(db: str) -> str:
    """The owner's real superuser password: the launcher must be able to use it."""
    role = str(serverinfo.read(db)["superuser"])
    with open(os.path.join(db, credentials.AUTH_DIR, role)) as fh:
        return fh.read().strip()


def secret_env(db: str) -> dict[str, str]:
    password = owner_password(db)
    return {"BALSAM_DB_PASSWORD": password, "PGPASSWORD": password, "BALSAM_WEB_TOKEN": WEB_TOKEN}


def files_containing(root: str, secrets: list[str]) -> list[str]:
    """Every file under ``root`` (symlinks not followed) whose bytes contain one of ``secrets``."""
    found = []
    for here, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(here, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as fh:
                data = fh.read()
            if any(s.encode() in data for s in secrets):
                found.append(path)
    return found


def add_app(cur, name: str, executable: str, preprocess: str = "", postprocess: str = "") -> None:
    cur.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, preprocess, "
                "envscript, postprocess) VALUES (%s, '', %s, %s, '', %s)",
                [name, executable, preprocess, postprocess])


# ---- the one place that cleans an environment --------------------------------------------------

def test_task_environment_drops_every_balsam_credential_but_keeps_the_role_and_db_path():
    base = {"BALSAM_DB_PASSWORD": "p", "PGPASSWORD": "p", "BALSAM_WEB_TOKEN": "t",
            "BALSAM_FUTURE_SECRET": "s", "BALSAM_USER": "alice", "BALSAM_DB_PATH": "/db",
            "HOME": "/h", "MY_TOKEN": "users-own"}
    assert task_environment(base, {}) == {"BALSAM_USER": "alice", "BALSAM_DB_PATH": "/db",
                                          "HOME": "/h", "MY_TOKEN": "users-own"}
    assert without_credentials(base) == task_environment(base, {})
    # A variable the job sets itself in environ_vars is the user's explicit choice.
    assert task_environment(base, {"PGPASSWORD": "job's own"})["PGPASSWORD"] == "job's own"
    assert [n for n in base if is_credential(n)] == ["BALSAM_DB_PASSWORD", "PGPASSWORD",
                                                     "BALSAM_WEB_TOKEN", "BALSAM_FUTURE_SECRET"]


def test_transfer_programs_do_not_see_credentials(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dump = tmp_path / "rsync-env.txt"
    write_script(str(bin_dir), "rsync", f"#!/bin/sh\nenv > {dump}\n")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "BALSAM_DB_PASSWORD": "db-secret-xyz",
           "PGPASSWORD": "db-secret-xyz", "BALSAM_WEB_TOKEN": WEB_TOKEN, "KEEP": "1"}
    transfer.stage_in("rsync:somehost:/data/x", str(tmp_path / "work"), timeout=30, env=env)
    text = dump.read_text()
    assert "KEEP=1" in text
    assert "db-secret-xyz" not in text and WEB_TOKEN not in text


# ---- end to end: real launchers -----------------------------------------------------------------

@pytest.mark.parametrize("mode", ["mpi", "serial"])
@pytest.mark.slow
def test_no_task_or_script_output_contains_the_exported_password_and_dag_still_works(
        db, cursor, scripts, mode):
    dump = write_script(scripts, "dump_env.py", DUMP_ENV)
    post = write_script(scripts, "post.py", POST_WITH_DAG)
    add_app(cursor, "dump", dump, preprocess=dump, postprocess=post)
    (job_id,) = add_jobs(cursor, [{"name": "leak", "application": "dump", "args": "hello"}])
    env = secret_env(db)
    with settings(db, launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", mode, env=env)
        assert launcher.wait(120) == 0, launcher.output()
        out, err = launcher.output()
    assert states(cursor) == {"leak": "JOB_FINISHED"}
    # The postprocess script reached the DB through the stored credential, not the variable.
    assert job_row(cursor, job_id)["data"] == {"post": "reached the DB as owner"}
    work = workdir(db, cursor, job_id)
    outputs = {name: open(os.path.join(work, name)).read()
               for name in ("leak.out", "preprocess.log", "postprocess.log")}
    for name, text in outputs.items():
        assert f"BALSAM_JOB_ID={job_id}" in text, name  # each really dumped its environment
        assert "BALSAM_DB_PASSWORD" not in text and "PGPASSWORD" not in text, name
        assert "BALSAM_WEB_TOKEN" not in text, name
    assert f"BALSAM_JOB_MODE={mode}" in outputs["leak.out"]
    secrets = [env["BALSAM_DB_PASSWORD"], WEB_TOKEN]
    assert files_containing(os.path.join(db, "data"), secrets) == []
    assert files_containing(os.path.join(db, "log"), secrets) == []
    assert not any(s in out + err for s in secrets)


@pytest.mark.slow
def test_a_script_without_a_stored_credential_is_refused_not_handed_the_password(
        db, cursor, scripts):
    """The variable is really what the launcher used: with the owner's stored password file
    hidden, the launcher (given the variable) runs the job, but the postprocess script's DB access
    fails -- the script never had the secret."""
    dump = write_script(scripts, "dump_env.py", DUMP_ENV)
    post = write_script(scripts, "post.py", POST_WITH_DAG)
    add_app(cursor, "dump", dump, postprocess=post)
    (job_id,) = add_jobs(cursor, [{"name": "nocred", "application": "dump"}])
    env = secret_env(db)
    role = str(serverinfo.read(db)["superuser"])
    stored = os.path.join(db, credentials.AUTH_DIR, role)
    hidden = stored + ".hidden"
    os.rename(stored, hidden)
    try:
        with settings(db, launcher=QUICK), launchers() as start:
            launcher = start("--consume-all", "--job-mode", "mpi", env=env)
            assert launcher.wait(120) == 0, launcher.output()
    finally:
        os.rename(hidden, stored)
    assert states(cursor) == {"nocred": "FAILED"}
    with open(os.path.join(workdir(db, cursor, job_id), "postprocess.log")) as fh:
        log = fh.read()
    assert "never passes its DB password on to a job's task or scripts" in log
    assert env["BALSAM_DB_PASSWORD"] not in log
    assert job_row(cursor, job_id)["data"] == {}


# ---- a collaborator's task: BALSAM_USER passes, the password does not ---------------------------

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second OS account")

def _collaborator_task(db: str, role: str, password: str, job_id: str) -> list[str]:
    """As the collaborator, in a task's environment built from a launcher environment holding
    BALSAM_USER and BALSAM_DB_PASSWORD: connect as ``dag`` does (the same connection
    parameters), with and then without a saved credential; what each attempt saw.

    (In-process: the collaborator cannot run this interpreter, which lives under /root.)"""
    from balsam.core.jobenv import job_variables
    from balsam.db.connect import connect
    from balsam.errors import DatabaseUnavailable

    launcher_env = dict(os.environ, BALSAM_USER=role, BALSAM_DB_PASSWORD=password)
    env = task_environment(launcher_env, job_variables({"job_id": job_id}, [], db))
    os.environ.clear()
    os.environ.update(env)
    credentials.save_user_credential(db, role, password)
    seen: list[str] = []
    for attempt in ("saved", "unsaved"):
        if attempt == "unsaved":
            os.unlink(os.path.join(os.environ["HOME"], ".balsam", "credentials.json"))
        try:
            conn = connect(db)
            with conn.cursor() as cur:
                cur.execute(f"SELECT name FROM {schema.JOB_TABLE} WHERE job_id = %s",
                            [os.environ["BALSAM_JOB_ID"]])
                seen.append(f"current job: {cur.fetchone()[0]}")
            conn.close()
        except DatabaseUnavailable as exc:
            seen.append(str(exc))
    return seen


@root_only
def test_a_collaborators_task_reaches_the_db_through_the_saved_credential_only(db, cursor):
    import asuser
    from conftest import run_balsam

    account = asuser.ensure_account()
    home = asuser.owned_dir(account, "balsam-cred-home-")
    add_app(cursor, "noop", "/bin/true")
    (job_id,) = add_jobs(cursor, [{"name": "theirs", "application": "noop"}])
    added = run_balsam("server", "--add-user", account.name, env={"BALSAM_DB_PATH": db})
    assert added.returncode == 0, added.stderr
    try:
        with open(os.path.join(db, credentials.AUTH_DIR, account.name)) as fh:
            password = fh.read().strip()
        out = asuser.run_as(account, _collaborator_task, db, account.name, password, job_id,
                            home=home, env={"BALSAM_DB_PATH": db, "BALSAM_USER": None,
                                            "BALSAM_DB_PASSWORD": None})
    finally:
        run_balsam("server", "--drop-user", account.name, env={"BALSAM_DB_PATH": db})
        shutil.rmtree(home, ignore_errors=True)
    assert out["error"] is None, out["error"]
    saved, unsaved = out["result"]
    assert saved == "current job: theirs"
    assert f"refused role '{account.name}'" in unsaved
    assert "never passes its DB password on to a job's task or scripts" in unsaved


# ---- the dashboard never shows its own secrets in a task's output ---------------------------------

def test_the_dashboard_redacts_its_token_and_db_password_from_task_output(db, cursor):
    from web_support import TOKEN, Client, web_server

    add_app(cursor, "noop", "/bin/true")
    (job_id,) = add_jobs(cursor, [{"name": "old", "application": "noop"}])
    work = workdir(db, cursor, job_id)
    os.makedirs(work)
    password = owner_password(db)
    with open(os.path.join(work, "old.out"), "w") as fh:  # written by a task of an older Balsam
        fh.write(f"BALSAM_DB_PASSWORD={password}\nBALSAM_WEB_TOKEN={TOKEN}\nPGPASSWORD={password}\n"
                 "result=42\n")
    with web_server(db, "--token", TOKEN) as base:
        c = Client(base)
        c.login()
        status, body, _ = c.request(f"/jobs/{job_id}/")
    assert status == 200
    assert password not in body and TOKEN not in body
    assert "BALSAM_DB_PASSWORD=[redacted]" in body and "BALSAM_WEB_TOKEN=[redacted]" in body
    assert "result=42" in body
