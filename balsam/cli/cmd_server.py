"""``balsam server``: start, stop and inspect the active DB's PostgreSQL server; manage its users."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from balsam.cli.common import add_command, db_path
from balsam.errors import BalsamError

ACTIONS = {
    "start": "start the server if it is not running (owner only)",
    "connect": "check the recorded server answers, or start it if you are the owner "
               "(what balsamactivate runs)",
    "stop": "stop the server (owner only)",
    "status": "running or stopped, where, and how many connections (exit 1 if stopped)",
    "reset": "clear stale state (stop the server, then start it again if it was running); "
             "leaves it as it was found (owner only)",
    "list_active_connections": "list the sessions connected to the database",
    "list_users": "list the roles that can log in",
}


def register(sub: Any) -> None:
    p = add_command(sub, "server", run, "start, stop or inspect the Balsam DB server; manage its users")
    group = p.add_mutually_exclusive_group(required=True)
    for dest, text in ACTIONS.items():
        group.add_argument("--" + dest.replace("_", "-"), dest=dest, action="store_true", help=text)
    group.add_argument("--add-user", metavar="NAME",
                       help="create role NAME with its own password and the privileges it needs (owner only)")
    group.add_argument("--drop-user", metavar="NAME",
                       help="end NAME's sessions and drop the role (owner only)")
    group.add_argument("--save-credential", metavar="ROLE",
                       help="store your password for ROLE on this DB (read from stdin) in "
                            "~/.balsam/credentials.json")


def run(args: argparse.Namespace) -> int:
    from balsam.db import cluster, index, roles

    path = db_path()
    if args.start:
        cluster.start(path, print)
    elif args.connect:
        cluster.connect(path, print)
        index.register(path)
    elif args.stop:
        cluster.stop(path, print)
    elif args.status:
        return _status(path)
    elif args.reset:
        cluster.reset_as_found(path, print)
    elif args.list_active_connections:
        _connections(roles.active_connections(path))
    elif args.list_users:
        users = roles.list_users(path)
        width = max(len(u["name"]) for u in users)
        for u in users:
            marks = ", ".join(m for m, on in (("owner", u["owner"]), ("superuser", u["superuser"])) if on)
            print(f"{u['name']:<{width}}  {marks}".rstrip())
        print(f"{len(users)} role(s) can log in")
    elif args.add_user is not None:
        _add_user(path, args.add_user)
    elif args.drop_user is not None:
        _require_owner(path, "drop users")
        ended = roles.drop_user(path, args.drop_user)
        print(f"Dropped role {args.drop_user!r} (ended {ended} session(s)) and removed its password file")
    elif args.save_credential is not None:
        _save_credential(path, args.save_credential)
    return 0


def _require_owner(path: str, action: str) -> None:
    from balsam.db import cluster, serverinfo

    cluster.require_owner(serverinfo.read(path), action)


def _status(path: str) -> int:
    from balsam.db import cluster, roles, serverinfo

    info = serverinfo.read(path)
    state = cluster.status(path)
    print(f"Balsam DB server for {path}: {'running' if state.running else 'stopped'}")
    version, connections = info.get("pg_version", "unknown"), ""
    if state.running:
        print(f"  host: {state.host}\n  port: {state.port}\n  pid: {state.pid or 'unknown'}")
        try:
            facts = roles.server_facts(path)
            version, connections = facts["version"], str(facts["connections"])
        except BalsamError as exc:
            connections = f"unknown ({exc})"
    elif state.detail:
        print(f"  note: {state.detail}")
    print(f"  PostgreSQL: {version}")
    if state.running:
        print(f"  connections: {connections}")
    print(f"  owner: {info.get('owner')}; server runs as: {info.get('server_account')}")
    return 0 if state.running else 1


def _connections(rows: list[dict[str, Any]]) -> None:
    header = {"pid": "PID", "user": "USER", "application_name": "APPLICATION",
              "client_addr": "CLIENT", "state": "STATE", "query": "QUERY"}
    table = [header] + [{k: " ".join(str(v if v is not None else "").split()) for k, v in r.items()}
                        for r in rows]
    widths = {k: max(len(r[k]) for r in table) for k in header}
    for r in table:
        print("  ".join(f"{r[k]:<{widths[k]}}" for k in header).rstrip())
    print(f"{len(rows)} active connection(s)")


def _add_user(path: str, name: str) -> None:
    from balsam.db import roles

    _require_owner(path, "add users")
    secret = roles.add_user(path, name)
    print(f"Created role {name!r} on the Balsam DB {path}")
    print(f"Its password is in {secret} (readable by you only): give it to {name} privately.")
    print("They store it, with the password on standard input, by running:")
    print(f"    BALSAM_DB_PATH={path} balsam server --save-credential {name} < PASSWORD-FILE")


def _save_credential(path: str, role: str) -> None:
    from balsam.db import credentials, roles

    roles.check_role_name(role)
    if sys.stdin is not None and sys.stdin.isatty():
        import getpass

        password = getpass.getpass(f"Password for role {role} on {path}: ")
    else:
        password = (sys.stdin.readline() if sys.stdin is not None else "").strip()
    if not password:
        raise BalsamError("no password given on standard input")
    checked = roles.check_credential(path, role, password)
    store = credentials.save_user_credential(path, role, password)
    print(f"Saved the credential of role {role!r} for {path} in {store} (readable by you only)")
    print("Verified: the server accepted it" if checked else
          "Not verified: the server is not running; it will be used when it is")
