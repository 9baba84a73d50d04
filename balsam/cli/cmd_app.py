"""``balsam app``: register an application (an executable jobs run)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from balsam.cli.common import add_command, transaction
from balsam.cli.jobout import add_output_flags, print_apps
from balsam.core import schema
from balsam.core.writes.apps import create_app
from balsam.errors import BalsamError


def register(sub: Any) -> None:
    p = add_command(sub, "app", run, "add an application definition")
    p.add_argument("--name", required=True, help="unique application name")
    p.add_argument("--executable", required=True,
                   help="command prefix jobs run (may include arguments or a wrapper)")
    p.add_argument("--preprocess", default="", help="script run in the job's directory before it runs")
    p.add_argument("--envscript", default="", help="script sourced before the run command")
    p.add_argument("--postprocess", default="",
                   help="script run after the job (and to handle errors and timeouts)")
    p.add_argument("--description", nargs="+", default=[], help="free text")
    add_output_flags(p, "applications")


def python_script_command(command: str) -> str:
    """Classic rule: a command whose first word ends in ``.py`` runs with this Python, by path."""
    if not command.strip():
        return ""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise BalsamError(f"cannot parse command {command!r}: {exc}")
    if words[0].endswith(".py"):
        words = [sys.executable, os.path.abspath(os.path.expanduser(words[0]))] + words[1:]
        return " ".join(shlex.quote(w) for w in words)
    return command.strip()


def run(args: argparse.Namespace) -> int:
    name = args.name.strip()
    if not name:
        raise BalsamError("--name may not be empty")
    schema.check_name("--name", name)
    values = {
        "name": name,
        "description": " ".join(args.description),
        "executable": python_script_command(args.executable),
        "preprocess": python_script_command(args.preprocess),
        "envscript": os.path.abspath(os.path.expanduser(args.envscript)) if args.envscript else "",
        "postprocess": python_script_command(args.postprocess),
    }
    if not values["executable"]:
        raise BalsamError("--executable may not be empty")
    for key, val in values.items():
        schema.coerce_field(key, val, schema.APP_DEFAULTS)
    with transaction() as (_, cur):
        app = create_app(cur, values)
    width = max(len(k) for k in app)
    lines = [f"Application {app['id']}:"] + [f"{key:>{width}}: {val}" for key, val in app.items()
                                            if key != "id"]
    print_apps(args, [app], "\n".join(lines + ["Added app to database"]))
    return 0
