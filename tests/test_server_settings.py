"""settings.yml's ``server:`` values apply at every server start, not only at ``balsam init``
(issue 12, item 8). A DB of the module's own; its server is stopped and started with the real CLI
and asked with ``SHOW`` what it runs with."""
from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterator
from typing import Optional

import pytest
from conftest import make_public_tmpdir, run_balsam
from launcher_support import settings

from balsam.db import cluster, dbdir, roles, serverinfo

pytestmark = pytest.mark.usefixtures("test_home")

DEFAULT = {"port": 0, "listen_addresses": "*", "max_connections": 500, "shared_buffers": "256MB"}


@pytest.fixture(scope="module")
def srv_db(test_home: str) -> Iterator[str]:
    root = make_public_tmpdir("balsam-srvset-")
    path = dbdir.init(os.path.join(root, "db"))
    yield path
    cluster.reset(path)
    shutil.rmtree(root, ignore_errors=True)


def server(path: str, *args: str) -> subprocess.CompletedProcess:
    return run_balsam("server", *args, env={"BALSAM_DB_PATH": path})


def restart(path: str) -> None:
    stopped = server(path, "--stop")
    assert stopped.returncode == 0, stopped.stderr
    started = server(path, "--start")
    assert started.returncode == 0, started.stderr


def show(path: str, *names: str) -> list[str]:
    conn = roles.admin_connect(path)
    try:
        with conn.cursor() as cur:
            values = []
            for name in names:
                cur.execute(f"SHOW {name}")
                values.append(cur.fetchone()[0])
            return values
    finally:
        conn.close()


def outside_address() -> Optional[str]:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            address = sock.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def accepts(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=3):
            return True
    except OSError:
        return False


def test_server_options_are_quoted_for_the_shell_pg_ctl_runs():
    server_settings = {"listen_addresses": "*", "max_connections": 7,
                       "shared_buffers": "1MB $(touch /tmp/never); x"}
    options = cluster.server_options(5432, server_settings)
    assert shlex.split(options) == ["-p", "5432", "-c", "listen_addresses=*",
                                    "-c", "max_connections=7",
                                    "-c", "shared_buffers=1MB $(touch /tmp/never); x"]


@pytest.mark.slow
def test_changed_listen_addresses_max_connections_and_shared_buffers_apply_after_a_restart(
        srv_db: str):
    cluster.start(srv_db)
    assert show(srv_db, "max_connections", "listen_addresses", "shared_buffers") == \
        ["500", "*", "256MB"]
    changed = dict(DEFAULT, listen_addresses="127.0.0.1", max_connections=123,
                   shared_buffers="64MB")
    with settings(srv_db, server=changed):
        restart(srv_db)
        assert show(srv_db, "max_connections", "listen_addresses", "shared_buffers") == \
            ["123", "127.0.0.1", "64MB"]
        port = int(serverinfo.read(srv_db)["port"])
        assert accepts("127.0.0.1", port)
        other = outside_address()
        if other:
            assert not accepts(other, port), f"the server still listens on {other}"
    # settings.yml put back: the next start applies the defaults again.
    restart(srv_db)
    assert show(srv_db, "max_connections", "listen_addresses", "shared_buffers") == \
        ["500", "*", "256MB"]
    other = outside_address()
    if other:
        assert accepts(other, int(serverinfo.read(srv_db)["port"]))


@pytest.mark.slow
def test_a_value_postgres_refuses_fails_the_start_with_one_line_and_runs_nothing_in_a_shell(
        srv_db: str, tmp_path):
    marker = tmp_path / "injected"
    bad = dict(DEFAULT, shared_buffers=f"lots $(touch {marker})")
    cluster.start(srv_db)
    with settings(srv_db, server=bad):
        assert server(srv_db, "--stop").returncode == 0
        proc = server(srv_db, "--start")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "shared_buffers" in lines[0]
    assert not marker.exists()
    assert not cluster.status(srv_db).running
    assert server(srv_db, "--start").returncode == 0
    assert show(srv_db, "shared_buffers") == ["256MB"]
