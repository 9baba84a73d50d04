"""Launcher subprocesses for tests: :func:`launchers` starts ``python -m balsam launcher ...``
processes that are always stopped at the end of the ``with`` block.

A launcher that does not exit in :meth:`Launcher.wait`'s time fails the test with what it was
doing (:meth:`Launcher.diagnosis`: its output, the tail of its log file and of its ensemble's
MPI output, its process tree, the sessions and unfinished jobs of the database); when a test
that started launchers fails in any other way, ``tests/conftest.py`` adds the same for every
launcher it started (:func:`failure_report`)."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable, Optional

from launcher_support import terminate
from shm_watch import ShmWatch

from balsam.core import schema

TAIL_LINES = 60
"""Lines of each log shown when a launcher test fails."""


class LauncherTimeout(AssertionError):
    """A launcher did not exit within the time a test gave it (the message says what it did)."""


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text`` (with a note of how many were left out)."""
    all_lines = text.splitlines()
    if len(all_lines) <= lines:
        return text.rstrip("\n")
    return f"[... {len(all_lines) - lines} line(s) before]\n" + "\n".join(all_lines[-lines:])


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except OSError as exc:
        return f"(cannot read: {exc})"


class Launcher:
    """A ``python -m balsam launcher ...`` subprocess with its output in temporary files
    (started by ``prefix``, e.g. ``mpiexec -n 1``, when given)."""

    def __init__(self, *args: str, env: Optional[dict[str, str]] = None,
                 prefix: tuple[str, ...] = ()) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.args = args
        self.db_path = full_env.get("BALSAM_DB_PATH", "")
        self.out = tempfile.TemporaryFile(mode="w+")
        self.err = tempfile.TemporaryFile(mode="w+")
        argv = [*prefix, sys.executable, "-m", "balsam", "launcher", *args]
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self.out, stderr=self.err,
                                     stdin=subprocess.DEVNULL, text=True)
        self.started = time.monotonic()
        self._final_output: Optional[tuple[str, str]] = None
        self.timed_out = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        """The exit status; :class:`LauncherTimeout` (with :meth:`diagnosis`) if the launcher
        is still running after ``timeout`` seconds (it is left running: teardown stops it)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            raise LauncherTimeout(
                f"launcher {self.describe()} did not exit within {timeout:g} s\n"
                + self.diagnosis()) from None

    def describe(self) -> str:
        status = self.proc.poll()
        state = "running" if status is None else f"exit status {status}"
        return (f"pid {self.pid} `balsam launcher {' '.join(self.args)}` ({state}, started "
                f"{time.monotonic() - self.started:.1f} s ago)")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def output(self) -> tuple[str, str]:
        """(stdout, stderr) so far (after :meth:`stop`: all of it)."""
        if self._final_output is not None:
            return self._final_output
        self.out.seek(0)
        self.err.seek(0)
        return self.out.read(), self.err.read()

    def log_path(self) -> str:
        """Its log file (named on its first stdout line; found by pid before that), or ""."""
        out = self.output()[0]
        if ", log " in out:
            return out.split(", log ", 1)[1].splitlines()[0].strip()
        found = glob.glob(os.path.join(self.db_path, "log", f"launcher_*_{self.pid}.log"))
        return found[0] if found else ""

    def log(self) -> str:
        """The text of its log file so far ("" while it has named none)."""
        path = self.log_path()
        return _read(path) if path else ""

    def session_id(self) -> Optional[int]:
        out = self.output()[0]
        if ", session " not in out:
            return None
        word = out.split(", session ", 1)[1].split(",", 1)[0].strip()
        return int(word) if word.isdigit() else None

    def diagnosis(self, with_database: bool = True) -> str:
        """What the launcher did: its stdout/stderr, the tails of its log file and of its
        serial ensemble's MPI output, its live process tree, and (``with_database``) the
        sessions and unfinished jobs of its database. Never raises."""
        parts = [f"=== launcher {self.describe()}"]
        try:
            out, err = self.output()
            parts += [f"--- stdout:\n{tail(out)}", f"--- stderr:\n{tail(err)}"]
            log = self.log_path()
            parts.append(f"--- log {log}:\n{tail(_read(log))}" if log else "--- no log file")
            names = [f"serial_pid{self.pid}.out"]
            session = self.session_id()
            if session is not None:
                names.append(f"serial_{session}.out")
            for name in names:
                path = os.path.join(self.db_path, "log", name)
                if os.path.exists(path):
                    parts.append(f"--- ensemble output {path}:\n{tail(_read(path))}")
            if self.proc.poll() is None:
                parts.append("--- process tree:\n" + process_tree(self.pid))
            if with_database and self.db_path:
                parts.append(database_summary(self.db_path))
        except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure
            parts.append(f"(diagnosis incomplete: {exc!r})")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in 20 s (test teardown); its output is
        kept for :meth:`output` and :meth:`diagnosis`."""
        terminate(self.proc)
        self._final_output = self.output()
        self.out.close()
        self.err.close()


