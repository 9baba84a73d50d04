"""Helpers for launcher tests: settings overrides, jobs and apps without Django, what a job's
rows say, polling with a deadline, process checks and worker channels (tests only). The
launcher subprocesses themselves are in :mod:`launcher_procs`."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, Optional

import pytest
import yaml

from balsam.core import bulk, schema
from balsam.launcher import libc_spawn
from balsam.platform.process import start_time
from balsam.platform.procgroup import signal_group


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


def write_script(directory: str, name: str, text: str) -> str:
    """Write an executable script (a task's program) and return its path."""
    path = os.path.join(directory, name)
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o755)
    return path


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


def process_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (absent, or a zombie awaiting its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM ``proc`` if it still runs, then SIGKILL if it does not exit in 20 s (teardown)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def kill_group_of(pid: int, started: Optional[int]) -> None:
    """SIGKILL the process group of ``pid`` (cleanup of orphaned tasks) if ``pid`` still names
    the process that started at ``started`` (its :func:`start_time`, taken while it was known
    to run) and that group is not this process's own. A process that ended is left alone: its
    pid may name another test's process by now (pids wrap within minutes in a suite)."""
    if started is None or start_time(pid) != started:
        return
    try:
        pgid = os.getpgid(pid)
        if pgid != os.getpgrp():
            signal_group(pgid, signal.SIGKILL)  # (and the files a killed mpiexec leaves)
    except (ProcessLookupError, PermissionError):
        pass


SLOW_APPEND = """#!/bin/sh
sleep 0.7
echo "$BALSAM_JOB_ID" >> "$MARKERS/$BALSAM_JOB_ID"
"""
"""A task that runs long enough to be interrupted, then appends its id to its marker file."""


class Inbox:
    """A worker channel: orders put in by the test, reports collected."""

    def __init__(self) -> None:
        self.orders: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.reports.append(message)

    def receive(self) -> Optional[dict[str, Any]]:
        return self.orders.pop(0) if self.orders else None

    def collected(self, key: str) -> list[Any]:
        return [item for r in self.reports for item in r.get(key, ())]

    def flagged(self, key: str) -> bool:
        return any(r.get(key) for r in self.reports)


def serve(worker: Any, inbox: Inbox, until: Callable[[], Any], timeout: float = 60.0) -> None:
    """Run an in-process serial ``worker`` (its orders and reports through ``inbox``) until
    ``until()`` is true; fail (with the reports so far) after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < end, inbox.reports
        if not worker.step():
            worker.wait(1)


@pytest.fixture(params=["glibc", "popen"])
def spawn_method(request: Any, monkeypatch: Any) -> str:
    """Run a test with tasks started by glibc's posix_spawn (skipped where it is missing) and
    by the Popen fallback (:mod:`balsam.launcher.libc_spawn`)."""
    if request.param == "glibc":
        if libc_spawn._libc() is None:
            pytest.skip("no glibc posix_spawn_file_actions_addchdir_np here")
    else:
        monkeypatch.setattr(libc_spawn, "_loaded", [None])  # as where the function is missing
    return str(request.param)
