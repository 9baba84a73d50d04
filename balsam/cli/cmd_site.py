"""``balsam site init|start|stop|status``: a site is a Balsam DB directory with an ``apps/`` folder.

``start`` starts the database server (if needed), registers the apps of ``apps/`` and starts the
site's agent -- the service -- detached; ``stop`` stops the service (the server keeps running
for other clients; ``balsam server --stop`` stops it); ``status`` shows both and the apps.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Optional

from balsam.cli.common import add_command
from balsam.errors import NotFound

EPILOG = """A site is one Balsam database directory with an apps/ folder of
ApplicationDefinition classes (apps/<module>.py, addressed as module.Class). Without PATH,
start/stop/status use BALSAM_DB_PATH, else the current directory."""


def register(sub: Any) -> None:
    p = add_command(sub, "site", run, "create, start, stop or inspect a site (newer API)",
                    epilog=EPILOG)
    p.add_argument("action", choices=["init", "start", "stop", "status"])
    p.add_argument("path", nargs="?", default=None, help="the site directory")
    p.add_argument("--machine", default="local", metavar="NAME",
                   help="init: machine profile (as `balsam init --machine`)")


def site_path(given: Optional[str]) -> str:
    """The site a command names: PATH, else BALSAM_DB_PATH, else the current directory."""
    from balsam.db.serverinfo import is_db_dir

    path = given or os.environ.get("BALSAM_DB_PATH", "").strip() or os.getcwd()
    path = os.path.abspath(os.path.expanduser(path))
    if not is_db_dir(path):
        raise NotFound(f"{path} is not a Balsam site (create one with `balsam site init PATH`)")
    return path


def _init(args: argparse.Namespace) -> int:
    from balsam.db import dbdir

    if not args.path:
        raise NotFound("balsam site init needs the PATH of the new site")
    path = dbdir.init(args.path, machine=args.machine, say=print)
    os.makedirs(os.path.join(path, "apps"), exist_ok=True)
    print(f"Created site {path}: put ApplicationDefinition classes in {path}/apps/*.py and run "
          f"`balsam site start {args.path}`")
    return 0


def _apps(path: str) -> int:
    """Load and register the site's apps; print them and the files that failed."""
    from balsam.api.sites import Site

    found = Site(path).sync_apps()
    names = ", ".join(sorted(found.apps)) or "none"
    print(f"apps: {names}")
    for message in found.errors.values():
        print(f"app error: {message}")
    return len(found.errors)


def _start(path: str) -> int:
    from balsam.db import cluster
    from balsam.service import control

    server = cluster.start(path)
    print(f"database server: {server.host}:{server.port}")
    _apps(path)
    code, _pid, message = control.start_detached(path)
    print(f"agent: {message}")
    return code


def _status(path: str) -> int:
    from balsam.db import cluster
    from balsam.service import control

    server = cluster.status(path)
    print(f"site: {path}")
    where = f"running on {server.host}:{server.port}" if server.running else "not running"
    print(f"database server: {where}")
    running, rec, note = control.status(path) if server.running else (False, None, "")
    print("agent: " + (f"running (pid {(rec or {}).get('pid', '?')})" if running
                       else "not running" + (f" ({note})" if note else "")))
    if server.running:
        _apps(path)
    return 0 if running else 1


def run(args: argparse.Namespace) -> int:
    if args.action == "init":
        return _init(args)
    path = site_path(args.path)
    if args.action == "start":
        return _start(path)
    if args.action == "stop":
        from balsam.service import control

        print(control.stop(path)[1])
        return 0
    return _status(path)
