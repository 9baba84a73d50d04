"""One service per database: the advisory lock, the PID file, start (detached), stop, status.

**The lock.** A running service holds the PostgreSQL session-level advisory lock
:data:`LOCK_KEY` on a connection of its own for its whole life. PostgreSQL releases it when
that connection ends -- a clean exit, ``kill -9``, a lost node -- so a dead service never
blocks the next one. The connection's ``application_name`` names the holder
(``balsam-service pid=N host=H``), so a refused service can say who runs.

**The PID file** ``<db>/service.pid`` (JSON: pid, host, started, log, and after every cycle
``last_cycle`` and its ``counts``) is written only by the lock's holder, atomically. It may be
stale after a crash: a service that got the lock replaces it; ``--status`` and ``--stop``
believe it only when its process is alive (checked on this host) or the lock is held.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Optional

from balsam.db.connect import connect
from balsam.db.dbapi import Connection, Cursor
from balsam.errors import BalsamError, DatabaseUnavailable
from balsam.platform.process import process_alive, start_time

LOCK_KEY = 0x42414C53414D5356
"""The service's advisory lock key (b"BALSAMSV" as a 64-bit integer), the same in every DB."""
PID_FILE = "service.pid"
STOP_WAIT_SECONDS = 30.0
"""How long ``--stop`` waits for the service to exit after SIGTERM."""
START_WAIT_SECONDS = 20.0
"""How long a detaching ``balsam service`` waits for the service to hold its lock."""
START_OUTPUT = os.path.join("log", "service-start.out")
"""Where a detached service's own stdout/stderr go (messages before its log exists)."""


class AlreadyRunning(BalsamError):
    """Another service holds this database's lock (message names its pid and host)."""


def pid_path(db_path: str) -> str:
    return os.path.join(db_path, PID_FILE)


def read_pid_file(db_path: str) -> Optional[dict[str, Any]]:
    """The PID file's record, or None if absent or unreadable."""
    try:
        with open(pid_path(db_path)) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def write_pid_file(db_path: str, record: dict[str, Any]) -> None:
    """Replace the PID file atomically with ``record``."""
    path = pid_path(db_path)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=1, default=str)
    os.replace(tmp, path)


def remove_pid_file(db_path: str, pid: int) -> None:
    """Remove the PID file if it is ``pid``'s."""
    rec = read_pid_file(db_path)
    if rec is not None and rec["pid"] == pid:
        try:
            os.unlink(pid_path(db_path))
        except FileNotFoundError:
            pass


def holder_name() -> str:
    return f"balsam-service pid={os.getpid()} host={socket.gethostname()}"


def _holder(cursor: Cursor) -> Optional[str]:
    """``application_name`` of the session holding the lock ("" if hidden), None if free."""
    cursor.execute("""
        SELECT COALESCE(a.application_name, '') FROM pg_locks l
        LEFT JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.classid::bigint = %s AND l.objid::bigint = %s""",
                   [LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF])
    row = cursor.fetchone()
    return None if row is None else str(row[0])


def describe_holder(db_path: str, app_name: Optional[str]) -> str:
    """``pid N on host H`` from the holder's application name, else from the PID file."""
    words = dict(w.split("=", 1) for w in (app_name or "").split() if "=" in w)
    if "pid" not in words:
        rec = read_pid_file(db_path) or {}
        words = {"pid": str(rec.get("pid", "?")), "host": str(rec.get("host", "?"))}
    return f"pid {words.get('pid', '?')} on host {words.get('host', '?')}"


def acquire_lock(db_path: str) -> Any:
    """A new autocommit connection holding the service lock. Raises :class:`AlreadyRunning`
    if another session holds it, :class:`DatabaseUnavailable` if the server is unreachable."""
    conn = connect(db_path, holder_name(), autocommit=True, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])
            if cur.fetchone()[0]:
                return conn
            holder = _holder(cur)
    except Exception:
        conn.close()
        raise
    conn.close()
    raise AlreadyRunning(f"another service ({describe_holder(db_path, holder)}) is running on "
                         "this database")


def lock_alive(conn: Connection) -> bool:
    """True if ``conn`` (from :func:`acquire_lock`) still answers, so it still holds the lock."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure: the connection (and the lock) is gone
        return False


def lock_holder(db_path: str) -> Optional[str]:
    """Who holds the lock now (see :func:`_holder`); DatabaseUnavailable if unreachable."""
    conn = connect(db_path, "balsam-service-status", autocommit=True, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            return _holder(cur)
    finally:
        conn.close()


def status(db_path: str) -> tuple[bool, Optional[dict[str, Any]], str]:
    """(running, PID-file record or None, a note on how that was decided)."""
    rec = read_pid_file(db_path)
    try:
        holder = lock_holder(db_path)
    except DatabaseUnavailable:
        if rec is None:
            return False, None, "database unreachable; no PID file"
        if rec.get("host") == socket.gethostname():  # that pid, if it is still that process
            same = rec.get("proc_start") in (None, start_time(rec["pid"]))
            return same and process_alive(rec["pid"]), rec, \
                "database unreachable; checked the process"
        return False, rec, "database unreachable; cannot check another host"
    if holder is None:
        return False, rec, "stale PID file" if rec else ""
    return True, rec, ""


def stop(db_path: str, wait: float = STOP_WAIT_SECONDS) -> tuple[bool, str]:
    """SIGTERM the service and wait for it to exit: (stopped now, message)."""
    running, rec, note = status(db_path)
    if not running or rec is None:
        return False, "no service is running on this database" + (f" ({note})" if note else "")
    pid, host = rec["pid"], rec.get("host", "?")
    if host != socket.gethostname():
        raise BalsamError(f"the service runs on host {host} (pid {pid}): stop it there")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False, f"service pid {pid} had already exited"
    end = time.monotonic() + wait
    while process_alive(pid):
        if time.monotonic() > end:
            raise BalsamError(f"the service (pid {pid}) did not exit within {wait:g} s of "
                              "SIGTERM; see its log " + str(rec.get("log", "")))
        time.sleep(0.1)
    return True, f"stopped the service (pid {pid} on host {host})"


def start_detached(db_path: str, wait: float = START_WAIT_SECONDS) -> tuple[int, str, str]:
    """Start ``balsam service --foreground`` in a new session; (exit status, pid, message).

    Returns once the new service wrote its PID file (0) or exited (its status and output)."""
    out_path = os.path.join(db_path, START_OUTPUT)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    env = dict(os.environ, BALSAM_DB_PATH=db_path)
    with open(out_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "balsam", "service", "--foreground"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, close_fds=True)
    end = time.monotonic() + wait
    while time.monotonic() < end:
        code = proc.poll()
        rec = read_pid_file(db_path)
        if rec is not None and rec["pid"] == proc.pid and code is None:
            return 0, str(proc.pid), f"service started: pid {proc.pid}, log {rec.get('log')}"
        if code is not None:
            with open(out_path) as fh:
                text = fh.read().strip()
            return code or 1, str(proc.pid), text or f"the service exited with status {code}"
        time.sleep(0.05)
    return 1, str(proc.pid), (f"the service (pid {proc.pid}) did not report within {wait:g} s; "
                              f"see {out_path}")
