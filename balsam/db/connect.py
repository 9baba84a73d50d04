"""Connection parameters for a Balsam DB, and plain psycopg2 connections (no Django).

Both the Django backend (:mod:`balsam.db.backend`) and the Django-free CLI paths take their
parameters from :func:`connection_params`, which re-reads ``server-info`` every time: a client
that reconnects after the server restarted on another port or host finds it.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Optional

from balsam.db import credentials, serverinfo
from balsam.errors import DatabaseUnavailable

CONNECT_TIMEOUT_SECONDS = 10
"""How long a client waits for the server to accept a connection before giving up."""


def local_hostnames() -> set[str]:
    names = {socket.gethostname(), "localhost", "127.0.0.1"}
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    return names


def is_local_host(host: str) -> bool:
    """Whether ``host`` names this machine; the resolver is asked (``getfqdn``) only when the
    plain names do not match, so a client on the server's host never waits on DNS."""
    if host in ("localhost", "127.0.0.1") or host == socket.gethostname():
        return True
    return host in local_hostnames()


def connection_params(db_path: str, application_name: str = "balsam") -> dict[str, Any]:
    """libpq keyword arguments for the server named in ``db_path``'s server-info."""
    info = serverinfo.read(db_path)
    host, port = info.get("host"), info.get("port")
    if not host or not port:
        raise DatabaseUnavailable(
            f"the Balsam DB server for {db_path} is not running: start it with `balsam server --start`"
        )
    if is_local_host(host):
        host = "127.0.0.1"  # same machine: loopback works even where the hostname does not resolve
    role = credentials.client_role(db_path, info)
    params: dict[str, Any] = {
        "host": host,
        "port": int(port),
        "dbname": info.get("database", serverinfo.DATABASE_NAME),
        "user": role,
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "application_name": application_name,
    }
    password = credentials.client_password(db_path, role)
    if password:
        params["password"] = password
    return params


def explain_connect_error(params: dict[str, Any], exc: Exception) -> str:
    """One line saying why a connection failed and what to do about it."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = f"{params.get('host')}:{params.get('port')}"
    if "password authentication failed" in text or "no password supplied" in text:
        in_task = (" (Balsam never passes its DB password on to a job's task or scripts: they "
                   "use a stored credential)") if os.environ.get("BALSAM_JOB_ID") else ""
        return (
            f"the server at {where} refused role {params.get('user')!r}: "
            "ask the DB owner for a credential (`balsam server --add-user`) and store it with "
            f"`balsam server --save-credential`{in_task}"
        )
    if "does not exist" in text and "role" in text:
        return f"role {params.get('user')!r} does not exist on the server at {where}: ask the DB owner"
    return f"cannot reach the Balsam DB server at {where} ({text}): is it running? `balsam server --status`"


def connect(db_path: str, application_name: str = "balsam", autocommit: bool = False,
            **overrides: Any) -> Any:
    """A new psycopg2 connection to ``db_path``'s server; :class:`DatabaseUnavailable` if that fails.

    ``overrides`` replace libpq parameters (e.g. ``user``, ``password``, ``dbname``).
    """
    import psycopg2

    params = connection_params(db_path, application_name)
    params.update(overrides)
    try:
        conn = psycopg2.connect(**params)
    except psycopg2.OperationalError as exc:
        raise DatabaseUnavailable(explain_connect_error(params, exc))
    conn.autocommit = autocommit
    return conn


def try_connect(db_path: str, timeout: int = 3) -> Optional[str]:
    """Return None if a connection succeeds, else the reason it failed (for status checks)."""
    import psycopg2

    try:
        params = connection_params(db_path, "balsam-status")
    except Exception as exc:  # noqa: BLE001 - status reports any reason
        return str(exc)
    params["connect_timeout"] = timeout
    try:
        psycopg2.connect(**params).close()
    except psycopg2.Error as exc:
        return explain_connect_error(params, exc)
    return None
