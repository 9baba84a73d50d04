"""Connection parameters for a Balsam DB, and plain psycopg2 connections (no Django).

Both the Django backend (:mod:`balsam.db.backend`) and the Django-free CLI paths take their
parameters from :func:`connection_params`, which re-reads ``server-info`` every time: a client
that reconnects after the server restarted on another port or host finds it.
"""
from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any, Optional

from balsam.db import credentials, serverinfo
from balsam.errors import DatabaseUnavailable

CONNECT_TIMEOUT_SECONDS = 10
"""How long a client waits for the server to accept a connection before giving up."""


GSSENC_MIN_LIBPQ = 120000
"""The first libpq that knows ``gssencmode`` (PostgreSQL 12); an older one rejects the keyword."""


def hostname() -> str:
    """This machine's host name: what ``socket.gethostname()`` returns (both are the kernel's
    node name), without importing socket (~2 ms of every CLI command)."""
    return os.uname().nodename


def local_hostnames() -> set[str]:
    import socket  # only when the server's host is not a plain local name

    names = {socket.gethostname(), "localhost", "127.0.0.1"}
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    return names


def is_local_host(host: str) -> bool:
    """Whether ``host`` names this machine; the resolver is asked (``getfqdn``) only when the
    plain names do not match, so a client on the server's host never waits on DNS."""
    if host in ("localhost", "127.0.0.1") or host == hostname():
        return True
    return host in local_hostnames()


def driver() -> ModuleType:
    """psycopg2, imported without Python's ``ssl`` module when that is safe.

    psycopg2's C module imports ``ssl`` only to set up OpenSSL's thread-locking callbacks before
    libpq does (``libcrypto_threads_init``); when the import fails it leaves them to libpq, as on
    a Python built without ssl. Those callbacks exist only for OpenSSL < 1.1, which no libpq of
    PostgreSQL >= 17 accepts (and psycopg2-binary's libpq carries its own OpenSSL 3, a different
    copy from Python's). Importing ``ssl`` costs every CLI command ~5 ms of wall time and ~9 ms
    of CPU, so the first import of psycopg2 in a single-threaded process skips it: ``ssl`` is
    blocked only for that import, and a later ``import ssl`` works as usual. With ``ssl``
    already imported, or other threads running (which might import ``ssl`` meanwhile), this is
    a plain ``import psycopg2``.
    """
    if "psycopg2" in sys.modules or "ssl" in sys.modules or _threads_running():
        import psycopg2

        return psycopg2
    sys.modules["ssl"] = None  # type: ignore[assignment]  # makes `import ssl` raise ImportError
    try:
        import psycopg2
    finally:
        if sys.modules.get("ssl", 0) is None:
            del sys.modules["ssl"]
    return psycopg2


def _threads_running() -> bool:
    threading = sys.modules.get("threading")
    return threading is not None and threading.active_count() > 1


def negotiation_params(host: str, libpq_version: int) -> dict[str, Any]:
    """libpq options that skip handshakes a Balsam server never takes up: GSSAPI encryption
    (its pg_hba.conf has only scram-sha-256 lines), and TLS over the loopback (the server's
    own machine). Each refused request is a round trip before authentication starts. A user's
    ``PGGSSENCMODE`` or ``PGSSLMODE`` is left to apply."""
    params: dict[str, Any] = {}
    if libpq_version >= GSSENC_MIN_LIBPQ and "PGGSSENCMODE" not in os.environ:
        params["gssencmode"] = "disable"
    if host == "127.0.0.1" and "PGSSLMODE" not in os.environ:
        params["sslmode"] = "disable"
    return params


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
    psycopg2 = driver()
    params = connection_params(db_path, application_name)
    params.update(negotiation_params(params["host"], psycopg2.__libpq_version__))
    params.update(overrides)
    try:
        conn = psycopg2.connect(**params)
    except psycopg2.OperationalError as exc:
        raise DatabaseUnavailable(explain_connect_error(params, exc))
    conn.autocommit = autocommit
    return conn


def try_connect(db_path: str, timeout: int = 3) -> Optional[str]:
    """Return None if a connection succeeds, else the reason it failed (for status checks)."""
    psycopg2 = driver()
    try:
        params = connection_params(db_path, "balsam-status")
    except Exception as exc:  # noqa: BLE001 - status reports any reason
        return str(exc)
    params["connect_timeout"] = timeout
    params.update(negotiation_params(params["host"], psycopg2.__libpq_version__))
    try:
        psycopg2.connect(**params).close()
    except psycopg2.Error as exc:
        return explain_connect_error(params, exc)
    return None
