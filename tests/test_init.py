"""`balsam init`: the DB directory layout, the secured and tuned PostgreSQL cluster, the shipped
migrations, the DB index, site PostgreSQL binaries, bad input, and root / non-root servers."""
from __future__ import annotations

import glob
import json
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator

import psycopg2
import pytest
from conftest import make_public_tmpdir, run_balsam

from balsam.core import schema
from balsam.core.lifecycle import record_created
from balsam.db import cluster, connect, dbdir, index, pgaccount, serverinfo

pytestmark = pytest.mark.usefixtures("test_home")

SITE_PG = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
needs_site_pg = pytest.mark.skipif(not SITE_PG, reason="no site PostgreSQL under /usr/lib/postgresql")
root_only = pytest.mark.skipif(os.geteuid() != 0,
                               reason="not root: the whole suite already runs the server as a normal user")


@pytest.fixture(scope="module")
def tmp_root() -> Iterator[str]:
    root = make_public_tmpdir("balsam-init-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def inited(tmp_root: str) -> Iterator[tuple[str, subprocess.CompletedProcess]]:
    """A DB made by the real `balsam init` command, and that command's result."""
    path = os.path.join(tmp_root, "initdb")
    proc = run_balsam("init", path)
    yield path, proc
    if serverinfo.is_db_dir(path):
        cluster.reset(path)


@pytest.fixture
def db_path(inited: tuple) -> str:
    path = inited[0]
    cluster.start(path)
    return path


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr


def query(path: str, sql: str, params: tuple = ()) -> list:
    conn = connect.connect(path, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


@pytest.mark.slow
def test_init_prints_success_and_how_to_activate(inited: tuple) -> None:
    path, proc = inited
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-2:] == [f"Successfully created Balsam DB at: {path}",
                          "Use `source balsamactivate initdb` to begin working."]


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_init_creates_the_layout_with_private_data_and_credentials(db_path: str) -> None:
    for sub in ("data", "log", "qsubmit"):
        assert os.path.isdir(os.path.join(db_path, sub))
    assert os.path.isfile(os.path.join(db_path, "settings.yml"))
    assert mode(os.path.join(db_path, "balsamdb")) == 0o700
    info = serverinfo.read(db_path)
    assert mode(os.path.join(db_path, ".auth")) == 0o700
    password_file = os.path.join(db_path, ".auth", info["superuser"])
    assert mode(password_file) == 0o600 and os.stat(password_file).st_uid == os.getuid()
    assert mode(serverinfo.path_of(db_path)) == 0o644
    assert set(info) >= {"host", "port", "pid", "owner", "owner_uid", "superuser", "server_account",
                         "server_uid", "pg_bin", "pg_version", "database"}
    assert (info["owner_uid"], info["database"]) == (os.getuid(), "balsam")
    with open(serverinfo.path_of(db_path)) as fh:
        assert "password" not in fh.read().lower()


def test_pg_hba_allows_only_scram_passwords_never_trust(db_path: str) -> None:
    with open(os.path.join(db_path, "balsamdb", "pg_hba.conf")) as fh:
        rules = [ln.split() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules)
    assert not any("trust" in rule for rule in rules)
    assert ["host", "all", "all", "0.0.0.0/0", "scram-sha-256"] in rules


def test_server_is_tuned_for_the_workload(db_path: str) -> None:
    settings = dict(query(db_path, "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                          (["log_statement", "log_min_duration_statement", "log_connections",
                            "max_connections", "password_encryption", "listen_addresses",
                            "logging_collector"],)))
    assert settings == {"log_statement": "none", "log_min_duration_statement": "-1",
                        "log_connections": "off", "max_connections": "500",
                        "password_encryption": "scram-sha-256", "listen_addresses": "*",
                        "logging_collector": "off"}


def test_shipped_migrations_are_applied(db_path: str) -> None:
    tables = {r[0] for r in query(db_path, "SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert {schema.JOB_TABLE, schema.APP_TABLE, schema.EVENT_TABLE, schema.DEP_TABLE} <= tables
    applied = query(db_path, "SELECT app, name FROM django_migrations WHERE app = 'core' ORDER BY id")
    assert applied[0] == ("core", "0001_initial")
    shipped = sorted(f[:-3] for f in os.listdir(os.path.join(os.path.dirname(schema.__file__), "migrations"))
                     if f[:4].isdigit() and f.endswith(".py"))
    assert [name for _, name in applied] == shipped


def test_init_registers_the_db_in_the_index(db_path: str) -> None:
    assert os.path.realpath(db_path) in index.read()
    assert index.resolve("initdb") == os.path.realpath(db_path)


@root_only
def test_as_root_the_server_runs_as_an_unprivileged_account_said_once(inited: tuple) -> None:
    path, proc = inited
    said = [ln for ln in proc.stdout.splitlines() if ln.startswith("Running as root:")]
    assert said == ["Running as root: PostgreSQL refuses root, so the server runs as the unprivileged "
                    "account 'balsam-server'"]
    cluster.stop(path)
    started = run_balsam("server", "--start", env={"BALSAM_DB_PATH": path})
    assert started.returncode == 0, started.stderr
    assert "Running as root" not in started.stdout
    info = serverinfo.read(path)
    assert os.stat(f"/proc/{info['pid']}").st_uid == info["server_uid"] != 0
    assert info["server_account"] == "balsam-server"
    assert os.stat(os.path.join(path, "balsamdb")).st_uid == info["server_uid"]


def test_init_on_an_existing_db_restarts_and_migrates(db_path: str) -> None:
    cluster.stop(db_path)
    proc = run_balsam("init", db_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == \
        f"{db_path} is already a Balsam DB: starting it and applying migrations"
    assert cluster.status(db_path).running
    assert query(db_path, "SELECT count(*) FROM django_migrations WHERE app = 'core'")[0][0] >= 1


def test_init_on_a_file_path_is_a_one_line_error(tmp_root: str) -> None:
    path = os.path.join(tmp_root, "a-file")
    open(path, "w").close()
    one_line_error(run_balsam("init", path), f"{path} exists and is not a directory")


def test_bad_pg_bin_is_a_one_line_error_and_creates_nothing(tmp_root: str) -> None:
    path = os.path.join(tmp_root, "bad-bin-db")
    one_line_error(run_balsam("init", path, "--pg-bin", tmp_root),
                   f"{tmp_root} is not a PostgreSQL bin directory (missing initdb, pg_ctl, postgres)")
    one_line_error(run_balsam("init", path, env={"BALSAM_PG_BIN": "/nonexistent/bin"}),
                   "/nonexistent/bin is not a PostgreSQL bin directory")
    assert not os.path.exists(path)


def check_site_db(path: str, bin_dir: str) -> None:
    info = serverinfo.read(path)
    try:
        assert info["pg_bin"] == bin_dir
        version = query(path, "SHOW server_version")[0][0]
        assert version.split()[0] == info["pg_version"]
        assert version.split(".")[0] == bin_dir.split("/")[-2]
        assert query(path, "SELECT count(*) FROM core_balsamjob") == [(0,)]
    finally:
        cluster.stop(path)


@needs_site_pg
@pytest.mark.slow
def test_pg_bin_selects_a_site_postgresql(tmp_root: str) -> None:
    path = os.path.join(tmp_root, "site-db")
    proc = run_balsam("init", path, "--pg-bin", SITE_PG[-1], env={"BALSAM_PG_BIN": "/nonexistent"})
    assert proc.returncode == 0, proc.stderr
    check_site_db(path, SITE_PG[-1])


@needs_site_pg
def test_balsam_pg_bin_selects_a_site_postgresql(tmp_root: str) -> None:
    path = os.path.join(tmp_root, "site-env-db")
    proc = run_balsam("init", path, env={"BALSAM_PG_BIN": SITE_PG[-1]})
    assert proc.returncode == 0, proc.stderr
    check_site_db(path, SITE_PG[-1])


def insert_app_and_job(cur) -> uuid.UUID:
    cur.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, preprocess, envscript, "
                "postprocess) VALUES ('collab-app', '', 'echo', '', '', '')")
    row = schema.new_job_row({"name": "collab-job", "application": "collab-app", "state": "READY"})
    cols = list(row)
    values = [json.dumps(v) if isinstance(v, dict) else str(v) if c == "job_id" else v
              for c, v in row.items()]
    marks = ", ".join(["%s"] * len(cols))
    cur.execute(f"INSERT INTO {schema.JOB_TABLE} ({', '.join(cols)}) VALUES ({marks})", values)
    record_created(cur, [(row["job_id"], "READY")])
    return row["job_id"]


def test_password_auth_is_enforced_and_added_users_can_work_until_dropped(
        db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    params = connect.connection_params(db_path)
    for password in ("wrong", None):
        bad = dict(params, password=password) if password else {k: v for k, v in params.items()
                                                                 if k != "password"}
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(**bad)
    denied = run_balsam("server", "--list-users", env={"BALSAM_DB_PATH": db_path, "BALSAM_DB_PASSWORD": "x"})
    one_line_error(denied, "refused role")

    assert run_balsam("server", "--add-user", "erin", env={"BALSAM_DB_PATH": db_path}).returncode == 0
    with open(os.path.join(db_path, ".auth", "erin")) as fh:
        password = fh.read().strip()
    monkeypatch.setenv("BALSAM_USER", "erin")
    monkeypatch.setenv("BALSAM_DB_PASSWORD", password)
    conn = connect.connect(db_path)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            assert cur.fetchone() == ("erin",)
            job_id = insert_app_and_job(cur)
        conn.commit()
    finally:
        conn.close()
    monkeypatch.delenv("BALSAM_USER")
    monkeypatch.delenv("BALSAM_DB_PASSWORD")
    assert query(db_path, f"SELECT name FROM {schema.JOB_TABLE} WHERE job_id = %s", (str(job_id),)) == \
        [("collab-job",)]
    assert query(db_path, f"SELECT to_state FROM {schema.EVENT_TABLE} WHERE job_id = %s",
                 (str(job_id),)) == [("READY",)]

    assert run_balsam("server", "--drop-user", "erin", env={"BALSAM_DB_PATH": db_path}).returncode == 0
    monkeypatch.setenv("BALSAM_USER", "erin")
    monkeypatch.setenv("BALSAM_DB_PASSWORD", password)
    with pytest.raises(Exception, match="refused role 'erin'"):
        connect.connect(db_path)


@root_only
@pytest.mark.slow
def test_as_a_normal_user_the_server_runs_as_that_user_with_no_extra_account(balsam_db_path: str) -> None:
    """A forked child drops to an unprivileged account and runs init, a query and stop itself."""
    import asuser

    account = asuser.ensure_account()
    bin_dir = pgaccount.usable_bin_dir(pgaccount.find_bin_dir(), account)
    home = asuser.owned_dir(account, "balsam-user-home-")
    work = asuser.owned_dir(account, "balsam-user-db-")
    path = os.path.join(work, "userdb")

    def as_user() -> dict:
        dbdir.init(path, pg_bin=bin_dir, say=print)
        info = serverinfo.read(path)
        facts = {"info": info, "postmaster_uid": os.stat(f"/proc/{info['pid']}").st_uid,
                 "user": query(path, "SELECT current_user, count(*) FROM core_balsamjob")[0],
                 "index": index.read()}
        facts["stopped"] = cluster.stop(path)
        return facts

    try:
        out = asuser.run_as(account, as_user, home=home, env={"BALSAM_DB_PATH": None, "BALSAM_USER": None,
                                                              "BALSAM_SERVER_ACCOUNT": None})
        assert out["error"] is None, out["error"]
        facts = out["result"]
        info = facts["info"]
        assert facts["postmaster_uid"] == account.uid
        assert (info["server_account"], info["server_uid"]) == (account.name, account.uid)
        assert (info["owner"], info["owner_uid"]) == (account.name, account.uid)
        assert info["superuser"] == account.name
        assert facts["user"] == [account.name, 0]
        assert facts["index"] == [path]
        assert facts["stopped"] is True
        assert "Running as root" not in out["stdout"]
        assert os.stat(os.path.join(path, "balsamdb")).st_uid == account.uid
    finally:
        if serverinfo.is_db_dir(path):
            cluster.reset(path)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
