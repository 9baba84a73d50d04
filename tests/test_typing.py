"""The type checker's verdict is part of the suite (STYLE.md: type hints on every function, mypy
clean; issue 17: typed edges).

``mypy`` runs with the project's configuration (``pyproject.toml``: ``strict = true``, Django's
modules and the migrations relaxed there, with the reason) on the packages listed in
:data:`STRICT_PACKAGES`, plus a small module checking that the DB-API protocols of
:mod:`balsam.db.dbapi` describe the cursors and connections Balsam really gets, of both drivers.
The cache lives in the virtual environment (else the temporary directory), so a second run takes
under a second.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

STRICT_PACKAGES = ["balsam"]
"""What ``mypy --strict`` passes on: the whole package (every subpackage, the top-level modules,
and any module added later; only the overrides in ``pyproject.toml`` relax it)."""

DRIVER_CHECKS = '''
from psycopg import Connection as Pg3Connection, Cursor as Pg3Cursor
from psycopg.rows import TupleRow
from psycopg2.extensions import connection as Pg2Connection, cursor as Pg2Cursor

from balsam.db.dbapi import Connection, Cursor, ManagedCursor, PlainCursor
from balsam.db.database import _CountingCursor


def psycopg3_cursor(cursor: Pg3Cursor[TupleRow]) -> ManagedCursor:
    return cursor


def psycopg3_connection(conn: Pg3Connection[TupleRow]) -> Connection:
    return conn


def psycopg2_cursor(cursor: Pg2Cursor) -> ManagedCursor:
    return cursor


def psycopg2_connection(conn: Pg2Connection) -> Connection:
    return conn


def psycopg2_plain_cursor(cursor: Pg2Cursor) -> PlainCursor:
    return cursor


def counting_cursor(cursor: _CountingCursor) -> Cursor:
    return cursor
'''
"""Assignments mypy accepts only if psycopg 3's and psycopg2's classes (typed by psycopg 3 itself
and by types-psycopg2, a test dependency) and the launchers' counting cursor have every member of
the protocols with compatible signatures."""


def _cache_dir() -> Path:
    if sys.prefix != sys.base_prefix and os.access(sys.prefix, os.W_OK):
        return Path(sys.prefix) / ".mypy_cache"
    return Path(tempfile.gettempdir()) / f"balsam-mypy-cache-{os.getuid()}"


@pytest.mark.slow  # 5-30 s with an empty cache (machine load), under 1 s after
def test_mypy_strict_passes_on_the_typed_packages(tmp_path):
    checks = tmp_path / "dbapi_checks.py"
    checks.write_text(textwrap.dedent(DRIVER_CHECKS))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(_cache_dir()), *STRICT_PACKAGES,
         str(checks)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout
