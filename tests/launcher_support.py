"""Helpers for launcher tests: settings overrides, jobs and apps without Django, launcher
subprocesses that are always cleaned up, and polling with a deadline (tests only)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, Optional

import yaml

from balsam.core import bulk, schema


@contextmanager
def settings(db_path: str, **values: Any) -> Iterator[None]:
    """Overlay ``values`` (``launcher`` is merged key by key) on the DB's settings.yml, and put
    the file back afterwards."""
    path = os.path.join(db_path, "settings.yml")
    with open(path) as fh:
        original = fh.read()
    data = yaml.safe_load(original) or {}
    launcher = dict(data.get("launcher") or {})
    launcher.update(values.pop("launcher", {}))
    data.update(values, launcher=launcher)
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh)
    try:
        yield
    finally:
        with open(path, "w") as fh:
            fh.write(original)


QUICK = {"heartbeat_seconds": 1, "idle_exit_seconds": 1, "idle_wait_seconds": 0.5,
         "walltime_margin_seconds": 2}
"""Launcher tunables that keep tests short."""


def add_app(cur: Any, name: str, executable: str, envscript: str = "") -> None:
    cur.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, preprocess, "
                "envscript, postprocess) VALUES (%s, '', %s, '', %s, '')",
                [name, executable, envscript])


def add_jobs(cur: Any, specs: list[dict[str, Any]]) -> list[str]:
    """Insert jobs (fields per dict; defaults: workflow ``wf``, state CREATED); their ids."""
    rows = [schema.new_job_row({"workflow": "wf", **spec}) for spec in specs]
    bulk.copy_jobs(cur, rows)
    return [str(r["job_id"]) for r in rows]


def states(cur: Any) -> dict[str, str]:
    cur.execute(f"SELECT name, state FROM {schema.JOB_TABLE}")
    return dict(cur.fetchall())


def events(cur: Any, job_id: str) -> list[tuple[Any, str, str, str]]:
    """(timestamp, from, to, message) of a job, oldest first."""
    cur.execute(f"SELECT timestamp, from_state, to_state, message FROM {schema.EVENT_TABLE} "
                "WHERE job_id = %s ORDER BY timestamp, id", [job_id])
    return cur.fetchall()


def job_row(cur: Any, job_id: str) -> dict[str, Any]:
    cur.execute(f"SELECT * FROM {schema.JOB_TABLE} WHERE job_id = %s", [job_id])
    names = [d[0] for d in cur.description]
    return dict(zip(names, cur.fetchone()))


def workdir(db_path: str, cur: Any, job_id: str) -> str:
    row = job_row(cur, job_id)
    return schema.working_directory(db_path, row["workflow"], row["name"], job_id,
                                    row["user_workdir"])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a true value (returned) or fail after ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Launcher:
    """A ``python -m balsam launcher ...`` subprocess with its output in temporary files."""

    def __init__(self, *args: str, env: Optional[dict[str, str]] = None) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.out = tempfile.TemporaryFile(mode="w+")
        self.err = tempfile.TemporaryFile(mode="w+")
        argv = [sys.executable, "-m", "balsam", "launcher", *args]
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self.out, stderr=self.err,
                                     stdin=subprocess.DEVNULL, text=True)
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def output(self) -> tuple[str, str]:
        self.out.seek(0)
        self.err.seek(0)
        return self.out.read(), self.err.read()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in 20 s (test teardown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.out.close()
        self.err.close()


@contextmanager
def launchers() -> Iterator[Callable[..., Launcher]]:
    """``start(*args, env=None)`` starts launchers that are all stopped at exit."""
    started: list[Launcher] = []

    def start(*args: str, env: Optional[dict[str, str]] = None) -> Launcher:
        launcher = Launcher(*args, env=env)
        started.append(launcher)
        return launcher

    try:
        yield start
    finally:
        for launcher in started:
            launcher.stop()


def process_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (absent, or a zombie awaiting its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def kill_group_of(pid: int) -> None:
    """SIGKILL the process group of ``pid`` if it still exists (cleanup of orphaned tasks)."""
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


SLOW_APPEND = """#!/bin/sh
sleep 0.7
echo "$BALSAM_JOB_ID" >> "$MARKERS/$BALSAM_JOB_ID"
"""
"""A task that runs long enough to be interrupted, then appends its id to its marker file."""
