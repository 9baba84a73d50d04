"""The per-DB PostgreSQL cluster: create, start, stop, inspect.

Every external program runs from an argv list with a timeout (:func:`pgaccount.run_as`). The
server listens on TCP with scram-sha-256 password authentication only; ``trust`` is never
configured. Start and stop take an exclusive lock on ``<db>/.server.lock`` so that many batch
jobs activating the same DB at once start one server, not many.
"""
from __future__ import annotations

import datetime
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Optional

from balsam.db import credentials, dbsettings, pgaccount, serverinfo
from balsam.db.connect import local_hostnames, try_connect
from balsam.errors import ServerError

DATA_DIR = "balsamdb"
SERVER_LOG = os.path.join("log", "server.log")
LOCK_FILE = ".server.lock"
LOCK_WAIT_SECONDS = 90
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 60
PORT_ATTEMPTS = 5

PG_HBA = """\
# Written by Balsam: password authentication (scram-sha-256) only; trust is never used.
# Compute nodes connect over TCP, so every address is allowed -- with a password.
local   all  all                scram-sha-256
host    all  all  0.0.0.0/0     scram-sha-256
host    all  all  ::/0          scram-sha-256
"""

TUNING = """\
# Written by Balsam for a workflow database: many short transactions from many launchers.
listen_addresses = '{listen}'
unix_socket_directories = ''           # TCP only: socket paths break on long DB paths
max_connections = {max_connections}
superuser_reserved_connections = 5
shared_buffers = {shared_buffers}
work_mem = 16MB
maintenance_work_mem = 256MB
max_wal_size = 4GB
checkpoint_timeout = 15min
password_encryption = 'scram-sha-256'
timezone = 'UTC'
# A client that dies inside a transaction must not hold job rows forever.
idle_in_transaction_session_timeout = '10min'
tcp_keepalives_idle = 60
tcp_keepalives_interval = 10
tcp_keepalives_count = 6
# Log problems only: per-statement logging grows without bound under this workload.
logging_collector = off
log_min_messages = warning
log_min_error_statement = error
log_min_duration_statement = -1
log_statement = 'none'
log_connections = off
log_disconnections = off
log_checkpoints = off
log_line_prefix = '%m [%p] %q%u@%d '
"""

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class Status:
    """What ``balsam server --status`` reports."""

    running: bool
    host: str = ""
    port: int = 0
    pid: int = 0
    detail: str = ""


def data_dir(db_path: str) -> str:
    return os.path.join(db_path, DATA_DIR)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return True
    return False


