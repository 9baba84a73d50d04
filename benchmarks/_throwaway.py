"""A throwaway Balsam DB for a benchmark: created with the project's own ``dbdir.init``.

``HOME`` is pointed at a temporary directory first, so the user's DB index
(``~/.balsam/databases.json``) and saved credentials are never touched. Directories are 0755
so the unprivileged server account can reach them when the benchmark runs as root.
"""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _public_tmpdir(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(path, 0o755)
    return path


@contextmanager
def throwaway_db() -> Iterator[str]:
    """Yield the path of a fresh Balsam DB (server running, ``BALSAM_DB_PATH`` set); stop and
    remove it afterwards, whatever happens."""
    from balsam.db import cluster, dbdir

    home = _public_tmpdir("balsam-bench-home-")
    root = _public_tmpdir("balsam-bench-")
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = home
    path = os.path.join(root, "benchdb")
    try:
        t0 = time.perf_counter()
        dbdir.init(path)
        os.environ["BALSAM_DB_PATH"] = path
        print(f"# throwaway DB {path} created in {time.perf_counter() - t0:.1f} s")
        yield path
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: BLE001 - Django may never have been configured
            pass
        try:
            cluster.stop(path)
        finally:
            if old_home is not None:
                os.environ["HOME"] = old_home
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)


def machine_line() -> str:
    """One line describing where the numbers were measured."""
    load = os.getloadavg()
    return (f"# {time.strftime('%Y-%m-%d %H:%M')}  {platform.python_implementation()} "
            f"{platform.python_version()}  {os.cpu_count()} cores  "
            f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def finished_run_interval(conn: Any, count: int) -> tuple[float, float]:
    """(first RUNNING, last RUN_DONE) epoch times of a benchmark run; exits if any of the
    ``count`` tasks did not record RUN_DONE or its job is not JOB_FINISHED."""
    from balsam.core import schema

    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FILTER (WHERE to_state = 'RUN_DONE'), "
                    "extract(epoch FROM min(timestamp) FILTER (WHERE to_state = 'RUNNING')), "
                    "extract(epoch FROM max(timestamp) FILTER (WHERE to_state = 'RUN_DONE')) "
                    f"FROM {schema.EVENT_TABLE}")
        done, first_running, last_done = cur.fetchone()
        cur.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE state <> 'JOB_FINISHED'")
        (unfinished,) = cur.fetchone()
    conn.commit()
    if done != count or unfinished:
        raise SystemExit(f"only {done} of {count} tasks recorded RUN_DONE ({unfinished} jobs "
                         "not JOB_FINISHED)")
    return float(first_running), float(last_done)
