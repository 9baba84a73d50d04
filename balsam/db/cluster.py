"""The per-DB PostgreSQL server at run time: status, start, stop, reset, connect.

(:mod:`balsam.db.initdb` creates the cluster.) Every external program runs from an argv list
with a timeout (:func:`pgaccount.run_as`). Start, stop and reset take an exclusive lock on
``<db>/.server.lock`` so that many batch jobs activating the same DB at once start one server,
not many. Every failure mode -- started twice, already stopped, a stale ``postmaster.pid`` after a
crash, a port in use, a server recorded on another host -- ends in a one-line message, never a hang.
"""
from __future__ import annotations

import datetime
import fcntl
import os
import shlex
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

from balsam.db import dbsettings, pgaccount, postmaster, serverinfo
from balsam.db.connect import local_hostnames, try_connect
from balsam.errors import DatabaseUnavailable, ServerError

DATA_DIR = "balsamdb"
SERVER_LOG = os.path.join("log", "server.log")
LOCK_FILE = ".server.lock"
LOCK_WAIT_SECONDS = 90
START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 60
PORT_ATTEMPTS = 5
PROBE_TIMEOUT_SECONDS = 3.0   # a server that takes longer to accept a TCP connection is 'not answering'
SHMEM_WAIT_SECONDS = 15      # how long backends of a crashed server may take to exit

Say = Callable[[str], None]


def quiet(_: str) -> None:
    """A ``say`` that says nothing."""
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


def is_local(host: str) -> bool:
    """True if ``host`` (from server-info) is this machine, or empty (no server recorded)."""
    return not host or host in local_hostnames()


