"""Every command that reads ``settings.yml`` stops on a typo in it with one line naming the file,
the key and the closest valid key (exit 2, no traceback), before doing anything."""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from balsam.core import schema
from tests.conftest import run_balsam

TYPO = "local_node: 4\n"
MESSAGE = "settings.yml: unknown key `local_node` (did you mean `local_nodes`?)"

COMMANDS = [
    ("launcher", ["launcher", "--consume-all", "--job-mode", "mpi"]),
    ("service", ["service", "--foreground"]),
    ("service", ["service"]),  # detached: the child's error is passed on
    ("submit-launch", ["submit-launch", "-n", "1", "-t", "5", "-q", "local", "--job-mode", "mpi"]),
    ("submit-launch", ["submit-launch", "-n", "1", "-t", "5", "-q", "local", "--job-mode", "mpi",
                       "--dry-run"]),
    ("ls", ["ls", "queues"]),
    ("top", ["top", "--once"]),
    ("web", ["web", "--port", "0", "--token", "t0123456789"]),
]


@pytest.fixture
def typo(db: str) -> Iterator[str]:
    """The test DB's settings.yml with ``local_node: 4`` added (restored afterwards)."""
    path = os.path.join(db, "settings.yml")
    with open(path) as fh:
        original = fh.read()
    with open(path, "a") as fh:
        fh.write(TYPO)
    try:
        yield path
    finally:
        with open(path, "w") as fh:
            fh.write(original)


@pytest.mark.parametrize("name,argv", COMMANDS, ids=[" ".join(argv) for _, argv in COMMANDS])
@pytest.mark.slow
def test_a_settings_typo_is_one_line_at_every_command_that_reads_settings(typo, cursor, name, argv):
    proc = run_balsam(*argv, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.strip() == f"balsam {name}: error: {typo}: {MESSAGE[len('settings.yml: '):]}"
    assert "Traceback" not in proc.stdout + proc.stderr
    cursor.execute(f"SELECT count(*) FROM {schema.QLAUNCH_TABLE}")
    assert cursor.fetchone()[0] == 0
    cursor.execute(f"SELECT count(*) FROM {schema.SESSION_TABLE}")
    assert cursor.fetchone()[0] == 0


def test_init_of_an_existing_db_reports_a_settings_typo(typo, db):
    proc = run_balsam("init", db)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == f"balsam init: error: {typo}: {MESSAGE[14:]}"


@pytest.mark.slow
def test_starting_a_stopped_server_reports_a_settings_typo_and_a_bad_port(restart_db):
    from balsam.db import cluster

    path = os.path.join(restart_db, "settings.yml")
    with open(path) as fh:
        original = fh.read()
    cluster.stop(restart_db)
    env = {"BALSAM_DB_PATH": restart_db}
    try:
        for text, message in ((TYPO, MESSAGE[14:]),
                              ("server:\n  port: 99999\n",
                               "`server.port` must be at most 65535, not 99999")):
            with open(path, "w") as fh:
                fh.write(original + text if text == TYPO else text)
            for action in ("--start", "--connect"):
                proc = run_balsam("server", action, env=env)
                assert proc.returncode == 2, proc.stdout
                assert proc.stderr == f"balsam server: error: {path}: {message}\n"
    finally:
        with open(path, "w") as fh:
            fh.write(original)
        cluster.start(restart_db)


def test_a_server_info_port_that_is_not_a_number_is_one_line_not_an_internal_error(restart_db):
    import json

    from balsam.db import serverinfo

    info = serverinfo.read(restart_db)
    bad = dict(info, port="abc")
    with open(serverinfo.path_of(restart_db), "w") as fh:
        json.dump(bad, fh)
    try:
        proc = run_balsam("ls", env={"BALSAM_DB_PATH": restart_db})
    finally:
        serverinfo.write(restart_db, info)
    assert proc.returncode == 2
    assert proc.stderr == (f"balsam ls: error: {serverinfo.path_of(restart_db)}: `port` must be a "
                           "whole number from 1 to 65535, not 'abc'\n")


def test_a_running_service_logs_a_settings_typo_and_keeps_its_previous_settings(db):
    from launcher_support import settings
    from service_support import services

    path = os.path.join(db, "settings.yml")
    with settings(db, service={"cycle_seconds": 0.5, "transition_threads": 0}), \
            services(db) as start:
        svc = start()
        svc.wait_started()
        with open(path, "a") as fh:
            fh.write(TYPO)
        svc.wait_cycles(2)
        assert svc.proc.poll() is None
        assert f"{path}: {MESSAGE[14:]}; keeping the previous settings" in svc.log()
