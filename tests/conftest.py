"""Shared fixtures: a real throwaway Balsam DB (real PostgreSQL) started with the project's own code.

The session creates one DB directory with ``balsam.db.dbdir.init`` -- the same code `balsam init`
runs -- and stops its server at the end. ``HOME`` points at a temporary directory so the DB index
and saved credentials of the person running the tests are never touched. Tests that need an
empty database use the ``db`` fixture, which truncates every table first.
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Optional

import pytest

from balsam.core import schema

HYDRA_BEFORE = pytest.StashKey[set[str]]()
"""The Hydra topology files in /tmp when the run started (:func:`pytest_sessionfinish`)."""
TABLES = [schema.EVENT_TABLE, schema.DEP_TABLE, schema.JOB_TABLE, schema.APP_TABLE,
          schema.QLAUNCH_TABLE, schema.SESSION_TABLE, schema.TRANSFER_ITEM_TABLE,
          schema.TRANSFER_BATCH_TABLE]


def make_public_tmpdir(prefix: str) -> str:
    """A temporary directory every account can traverse (the server account must, under root)."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(path, 0o755)
    atexit.register(shutil.rmtree, path, True)  # after the session's servers were stopped
    return path


@pytest.fixture(scope="session")
def test_home() -> Iterator[str]:
    home = make_public_tmpdir("balsam-home-")
    old = os.environ.get("HOME")
    os.environ["HOME"] = home
    yield home
    if old is not None:
        os.environ["HOME"] = old
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def balsam_db_path(test_home: str) -> Iterator[str]:
    """Path of the session's Balsam DB; its server runs for the whole session."""
    from balsam.db import cluster, dbdir

    root = make_public_tmpdir("balsam-test-")
    path = dbdir.init(os.path.join(root, "testdb"))
    old = os.environ.get("BALSAM_DB_PATH")
    os.environ["BALSAM_DB_PATH"] = path
    yield path
    if old is None:
        os.environ.pop("BALSAM_DB_PATH", None)
    else:
        os.environ["BALSAM_DB_PATH"] = old
    from balsam.db.django_setup import use_database

    try:
        from django.db import connections

        connections.close_all()
    except Exception:  # noqa: BLE001 - Django may never have been configured
        pass
    use_database(None)
    cluster.stop(path)
    shutil.rmtree(root, ignore_errors=True)


def truncate_all(db_path: str) -> None:
    from balsam.db.connect import connect

    conn = connect(db_path, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
    finally:
        conn.close()


@pytest.fixture
def db(balsam_db_path: str) -> str:
    """An empty Balsam DB (all tables truncated); returns its path."""
    truncate_all(balsam_db_path)
    return balsam_db_path


@pytest.fixture
def cursor(db: str) -> Iterator:
    """A cursor on the test DB in autocommit mode, for checking what commands wrote: psycopg2's,
    or psycopg 3's under ``BALSAM_DB_DRIVER=psycopg`` (so SQL on bare cursors runs on both)."""
    from balsam.db.connect import connect, connection_params

    if os.environ.get("BALSAM_DB_DRIVER") == "psycopg":
        import psycopg

        conn = psycopg.connect(**connection_params(db), autocommit=True,
                               cursor_factory=psycopg.ClientCursor)
    else:
        conn = connect(db, autocommit=True)
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def run_balsam(*args: str, input: Optional[str] = None, env: Optional[dict] = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real ``balsam`` command (``python -m balsam``) in a subprocess."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    argv: list[str] = [sys.executable, "-m", "balsam", *args]
    return subprocess.run(argv, input=input, capture_output=True, text=True, env=full_env,
                          timeout=timeout)


@pytest.fixture
def scripts() -> str:
    """A directory for the scripts a test's tasks run (every account can read them); a test
    module may define its own."""
    return make_public_tmpdir("balsam-scripts-")


@pytest.fixture
def balsam_cli(db: str):
    """Run ``balsam ARGS`` in a subprocess against the empty test DB."""
    return run_balsam


@pytest.fixture(scope="module")
def restart_db(test_home: str) -> Iterator[str]:
    """A DB of the test module's own, for tests that stop and restart its server."""
    from balsam.db import cluster, dbdir

    root = make_public_tmpdir("balsam-restart-")
    path = dbdir.init(os.path.join(root, "db"))
    yield path
    cluster.stop(path)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fifos() -> Iterator[list[str]]:
    """FIFOs a test makes (it appends their paths); any writer still blocked in open() at the
    end is let go (a non-blocking reader opens and closes each)."""
    made: list[str] = []
    yield made
    for path in made:
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass


def pytest_sessionstart(session: pytest.Session) -> None:
    from shm_watch import hydra_files

    session.config.stash[HYDRA_BEFORE] = hydra_files()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove the Hydra topology files the run's own SIGKILLs of ``mpiexec`` left in /tmp (once,
    in the controlling process: xdist's workers have ``workerinput``)."""
    from shm_watch import remove_unheld_hydra

    before = session.config.stash.get(HYDRA_BEFORE, None)
    if before is not None and not hasattr(session.config, "workerinput"):
        remove_unheld_hydra(before)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed test that started launchers (``launcher_procs.launchers``) gets a report
    section with each one's output, log tails and process tree, and the database's sessions
    and unfinished jobs (read now: the ``db`` fixture is torn down after this report)."""
    outcome = yield
    report = outcome.get_result()
    support = sys.modules.get("launcher_procs")
    if support is None:
        return
    if call.when == "setup":
        support.STARTED.clear()
    elif report.failed and support.STARTED:
        report.sections.append(("launchers", support.failure_report()))
