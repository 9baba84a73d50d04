"""Helpers for the CLI tests of the job commands: a terminal runner, fast job fixtures, DB snapshots."""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
import uuid
from typing import Any, Optional

from conftest import make_public_tmpdir

from balsam.core import bulk, schema

ALL_TABLES = [schema.JOB_TABLE, schema.APP_TABLE, schema.DEP_TABLE, schema.EVENT_TABLE,
              schema.QLAUNCH_TABLE]


def run_tty(*args: str, answer: str = "", env: Optional[dict] = None,
            timeout: float = 60) -> tuple[int, str]:
    """Run ``balsam ARGS`` with a pseudo-terminal as stdin, stdout and stderr (as a user would);
    ``answer`` is typed in advance. Returns (exit status, everything the terminal showed)."""
    master, slave = os.openpty()
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "balsam", *args], stdin=slave, stdout=slave,
                            stderr=slave, env=full_env, close_fds=True)
    os.close(slave)
    if answer:
        os.write(master, answer.encode())
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave end is closed (the child exited)
                break
            if not data:
                break
            chunks.append(data)
        else:
            proc.kill()
            raise TimeoutError(f"balsam {' '.join(args)} did not finish in {timeout} s")
        proc.wait(timeout=10)
    finally:
        os.close(master)
    return proc.returncode, b"".join(chunks).decode().replace("\r\n", "\n")


def add_app(cursor: Any, name: str = "hello", executable: str = "echo", **fields: str) -> int:
    values = dict(schema.APP_DEFAULTS, name=name, executable=executable, **fields)
    cols = list(values)
    cursor.execute(f"INSERT INTO {schema.APP_TABLE} ({', '.join(cols)}) VALUES "
                   f"({', '.join(['%s'] * len(cols))}) RETURNING id", [values[c] for c in cols])
    return int(cursor.fetchone()[0])


def add_jobs(cursor: Any, count: int = 1, ids: Optional[list[str]] = None, **values: Any) -> list[str]:
    """Insert ``count`` jobs (names ``NAME0..`` if count > 1; ids from ``ids`` if given) with one
    COPY; returns their ids in creation order."""
    name = values.pop("name", "job")
    if ids:
        count = len(ids)
    rows = [schema.new_job_row(dict(values, name=name if count == 1 else f"{name}{i}"),
                               uuid.UUID(ids[i]) if ids else None)
            for i in range(count)]
    bulk.copy_jobs(cursor, rows)
    return [str(r["job_id"]) for r in rows]


def add_edge(cursor: Any, parent: str, child: str) -> None:
    cursor.execute(f"INSERT INTO {schema.DEP_TABLE} (parent_id, child_id) VALUES (%s, %s)",
                   [parent, child])


def job_row(cursor: Any, job_id: str) -> dict[str, Any]:
    cursor.execute(f"SELECT * FROM {schema.JOB_TABLE} WHERE job_id = %s", [job_id])
    names = [d[0] for d in cursor.description]
    row = cursor.fetchone()
    assert row is not None, f"job {job_id} not found"
    return dict(zip(names, row))


def jobs_by_name(cursor: Any) -> dict[str, dict[str, Any]]:
    cursor.execute(f"SELECT * FROM {schema.JOB_TABLE}")
    names = [d[0] for d in cursor.description]
    return {r["name"]: r for r in (dict(zip(names, row)) for row in cursor.fetchall())}


def events(cursor: Any, job_id: str) -> list[tuple[str, str, str]]:
    cursor.execute(f"SELECT from_state, to_state, message FROM {schema.EVENT_TABLE} "
                   "WHERE job_id = %s ORDER BY id", [job_id])
    return cursor.fetchall()


def snapshot(cursor: Any) -> dict[str, str]:
    """A fingerprint of every table's full contents, to prove a failed command wrote nothing."""
    result = {}
    for table in ALL_TABLES:
        cursor.execute(f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                       f"FROM {table} t")
        count, digest = cursor.fetchone()
        result[table] = f"{count}:{digest}"
    return result


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, nothing on stdout that looks like a traceback, one line on stderr."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


def dead_server_db(live_db_path: str) -> str:
    """A copy of a DB directory's server-info whose server port has nothing listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = make_public_tmpdir("balsam-dead-")
    path = os.path.join(root, "deaddb")
    os.makedirs(os.path.join(path, "balsamdb"))
    with open(os.path.join(live_db_path, "server-info")) as fh:
        info = json.load(fh)
    info["port"] = port
    with open(os.path.join(path, "server-info"), "w") as fh:
        json.dump(info, fh)
    return path
