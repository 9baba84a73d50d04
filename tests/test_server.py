"""`balsam server`: start/stop/status/reset/connect and their failure modes, sessions, users.

One DB for the module (its own PostgreSQL server, stopped at the end); each test first puts the
server in the state it needs. Every command runs as the real CLI in a subprocess, except the
collaborator's, which run in a child that dropped to an unprivileged account.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg2
import pytest
from conftest import make_public_tmpdir, run_balsam

from balsam.db import cluster, connect, dbdir, index, serverinfo

pytestmark = pytest.mark.usefixtures("test_home")


@pytest.fixture(scope="module")
def srv_db(test_home: str) -> Iterator[str]:
    root = make_public_tmpdir("balsam-srv-")
    path = dbdir.init(os.path.join(root, "srvdb"))
    yield path
    cluster.reset(path)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def running(srv_db: str) -> str:
    """The module DB with its server running."""
    cluster.start(srv_db)
    return srv_db


@pytest.fixture
def stopped(srv_db: str) -> str:
    cluster.reset(srv_db)
    return srv_db


def server(path: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return run_balsam("server", *args, env={"BALSAM_DB_PATH": path}, **kwargs)


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def set_port(path: str, port: int) -> None:
    settings = os.path.join(path, "settings.yml")
    with open(settings) as fh:
        text = fh.read()
    with open(settings, "w") as fh:
        fh.write(re.sub(r"(?m)^(\s+port:) \d+", rf"\1 {port}", text))


@pytest.mark.slow
def test_start_twice_says_already_running_on_host_and_port(running: str) -> None:
    info = serverinfo.read(running)
    proc = server(running, "--start")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"Server already running on {socket.gethostname()}:{info['port']}"
    assert serverinfo.read(running)["pid"] == info["pid"]


def test_stop_then_stop_again_says_not_running_and_exits_0(running: str) -> None:
    first = server(running, "--stop")
    assert (first.returncode, first.stdout.strip()) == (0, "Stopped the Balsam DB server")
    second = server(running, "--stop")
    assert (second.returncode, second.stdout.strip()) == (0, "Server is not running")
    info = serverinfo.read(running)
    assert (info["host"], info["port"], info["pid"]) == ("", None, None)


def test_status_of_running_server_reports_where_version_and_connections(running: str) -> None:
    info = serverinfo.read(running)
    conn = connect.connect(running, "pytest-status")
    try:
        proc = server(running, "--status")
    finally:
        conn.close()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"Balsam DB server for {running}: running",
        f"  host: {socket.gethostname()}",
        f"  port: {info['port']}",
        f"  pid: {info['pid']}",
        f"  PostgreSQL: {info['pg_version']}",
        "  connections: 1",
        f"  owner: {info['owner']}; server runs as: {info['server_account']}",
    ]


def test_status_of_stopped_server_exits_1(stopped: str) -> None:
    proc = server(stopped, "--status")
    assert proc.returncode == 1
    assert proc.stdout.splitlines()[0] == f"Balsam DB server for {stopped}: stopped"
    assert "connections" not in proc.stdout


def kill_postmaster(path: str) -> int:
    pid = serverinfo.read(path)["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while cluster.status(path).running and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


@pytest.mark.slow
def test_start_after_kill_9_removes_the_stale_pid_file_and_starts(running: str) -> None:
    pid = kill_postmaster(running)
    status = server(running, "--status")
    assert status.returncode == 1
    assert f"stale postmaster.pid: process {pid} is not running" in status.stdout
    started = time.monotonic()
    proc = server(running, "--start")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"Removed a stale postmaster.pid (process {pid} is not running)"
    assert lines[1].startswith(f"Started the Balsam DB server on {socket.gethostname()}:")
    assert time.monotonic() - started < 20
    assert server(running, "--status").returncode == 0
    assert connect.try_connect(running) is None


def test_configured_port_in_use_fails_fast_with_one_line(stopped: str) -> None:
    with socket.socket() as sock:
        sock.bind(("", 0))
        sock.listen()
        port = sock.getsockname()[1]
        set_port(stopped, port)
        try:
            started = time.monotonic()
            proc = server(stopped, "--start")
            assert time.monotonic() - started < 10
            one_line_error(proc, f"port {port} (settings.yml server.port) is already in use")
        finally:
            set_port(stopped, 0)
    assert not cluster.status(stopped).running


def test_configured_free_port_is_used_and_port_0_picks_a_free_one(stopped: str) -> None:
    wanted = cluster.free_port()
    set_port(stopped, wanted)
    try:
        assert server(stopped, "--start").returncode == 0
        assert serverinfo.read(stopped)["port"] == wanted
    finally:
        set_port(stopped, 0)
    cluster.stop(stopped)
    proc = server(stopped, "--start")
    picked = serverinfo.read(stopped)["port"]
    assert proc.stdout.strip() == f"Started the Balsam DB server on {socket.gethostname()}:{picked}"
    assert picked > 0 and cluster.port_answers("", picked)


def test_reset_leaves_a_running_server_running_as_it_found_it(running: str) -> None:
    pid = cluster.status(running).pid
    proc = server(running, "--reset")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["Stopped the Balsam DB server",
                         "Server reset: it is stopped and no stale state is left"]
    assert lines[-1] == "It was running, so it was started again"
    after = cluster.status(running)
    assert after.running and after.pid != pid
    assert server(running, "--status").returncode == 0


def test_reset_leaves_a_stopped_server_stopped(stopped: str) -> None:
    proc = server(stopped, "--reset")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["Server is not running",
                                        "Server reset: it is stopped and no stale state is left"]
    assert not cluster.status(stopped).running
    assert not os.path.exists(os.path.join(stopped, "balsamdb", "postmaster.pid"))


def test_reset_after_a_crash_removes_pid_file_and_clears_server_info(running: str) -> None:
    pid = kill_postmaster(running)
    proc = server(running, "--reset")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"Removed a stale postmaster.pid (process {pid} is not running)"
    assert not os.path.exists(os.path.join(running, "balsamdb", "postmaster.pid"))
    info = serverinfo.read(running)
    assert (info["host"], info["port"]) == ("", None)
    assert server(running, "--status").returncode == 1


@pytest.mark.slow
def test_server_info_naming_an_unreachable_host(stopped: str) -> None:
    serverinfo.update(stopped, host="gone-node.invalid", port=5432, pid=4242)
    status = server(stopped, "--status")
    assert status.returncode == 1
    assert "server-info names gone-node.invalid:5432, which does not answer" in status.stdout
    for flag in ("--start", "--connect", "--stop"):
        one_line_error(server(stopped, flag, timeout=30), "gone-node.invalid:5432",
                       "`balsam server --reset` forgets it")
    proc = server(stopped, "--reset")
    assert proc.returncode == 0
    assert proc.stdout.startswith("Forgot the server recorded on gone-node.invalid:5432")
    assert serverinfo.read(stopped)["host"] == ""
    assert server(stopped, "--start").returncode == 0


def test_server_info_naming_another_host_that_answers(running: str) -> None:
    port = serverinfo.read(running)["port"]
    serverinfo.update(running, host="127.0.0.2")  # not this host's name, but the server answers there
    try:
        status = server(running, "--status")
        assert status.returncode == 0
        assert "  host: 127.0.0.2" in status.stdout.splitlines()
        one_line_error(server(running, "--stop"), f"the server runs on 127.0.0.2:{port}: stop it from there")
        one_line_error(server(running, "--reset"), f"127.0.0.2:{port} and answers")
        proc = server(running, "--connect")
        assert proc.stdout.strip() == f"Connected to the Balsam DB server on 127.0.0.2:{port}"
    finally:
        serverinfo.update(running, host=socket.gethostname())


@pytest.fixture
def empty_index() -> Iterator[None]:
    """An empty DB index for one test; the previous one is put back afterwards."""
    saved = index.read()
    with open(index.index_path(), "w") as fh:
        json.dump([], fh)
    yield
    with open(index.index_path(), "w") as fh:
        json.dump(sorted(set(saved) | set(index.read())), fh)


@pytest.mark.usefixtures("empty_index")
def test_connect_starts_a_stopped_server_for_the_owner_and_indexes_the_db(stopped: str) -> None:
    assert index.read() == []
    proc = server(stopped, "--connect")
    assert proc.returncode == 0, proc.stderr
    port = serverinfo.read(stopped)["port"]
    where = f"{socket.gethostname()}:{port}"
    assert proc.stdout.splitlines() == [f"Started the Balsam DB server on {where}",
                                        f"Connected to the Balsam DB server on {where}"]
    assert os.path.realpath(stopped) in index.read()
    again = server(stopped, "--connect")
    assert again.stdout.strip() == f"Connected to the Balsam DB server on {where}"


def test_concurrent_starts_start_one_server(stopped: str) -> None:
    env = dict(os.environ, BALSAM_DB_PATH=stopped)
    procs = [subprocess.Popen([sys.executable, "-m", "balsam", "server", "--start"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    starts = [out for out, _ in outputs if out.startswith("Started")]
    assert len(starts) == 1, outputs
    assert sum("already running" in out for out, _ in outputs) == 3


def test_list_active_connections_shows_each_session_and_a_count(running: str) -> None:
    conn = connect.connect(running, "pytest-probe", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid(), 'probe-marker'")
            pid = cur.fetchone()[0]
        proc = server(running, "--list-active-connections")
    finally:
        conn.close()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["PID", "USER", "APPLICATION", "CLIENT", "STATE", "QUERY"]
    assert lines[1].split() == [str(pid), serverinfo.read(running)["superuser"], "pytest-probe",
                                "127.0.0.1", "idle", "SELECT", "pg_backend_pid(),", "'probe-marker'"]
    assert lines[-1] == "1 active connection(s)"


def test_add_list_and_drop_a_user(running: str) -> None:
    owner = serverinfo.read(running)["superuser"]
    added = server(running, "--add-user", "carol")
    assert added.returncode == 0, added.stderr
    secret = os.path.join(running, ".auth", "carol")
    assert added.stdout.splitlines() == [
        f"Created role 'carol' on the Balsam DB {running}",
        f"Its password is in {secret} (readable by you only): give it to carol privately.",
        "They store it, with the password on standard input, by running:",
        f"    BALSAM_DB_PATH={running} balsam server --save-credential carol < PASSWORD-FILE",
    ]
    assert os.stat(secret).st_mode & 0o777 == 0o600
    users = server(running, "--list-users").stdout.splitlines()
    width = max(len(owner), len("carol"))
    assert users == sorted([f"{owner:<{width}}  owner, superuser", "carol".ljust(width).rstrip()]) + \
        ["2 role(s) can log in"]
    one_line_error(server(running, "--add-user", "carol"), "role 'carol' already exists")
    dropped = server(running, "--drop-user", "carol")
    assert dropped.stdout.strip() == "Dropped role 'carol' (ended 0 session(s)) and removed its password file"
    assert not os.path.exists(secret)
    one_line_error(server(running, "--drop-user", "carol"), "no role named 'carol'")
    one_line_error(server(running, "--drop-user", owner), "the DB owner's own role")


@pytest.mark.parametrize("name", ["Carol", "1carol", "carol-x", "a;drop role x", "", "x" * 64,
                                  "pg_carol", "public"])
@pytest.mark.slow
def test_invalid_role_names_are_refused_in_one_line(running: str, name: str) -> None:
    for flag in ("--add-user", "--drop-user"):
        one_line_error(server(running, flag, name), repr(name))


def test_server_needs_an_active_db_and_exactly_one_action(running: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BALSAM_DB_PATH"}
    proc = subprocess.run([sys.executable, "-m", "balsam", "server", "--status"], env=env,
                          capture_output=True, text=True, timeout=60)
    one_line_error(proc, "no Balsam DB is active")
    one_line_error(server(running), "one of the arguments")
    one_line_error(server(running, "--start", "--stop"), "not allowed with argument")


# --- a collaborator: another OS account, not the DB owner -------------------------------------

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second OS account")


@pytest.fixture(scope="module")
def collaborator(srv_db: str) -> Iterator[tuple]:
    import asuser

    from balsam.cli.main import build_parser
    from balsam.db import credentials, roles  # noqa: F401 - loaded before the child drops privileges

    build_parser()
    account = asuser.ensure_account()
    home = asuser.owned_dir(account, "balsam-collab-home-")
    yield account, home
    shutil.rmtree(home, ignore_errors=True)


def as_collaborator(collaborator: tuple, path: str, *argv: str, stdin: str = "") -> dict:
    import asuser

    from balsam.cli.main import main

    account, home = collaborator
    out = asuser.run_as(account, main, list(argv), home=home, stdin=stdin,
                        env={"BALSAM_DB_PATH": path, "BALSAM_USER": None, "BALSAM_DB_PASSWORD": None})
    assert out["error"] is None, out["error"]
    return out


@root_only
def test_collaborator_cannot_start_a_stopped_server_and_is_told_to_ask_the_owner(
        stopped: str, collaborator: tuple) -> None:
    out = as_collaborator(collaborator, stopped, "server", "--connect")
    assert out["result"] == 2
    assert out["stderr"].strip() == (f"balsam server: error: the Balsam DB server of {stopped} is not "
                                     f"running; ask the owner (root) to start it (`balsam server --start`)")
    for flag in ("--start", "--reset"):
        out = as_collaborator(collaborator, stopped, "server", flag)
        assert out["result"] == 2
        assert "only the DB owner (root) can" in out["stderr"]
    assert not cluster.status(stopped).running


@root_only
def test_collaborator_connects_with_a_credential_the_owner_created(running: str, collaborator: tuple) -> None:
    account = collaborator[0]
    refused = as_collaborator(collaborator, running, "server", "--connect")
    assert refused["result"] == 2
    assert f"refused role '{account.name}'" in refused["stderr"]
    assert server(running, "--add-user", account.name).returncode == 0
    try:
        with open(os.path.join(running, ".auth", account.name)) as fh:
            password = fh.read().strip()
        wrong = as_collaborator(collaborator, running, "server", "--save-credential", account.name,
                                stdin="not-the-password\n")
        assert wrong["result"] == 2 and "nothing was saved" in wrong["stderr"]
        saved = as_collaborator(collaborator, running, "server", "--save-credential", account.name,
                                stdin=password + "\n")
        assert saved["result"] == 0, saved["stderr"]
        assert "Verified: the server accepted it" in saved["stdout"]
        store = os.path.join(collaborator[1], ".balsam", "credentials.json")
        assert os.stat(store).st_mode & 0o777 == 0o600 and os.stat(store).st_uid == account.uid
        ok = as_collaborator(collaborator, running, "server", "--connect")
        port = serverinfo.read(running)["port"]
        assert (ok["result"], ok["stdout"].strip()) == (
            0, f"Connected to the Balsam DB server on {socket.gethostname()}:{port}")
        status = as_collaborator(collaborator, running, "server", "--status")
        assert status["result"] == 0 and "  connections: 0" in status["stdout"].splitlines()
        for flag in (["--stop"], ["--add-user", "dave"], ["--drop-user", account.name]):
            denied = as_collaborator(collaborator, running, "server", *flag)
            assert denied["result"] == 2 and "only the DB owner (root) can" in denied["stderr"]
        assert cluster.status(running).running
    finally:
        server(running, "--drop-user", account.name)
    gone = as_collaborator(collaborator, running, "server", "--connect")
    assert gone["result"] == 2 and f"refused role '{account.name}'" in gone["stderr"]


@pytest.mark.slow
def test_wrong_password_is_refused_by_the_server(running: str) -> None:
    params = connect.connection_params(running)
    params["password"] = "wrong"
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(**params)
