"""Helpers for service tests: a ``balsam service --foreground`` subprocess that is always
stopped, reading its PID file and log, and cleaning up batch jobs of the local scheduler."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, Optional

from launcher_support import terminate, wait_for

from balsam.core import schema
from balsam.platform.process import start_time


class ServiceProcess:
    """A ``python -m balsam service --foreground`` subprocess (own session, output to a file)."""

    def __init__(self, db_path: str, env: Optional[dict[str, str]] = None) -> None:
        self.db_path = db_path
        full_env = {**os.environ, **(env or {}), "BALSAM_DB_PATH": db_path}
        self.out = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "balsam", "service", "--foreground"],
                                     env=full_env, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_started(self, timeout: float = 20) -> dict[str, Any]:
        """The PID file once this process wrote it (fails if the process exited first)."""
        def ready() -> Optional[dict[str, Any]]:
            if self.proc.poll() is not None:
                raise AssertionError(f"the service exited {self.proc.returncode}: {self.output()}")
            rec = pid_file(self.db_path)
            return rec if rec and rec["pid"] == self.pid else None
        return wait_for(ready, timeout, "the service to start", interval=0.05)

    def wait_cycles(self, n: int, timeout: float = 30) -> dict[str, Any]:
        """The PID file once this service completed ``n`` more cycles."""
        start = (pid_file(self.db_path) or {}).get("cycles", 0)
        return wait_for(lambda: (rec := pid_file(self.db_path)) and rec["pid"] == self.pid
                        and rec.get("cycles", 0) >= start + n and rec, timeout,
                        f"{n} service cycle(s)", interval=0.1)

    def output(self) -> str:
        self.out.seek(0)
        return self.out.read()

    def log(self) -> str:
        rec = pid_file(self.db_path)
        path = rec["log"] if rec and rec["pid"] == self.pid else latest_log(self.db_path)
        with open(path) as fh:
            return fh.read()

    def stop(self) -> None:
        terminate(self.proc)
        self.out.close()


def pid_file(db_path: str) -> Optional[dict[str, Any]]:
    try:
        with open(os.path.join(db_path, "service.pid")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def latest_log(db_path: str) -> str:
    return max(glob.glob(os.path.join(db_path, "log", "service_*.log")), key=os.path.getmtime)


def local_jobs(db_path: str) -> dict[str, dict[str, Any]]:
    """The local scheduler's job records in the DB's qsubmit/."""
    try:
        with open(os.path.join(db_path, "qsubmit", "local-jobs.json")) as fh:
            return json.load(fh)["jobs"]
    except FileNotFoundError:
        return {}


def kill_local_jobs(db_path: str) -> None:
    """SIGKILL the process groups of the local batch jobs that have not ended (test teardown).

    A job that ended (its exit file written, or seen gone) is skipped: its group id is a pid
    that may belong to another process group by now (ids wrap within minutes when a suite
    starts thousands of processes), and SIGKILL would hit another test's tasks or ensemble.
    So is one whose wrapper (the group's leader) is no longer the process the scheduler
    started (its recorded start time)."""
    for rec in local_jobs(db_path).values():
        if rec.get("ended_at") is not None or os.path.exists(rec.get("exit_file", "")):
            continue
        if rec.get("started") is None or start_time(rec["pid"]) != rec["started"]:
            continue
        try:
            os.killpg(rec["pid"], signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@contextmanager
def services(db_path: str) -> Iterator[Callable[..., ServiceProcess]]:
    """``start(env=None)`` starts services that are all stopped at exit (and the local batch
    jobs they submitted killed, the PID file removed)."""
    started: list[ServiceProcess] = []

    def start(env: Optional[dict[str, str]] = None) -> ServiceProcess:
        svc = ServiceProcess(db_path, env)
        started.append(svc)
        return svc

    try:
        yield start
    finally:
        for svc in started:
            svc.stop()
        kill_local_jobs(db_path)
        try:
            os.unlink(os.path.join(db_path, "service.pid"))
        except FileNotFoundError:
            pass


def launches(cur: Any) -> list[dict[str, Any]]:
    """The QueuedLaunch rows, oldest first."""
    cur.execute(f"SELECT * FROM {schema.QLAUNCH_TABLE} ORDER BY id")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]