def process_tree(pid: int) -> str:
    """One line per process of ``pid``'s tree: pid, state (R, S, T stopped, Z...), command."""
    children: dict[int, list[int]] = {}
    stat: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        stat[int(entry)] = (int(fields[1]), fields[0])
        children.setdefault(int(fields[1]), []).append(int(entry))
    lines: list[str] = []

    def walk(p: int, depth: int) -> None:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        state = stat.get(p, (0, "?"))[1]
        lines.append(f"{'  ' * depth}{p} {state} {cmd[:200]}")
        for child in sorted(children.get(p, [])):
            walk(child, depth + 1)

    walk(pid, 0)
    return "\n".join(lines)


def database_summary(db_path: str, max_jobs: int = 40) -> str:
    """The sessions, the job counts per state, the unfinished jobs (with their last events)
    and the server's connections (what each waits on) of the database at ``db_path``, as text
    (never raises)."""
    from balsam.db.connect import connect

    try:
        conn = connect(db_path, "balsam-test-diagnosis", autocommit=True, connect_timeout=10)
    except Exception as exc:  # noqa: BLE001
        return f"--- database: cannot connect ({exc})"
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = 10000")
            cur.execute(f"SELECT id, pid, job_mode, EXTRACT(EPOCH FROM now() - heartbeat)::int, "
                        f"lease_seconds, ended_at IS NOT NULL, end_reason FROM "
                        f"{schema.SESSION_TABLE} ORDER BY id")
            lines = ["--- database sessions (id, pid, mode, heartbeat age s, lease, ended, "
                     "reason):"] + [f"  {row}" for row in cur.fetchall()]
            cur.execute(f"SELECT state, count(*) FROM {schema.JOB_TABLE} GROUP BY state "
                        "ORDER BY state")
            lines.append(f"--- job states: {dict(cur.fetchall())}")
            cur.execute(f"SELECT job_id, name, state, session_id FROM {schema.JOB_TABLE} "
                        "WHERE state <> 'JOB_FINISHED' ORDER BY name LIMIT %s", [max_jobs])
            for job_id, name, state, session in cur.fetchall():
                cur.execute(f"SELECT to_char(timestamp, 'HH24:MI:SS.MS'), from_state, "
                            f"to_state, left(message, 120) FROM {schema.EVENT_TABLE} "
                            "WHERE job_id = %s ORDER BY timestamp DESC, id DESC LIMIT 4",
                            [job_id])
                history = "; ".join(f"{t} {a}->{b} {m!r}" for t, a, b, m in
                                    reversed(cur.fetchall()))
                lines.append(f"  {name} {state} held by {session}: {history}")
            # A launcher waiting on a lock or a transaction left open shows here.
            cur.execute("SELECT pid, application_name, state, wait_event_type, wait_event, "
                        "EXTRACT(EPOCH FROM now() - xact_start)::int, left(query, 100) "
                        "FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid() ORDER BY pid")
            lines.append("--- server connections (pid, application, state, wait, "
                         "transaction age s, last query):")
            lines += [f"  {row}" for row in cur.fetchall()]
        return "\n".join(lines)
    except Exception as exc:  # noqa: BLE001
        return f"--- database: query failed ({exc})"
    finally:
        conn.close()


STARTED: list[Launcher] = []
"""The launchers started by :func:`launchers` in the current test (``tests/conftest.py``
reports them when it fails and forgets them at the next test)."""


def failure_report() -> str:
    """The diagnosis of every launcher the current test started ("" if none)."""
    parts = []
    for launcher in STARTED:
        if launcher.timed_out:
            parts.append(f"=== launcher {launcher.describe()}: diagnosed in the failure above")
        else:
            parts.append(launcher.diagnosis(with_database=False))
    if parts and STARTED[0].db_path:
        parts.append(database_summary(STARTED[0].db_path))
    return "\n".join(parts)


@contextmanager
def launchers() -> Iterator[Callable[..., Launcher]]:
    """``start(*args, env=None)`` starts launchers that are all stopped at exit; then no
    MPICH shared-memory file their ranks mapped may be left (:mod:`shm_watch`), and the Hydra
    topology files their proxies held that are still there are removed."""
    started: list[Launcher] = []

    def start(*args: str, env: Optional[dict[str, str]] = None,
              prefix: tuple[str, ...] = ()) -> Launcher:
        launcher = Launcher(*args, env=env, prefix=prefix)
        started.append(launcher)
        STARTED.append(launcher)
        return launcher

    # (only launchers not reaped yet: a reaped one's pid may name another process by now)
    watch = ShmWatch(lambda: [ln.pid for ln in list(started) if ln.proc.returncode is None])
    try:
        yield start
    finally:
        for launcher in started:
            launcher.stop()
        watch.stop()
        watch.remove_hydra()  # what the test's own SIGKILL of an mpiexec left in /tmp
    left = watch.left()  # (not after a failure: that one is reported)
    assert left == [], f"MPICH shared-memory files the launchers' ranks left: {left}"