def port_answers(host: str, port: int, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """True if something accepts TCP connections on ``host:port`` (no credential needed)."""
    if not port:
        return False
    try:
        with socket.create_connection(("127.0.0.1" if is_local(host) else host, int(port)), timeout):
            return True
    except OSError:
        return False


def is_owner(info: dict[str, Any]) -> bool:
    """The DB owner (and root) may start, stop, reset the server and manage its users."""
    return os.getuid() in (0, info.get("owner_uid"))


def require_owner(info: dict[str, Any], action: str) -> None:
    if not is_owner(info):
        raise ServerError(f"only the DB owner ({info.get('owner', info.get('owner_uid'))}) can "
                          f"{action}; ask them")


def status(db_path: str) -> Status:
    """Is the server of ``db_path`` running, and where? Never blocks for long.

    Locally the postmaster.pid file decides; for a server on another host, or for a collaborator
    who may not read the data directory, whether its TCP port answers.
    """
    info = serverinfo.read(db_path)
    host, port = info.get("host") or "", int(info.get("port") or 0)
    if not is_local(host):
        if port_answers(host, port):
            return Status(True, host, port, int(info.get("pid") or 0))
        return Status(False, host, port, 0, f"server-info names {host}:{port}, which does not answer")
    try:
        found = postmaster.read(data_dir(db_path))
    except PermissionError:
        if port_answers(host, port):
            return Status(True, host, port, int(info.get("pid") or 0))
        return Status(False, host, port)
    if found and postmaster.is_postmaster(found.pid, data_dir(db_path)):
        return Status(True, socket.gethostname(), found.port or port, found.pid)
    detail = (f"stale postmaster.pid: process {found.pid} is not running (did the server crash?)"
              if found else "")
    return Status(False, host, port, 0, detail)


def _remove_stale_pidfile(db_path: str, say: Say) -> None:
    pid = postmaster.remove_if_stale(data_dir(db_path))
    if pid > 0:
        say(f"Removed a stale postmaster.pid (process {pid} is not running)")
    elif pid < 0:
        say("Removed a garbled postmaster.pid")


def _remote_not_answering(host: str, port: int) -> ServerError:
    return ServerError(f"server-info says the server runs on {host}:{port}, which does not answer; "
                       f"if no server runs there any more, `balsam server --reset` forgets it")


def start(db_path: str, say: Say = quiet) -> Status:
    """Start the server if it is not running; return where it listens (owner only)."""
    info = serverinfo.read(db_path)
    require_owner(info, "start the server")
    with server_lock(db_path):
        info = serverinfo.read(db_path)
        current = status(db_path)
        if not is_local(info.get("host") or ""):
            if not current.running:
                raise _remote_not_answering(current.host, current.port)
            say(f"Server already running on {current.host}:{current.port}")
            return current
        if current.running:
            if (info.get("host"), info.get("port"), info.get("pid")) != (current.host, current.port,
                                                                         current.pid):
                serverinfo.update(db_path, host=current.host, port=current.port, pid=current.pid)
            say(f"Server already running on {current.host}:{current.port}")
            return current
        _remove_stale_pidfile(db_path, say)
        return _start_locked(db_path, info, say)


SERVER_KEYS = ("listen_addresses", "max_connections", "shared_buffers")
"""``settings.yml`` ``server:`` keys applied as PostgreSQL options at every start (with ``port``):
command-line options win over ``balsam.conf``, which ``balsam init`` wrote once."""


def server_options(port: int, server: dict[str, Any]) -> str:
    """The postgres options (``pg_ctl -o``) for ``port`` and ``settings.yml``'s ``server:``
    values (:data:`SERVER_KEYS`). pg_ctl hands this string to ``/bin/sh``, so every word is
    quoted: a value such as ``*`` or ``a, b`` reaches postgres as one argument, never expanded."""
    words = ["-p", str(port)]
    for key in SERVER_KEYS:
        words += ["-c", f"{key}={server[key]}"]
    return " ".join(shlex.quote(w) for w in words)


def _start_locked(db_path: str, info: dict[str, Any], say: Say) -> Status:
    account = pgaccount.account_by_uid(int(info["server_uid"]))
    server = dbsettings.load(db_path)["server"]
    wanted = int(server["port"] or 0)
    if wanted and port_in_use(wanted):
        raise ServerError(f"port {wanted} (settings.yml server.port) is already in use: free it, or "
                          f"set server.port to 0 to pick a free port")
    attempts, deadline = 0, time.monotonic() + SHMEM_WAIT_SECONDS
    while True:
        port = wanted or free_port()
        ok, error = _pg_ctl_start(db_path, info["pg_bin"], account, port, server)
        if ok:
            serverinfo.update(
                db_path, host=socket.gethostname(), port=port,
                pid=postmaster.running_pid(data_dir(db_path)) or None,
                started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
            )
            say(f"Started the Balsam DB server on {socket.gethostname()}:{port}")
            return status(db_path)
        attempts += 1
        if "shared memory block" in error and time.monotonic() < deadline:
            time.sleep(0.5)  # backends of a crashed server are still exiting
            continue
        if not wanted and attempts < PORT_ATTEMPTS and ("already in use" in error
                                                        or "could not bind" in error):
            continue  # another program took the free port between our check and the bind
        raise ServerError(f"the PostgreSQL server did not start: {error} (see {SERVER_LOG})")


def _pg_ctl_start(db_path: str, bin_dir: str, account: pgaccount.Account, port: int,
                  server: dict[str, Any]) -> tuple[bool, str]:
    """``pg_ctl start`` on ``port`` with ``server`` (settings.yml ``server:``); (ok, reason)."""
    log = os.path.join(db_path, SERVER_LOG)
    size_before = os.path.getsize(log) if os.path.exists(log) else 0
    argv = [os.path.join(bin_dir, "pg_ctl"), "start", "-D", data_dir(db_path), "-w",
            "-t", str(START_TIMEOUT_SECONDS), "-l", log, "-o", server_options(port, server)]
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


def stop(db_path: str, say: Say = quiet) -> bool:
    """Stop the server; False (saying "Server is not running") if it was not running."""
    info = serverinfo.read(db_path)
    require_owner(info, "stop the server")
    host, port = info.get("host") or "", int(info.get("port") or 0)
    if not is_local(host):
        if port_answers(host, port):
            raise ServerError(f"the server runs on {host}:{port}: stop it from there")
        raise _remote_not_answering(host, port)
    with server_lock(db_path):
        return _stop_locked(db_path, info, say)


def _stop_locked(db_path: str, info: dict[str, Any], say: Say) -> bool:
    pid = postmaster.running_pid(data_dir(db_path))
    if not pid:
        _remove_stale_pidfile(db_path, say)
        serverinfo.update(db_path, host="", port=None, pid=None)
        say("Server is not running")
        return False
    account = pgaccount.account_by_uid(int(info["server_uid"]))
    pg_ctl = os.path.join(info["pg_bin"], "pg_ctl")
    output = ""
    for mode in ("fast", "immediate"):
        code, output = pgaccount.run_as(
            account, [pg_ctl, "stop", "-D", data_dir(db_path), "-m", mode, "-w",
                      "-t", str(STOP_TIMEOUT_SECONDS)],
            timeout=STOP_TIMEOUT_SECONDS + 15, cwd=db_path)
        if code == 0 or not postmaster.is_postmaster(pid, data_dir(db_path)):
            break
    else:
        raise ServerError(f"pg_ctl stop failed: {(output.strip().splitlines() or ['?'])[-1]}")
    _remove_stale_pidfile(db_path, quiet)
    serverinfo.update(db_path, host="", port=None, pid=None)
    say("Stopped the Balsam DB server")
    return True


def reset(db_path: str, say: Say = quiet) -> None:
    """Leave the server stopped with no stale state: stop it if it runs, remove a stale
    postmaster.pid, clear host/port/pid in server-info (owner only).

    A server recorded on another host is forgotten only if its port does not answer.
    """
    info = serverinfo.read(db_path)
    require_owner(info, "reset the server")
    host, port = info.get("host") or "", int(info.get("port") or 0)
    with server_lock(db_path):
        if is_local(host):
            _stop_locked(db_path, info, say)
        elif port_answers(host, port):
            raise ServerError(f"the server runs on {host}:{port} and answers: stop it there with "
                              "`balsam server --stop`")
        else:
            try:
                os.unlink(postmaster.path_of(data_dir(db_path)))
            except FileNotFoundError:
                pass
            serverinfo.update(db_path, host="", port=None, pid=None)
            say(f"Forgot the server recorded on {host}:{port}, which does not answer "
                f"(make sure no server for this DB still runs there)")
    say("Server reset: it is stopped and no stale state is left")


def reset_as_found(db_path: str, say: Say = quiet) -> bool:
    """What ``balsam server --reset`` runs: :func:`reset`, then start the server again if it was
    running, so the server is left as it was found (minus stale state; a crashed server, whose
    ``postmaster.pid`` is stale, counts as stopped). True if it runs afterwards."""
    was_running = status(db_path).running
    reset(db_path, say)
    if was_running:
        start(db_path, say)
        say("It was running, so it was started again")
    return was_running


def connect(db_path: str, say: Say = quiet) -> Status:
    """What ``balsamactivate`` runs: check the recorded server answers, or start it (owner only).

    A collaborator whose server is down is told to ask the owner; a server that runs but refuses
    the caller's credential raises :class:`DatabaseUnavailable` with the reason.
    """
    info = serverinfo.read(db_path)
    current = status(db_path)
    recorded = (info.get("host"), info.get("port"))
    stale_record = current.running and is_local(current.host) and recorded != (current.host,
                                                                               current.port)
    if not current.running or (stale_record and is_owner(info)):
        if not is_owner(info):
            why = f" ({current.detail})" if current.detail else ""
            raise ServerError(f"the Balsam DB server of {db_path} is not running{why}; ask the "
                              f"owner ({info.get('owner', info.get('owner_uid'))}) to start it "
                              f"(`balsam server --start`)")
        current = start(db_path, say)
    problem = try_connect(db_path)
    if problem:
        raise DatabaseUnavailable(problem)
    say(f"Connected to the Balsam DB server on {current.host}:{current.port}")
    return current