@contextmanager
def server_lock(db_path: str) -> Iterator[None]:
    """Exclusive lock on the DB's server state, waited for at most LOCK_WAIT_SECONDS."""
    fd = os.open(os.path.join(db_path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ServerError(f"another process has held {LOCK_FILE} in {db_path} for "
                                      f"{LOCK_WAIT_SECONDS} s; is a `balsam server` command hanging?")
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def _postmaster_pid(db_path: str) -> int:
    try:
        with open(os.path.join(data_dir(db_path), "postmaster.pid")) as fh:
            return int(fh.readline().strip() or 0)
    except (OSError, ValueError):
        return 0


def _is_postgres(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip().startswith("postgres")
    except OSError:
        return False


def _require_owner(info: dict, action: str) -> None:
    owner_uid = info.get("owner_uid")
    if os.getuid() not in (0, owner_uid):
        raise ServerError(f"only the DB owner ({info.get('owner', owner_uid)}) can {action} this server")


def status(db_path: str) -> Status:
    """Is the server of ``db_path`` running, and where? Never blocks for long."""
    info = serverinfo.read(db_path)
    host, port = info.get("host") or "", int(info.get("port") or 0)
    if host and host not in local_hostnames():
        problem = try_connect(db_path)
        return Status(problem is None, host, port, int(info.get("pid") or 0),
                      problem or f"running on {host}")
    pid = _postmaster_pid(db_path)
    if _is_postgres(pid):
        return Status(True, host or socket.gethostname(), port, pid)
    detail = "stale postmaster.pid (server crashed?)" if pid else ""
    return Status(False, host, port, pid, detail)


def _remove_stale_pidfile(db_path: str, say: Say) -> None:
    pid = _postmaster_pid(db_path)
    if pid and not _is_postgres(pid):
        os.unlink(os.path.join(data_dir(db_path), "postmaster.pid"))
        say(f"Removed a stale postmaster.pid (process {pid} is not running)")


def start(db_path: str, say: Say = _quiet) -> Status:
    """Start the server if it is not running; return where it listens."""
    info = serverinfo.read(db_path)
    _require_owner(info, "start")
    with server_lock(db_path):
        current = status(db_path)
        if current.running:
            if current.host in local_hostnames() and _listening_port(db_path) != info.get("port"):
                serverinfo.update(db_path, host=socket.gethostname(), port=_listening_port(db_path),
                                  pid=current.pid)
            say(f"Server already running on {current.host}:{current.port}")
            return status(db_path)
        _remove_stale_pidfile(db_path, say)
        account = pgaccount.account_by_uid(int(info["server_uid"]))
        settings = dbsettings.load(db_path)
        wanted = int(settings["server"]["port"] or 0)
        if wanted and port_in_use(wanted):
            raise ServerError(f"port {wanted} (settings.yml server.port) is already in use")
        error = ""
        for _ in range(1 if wanted else PORT_ATTEMPTS):
            port = wanted or free_port()
            ok, error = _pg_ctl_start(db_path, info["pg_bin"], account, port)
            if ok:
                serverinfo.update(
                    db_path, host=socket.gethostname(), port=port, pid=_postmaster_pid(db_path),
                    started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                )
                say(f"Started the Balsam DB server on {socket.gethostname()}:{port}")
                return status(db_path)
            if "already in use" not in error and "could not bind" not in error:
                break
        raise ServerError(f"the PostgreSQL server did not start: {error}")


def _listening_port(db_path: str) -> int:
    try:
        with open(os.path.join(data_dir(db_path), "postmaster.pid")) as fh:
            lines = fh.read().splitlines()
        return int(lines[3])
    except (OSError, ValueError, IndexError):
        return 0


def _pg_ctl_start(db_path: str, bin_dir: str, account: pgaccount.Account, port: int) -> tuple:
    log = os.path.join(db_path, SERVER_LOG)
    size_before = os.path.getsize(log) if os.path.exists(log) else 0
    argv = [os.path.join(bin_dir, "pg_ctl"), "start", "-D", data_dir(db_path), "-w",
            "-t", str(START_TIMEOUT_SECONDS), "-l", log, "-o", f"-p {port}"]
    code, output = pgaccount.run_as(account, argv, timeout=START_TIMEOUT_SECONDS + 15, cwd=db_path)
    if code == 0:
        return True, ""
    try:
        with open(log) as fh:
            fh.seek(size_before)
            logged = fh.read()
    except OSError:
        logged = ""
    lines = [ln for ln in (logged + "\n" + output).splitlines() if "FATAL" in ln or "rror" in ln]
    reason = (lines[-1] if lines else (output.strip().splitlines() or ["unknown error"])[-1]).strip()
    if "Address already in use" in logged:
        reason = f"port {port} is already in use ({reason})"
    return False, reason


def stop(db_path: str, say: Say = _quiet) -> bool:
    """Stop the server; False (with a message) if it was not running."""
    info = serverinfo.read(db_path)
    _require_owner(info, "stop")
    host = info.get("host") or ""
    if host and host not in local_hostnames():
        raise ServerError(f"the server runs on {host}: stop it from there")
    with server_lock(db_path):
        pid = _postmaster_pid(db_path)
        if not _is_postgres(pid):
            _remove_stale_pidfile(db_path, say)
            serverinfo.update(db_path, host="", port=None, pid=None)
            say("Server is not running")
            return False
        account = pgaccount.account_by_uid(int(info["server_uid"]))
        pg_ctl = os.path.join(info["pg_bin"], "pg_ctl")
        for mode in ("fast", "immediate"):
            code, output = pgaccount.run_as(
                account, [pg_ctl, "stop", "-D", data_dir(db_path), "-m", mode, "-w",
                          "-t", str(STOP_TIMEOUT_SECONDS)],
                timeout=STOP_TIMEOUT_SECONDS + 15, cwd=db_path)
            if code == 0 or not _is_postgres(pid):
                break
        else:
            raise ServerError(f"pg_ctl stop failed: {output.strip().splitlines()[-1:]}")
        serverinfo.update(db_path, host="", port=None, pid=None)
        say("Stopped the Balsam DB server")
        return True


def initialize(db_path: str, pg_bin: Optional[str] = None, say: Say = _quiet) -> dict:
    """Create the cluster under ``<db>/balsamdb`` and write server-info; returns server-info.

    The owner's superuser password is generated here and stored in ``<db>/.auth``.
    """
    account = pgaccount.server_account(say)
    bin_dir = pgaccount.usable_bin_dir(pgaccount.find_bin_dir(pg_bin), account, say)
    pgaccount.check_reachable(account, bin_dir, db_path)
    role = credentials.login_name()
    password = credentials.generate_password()
    datadir = data_dir(db_path)
    os.makedirs(os.path.join(db_path, "log"), exist_ok=True)
    log = os.path.join(db_path, SERVER_LOG)
    open(log, "a").close()
    os.mkdir(datadir, 0o700)
    pwfile = os.path.join(db_path, ".initdb-pw")
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    pgaccount.chown_tree([datadir, pwfile, log], account)
    try:
        code, output = pgaccount.run_as(account, [
            os.path.join(bin_dir, "initdb"), "-D", datadir, "-U", role, f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8",
            "--locale=C",
        ], timeout=300, cwd=db_path)
    finally:
        os.unlink(pwfile)
    if code != 0:
        raise ServerError(f"initdb failed: {output.strip().splitlines()[-1] if output.strip() else code}")
    _write_config(db_path, account)
    credentials.write_db_credential(db_path, role, password)
    me = pgaccount.current_account()
    info = {
        "host": "", "port": None, "pid": None, "database": serverinfo.DATABASE_NAME,
        "owner": me.name, "owner_uid": me.uid, "superuser": role,
        "server_account": account.name, "server_uid": account.uid,
        "pg_bin": bin_dir, "pg_version": pgaccount.server_version(bin_dir),
    }
    serverinfo.write(db_path, info)
    return info


def _write_config(db_path: str, account: pgaccount.Account) -> None:
    srv = dbsettings.load(db_path)["server"]
    datadir = data_dir(db_path)
    with open(os.path.join(datadir, "pg_hba.conf"), "w") as fh:
        fh.write(PG_HBA)
    with open(os.path.join(datadir, "balsam.conf"), "w") as fh:
        fh.write(TUNING.format(listen=srv["listen_addresses"], max_connections=srv["max_connections"],
                               shared_buffers=srv["shared_buffers"]))
    with open(os.path.join(datadir, "postgresql.conf"), "a") as fh:
        fh.write("\n# Balsam's settings\ninclude 'balsam.conf'\n")
    pgaccount.chown_tree([os.path.join(datadir, f) for f in ("pg_hba.conf", "balsam.conf")], account)


def create_database(db_path: str) -> None:
    """Create the ``balsam`` database in a freshly started cluster (no-op if it exists)."""
    import psycopg2

    from balsam.db.connect import connection_params

    params = connection_params(db_path, "balsam-init")
    params["dbname"] = "postgres"
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [serverinfo.DATABASE_NAME])
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{serverinfo.DATABASE_NAME}"')
    finally:
        conn.close()
