"""Who may use a Balsam DB server, and who is connected: add, drop and list roles; sessions.

The owner's superuser role (created at ``balsam init``) manages collaborators' roles. Role names
are checked against :data:`ROLE_NAME` and always quoted with ``psycopg2.sql.Identifier``, passwords
passed as literals: no user input is ever formatted into SQL text.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from balsam.db import cluster, credentials, serverinfo
from balsam.db.connect import connect, connection_params
from balsam.db.dbapi import Cursor
from balsam.errors import BalsamError, NotFound, ServerError

ROLE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
RESERVED = ("public", "none", "postgres", "current_user", "session_user", "current_role")
TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
SEQUENCE_PRIVILEGES = "USAGE, SELECT"


def check_role_name(name: str) -> str:
    """``name`` if it is a valid role for a collaborator, else a one-line :class:`BalsamError`."""
    if not ROLE_NAME.fullmatch(name or ""):
        raise BalsamError(f"invalid role name {name!r}: use lowercase letters, digits and _, starting "
                          "with a letter (at most 63 characters)")
    if name in RESERVED or name.startswith("pg_"):
        raise BalsamError(f"role name {name!r} is reserved by PostgreSQL")
    return name


def admin_connect(db_path: str, dbname: Optional[str] = None) -> Any:
    """An autocommit connection as the owner's superuser role (password from ``<db>/.auth``)."""
    role = serverinfo.read(db_path)["superuser"]
    extra = {"dbname": dbname} if dbname else {}
    return connect(db_path, "balsam-admin", autocommit=True, user=role,
                   password=_owner_password(db_path, role), **extra)


def _owner_password(db_path: str, role: str) -> str:
    path = f"{db_path}/{credentials.AUTH_DIR}/{role}"
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError as exc:
        raise ServerError(f"cannot read the owner's password file {path} ({exc.strerror}): only the DB "
                          "owner can manage its users")


def _run(cur: Cursor, statement: Any, params: Optional[list[Any]] = None) -> None:
    import psycopg2

    try:
        cur.execute(statement, params)
    except psycopg2.Error as exc:
        raise ServerError(str(exc).strip().splitlines()[0])


def add_user(db_path: str, name: str) -> str:
    """Create LOGIN role ``name`` with a new password and the privileges Balsam clients need.

    The password is written to ``<db>/.auth/<name>`` (owner-only); returns that file's path.
    """
    from psycopg2 import sql

    check_role_name(name)
    info = serverinfo.read(db_path)
    role, owner = sql.Identifier(name), sql.Identifier(info["superuser"])
    password = credentials.generate_password()
    conn = admin_connect(db_path)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name])
            if cur.fetchone():
                raise BalsamError(f"role {name!r} already exists (drop it first with --drop-user)")
            conn.autocommit = False  # the role and all its grants, or nothing
            _run(cur, sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password)))
            grants = [
                "GRANT CONNECT ON DATABASE {db} TO {role}",
                "GRANT USAGE ON SCHEMA public TO {role}",
                f"GRANT {TABLE_PRIVILEGES} ON ALL TABLES IN SCHEMA public TO {{role}}",
                f"GRANT {SEQUENCE_PRIVILEGES} ON ALL SEQUENCES IN SCHEMA public TO {{role}}",
                "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
                f"GRANT {TABLE_PRIVILEGES} ON TABLES TO {{role}}",
                "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public "
                f"GRANT {SEQUENCE_PRIVILEGES} ON SEQUENCES TO {{role}}",
            ]
            db = sql.Identifier(info.get("database", serverinfo.DATABASE_NAME))
            for text in grants:
                _run(cur, sql.SQL(text).format(role=role, owner=owner, db=db))
        conn.commit()
    finally:
        conn.close()
    return credentials.write_db_credential(db_path, name, password)


def drop_user(db_path: str, name: str) -> int:
    """End ``name``'s sessions, revoke its privileges and drop it; returns the sessions ended.

    The owner's own role and other superusers are refused.
    """
    from psycopg2 import sql

    check_role_name(name)
    info = serverinfo.read(db_path)
    if name == info.get("superuser"):
        raise BalsamError(f"{name!r} is the DB owner's own role: it cannot be dropped")
    conn = admin_connect(db_path)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", [name])
            row = cur.fetchone()
            if row is None:
                raise NotFound(f"no role named {name!r} (see `balsam server --list-users`)")
            if row[0]:
                raise BalsamError(f"{name!r} is a superuser role: Balsam does not drop those")
            role = sql.Identifier(name)
            _run(cur, sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE usename = %s", [name])
            ended = int(cur.fetchone()[0])
            conn.autocommit = False
            # DROP OWNED revokes the role's privileges here and on shared objects (the database).
            _run(cur, sql.SQL("REASSIGN OWNED BY {} TO {}").format(role, sql.Identifier(info["superuser"])))
            _run(cur, sql.SQL("DROP OWNED BY {}").format(role))
            _run(cur, sql.SQL("DROP ROLE {}").format(role))
        conn.commit()
    finally:
        conn.close()
    credentials.remove_db_credential(db_path, name)
    return ended


def list_users(db_path: str) -> list[dict[str, Any]]:
    """Roles that can log in: ``name``, ``superuser``, ``owner`` (the DB owner's role)."""
    owner = serverinfo.read(db_path).get("superuser")
    conn = connect(db_path, "balsam-server", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolname, rolsuper FROM pg_roles WHERE rolcanlogin ORDER BY rolname")
            rows = cur.fetchall()
    finally:
        conn.close()
    return [{"name": n, "superuser": bool(s), "owner": n == owner} for n, s in rows]


def active_connections(db_path: str) -> list[dict[str, Any]]:
    """Client sessions on the Balsam database other than this one (pg_stat_activity)."""
    conn = connect(db_path, "balsam-server", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid, usename, application_name, client_addr, state, left(query, 60) "
                "FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() ORDER BY backend_start")
            rows = cur.fetchall()
    finally:
        conn.close()
    keys = ("pid", "user", "application_name", "client_addr", "state", "query")
    return [dict(zip(keys, row)) for row in rows]


def server_facts(db_path: str) -> dict[str, Any]:
    """``version`` and ``connections`` (client sessions other than this one) of a running server."""
    conn = connect(db_path, "balsam-server", autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('server_version'), (SELECT count(*) FROM "
                        "pg_stat_activity WHERE backend_type = 'client backend' "
                        "AND pid <> pg_backend_pid())")
            version, count = cur.fetchone()
    finally:
        conn.close()
    return {"version": version, "connections": int(count)}


def check_credential(db_path: str, role: str, password: str) -> bool:
    """True if the running server accepts ``role``/``password``; False if no server answers.

    A refusal raises :class:`BalsamError` naming the reason, so a wrong password is never saved.
    """
    import psycopg2

    if not cluster.status(db_path).running:
        return False
    params = connection_params(db_path, "balsam-credential-check")
    params.update(user=role, password=password, connect_timeout=5)
    try:
        psycopg2.connect(**params).close()
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BalsamError(f"the server refused role {role!r} with this password ({reason}); "
                          "nothing was saved")
    return True
