"""``balsam globus login|logout|status``: the Globus login that Globus Transfer batches use.

``login`` runs the native-app flow without a browser on this machine: it prints a URL, you open it
anywhere, and paste the code back once. The tokens live in ``<DB>/globus/tokens.json`` (0600) and
refresh themselves; when Globus refuses them, transfers fail with "run `balsam globus login`".
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from balsam.cli.common import add_command, db_path

ACTIONS = {
    "login": "log in to Globus (prints a URL, reads the code you paste) and store the tokens",
    "logout": "revoke the stored Globus tokens and delete them",
    "status": "whether this DB holds a Globus login (exit 2 if not)",
}


def register(sub: Any) -> None:
    p = add_command(sub, "globus", run, "log in to Globus for Globus Transfer stage-in/out")
    p.add_argument("action", choices=list(ACTIONS),
                   help="; ".join(f"{name}: {text}" for name, text in ACTIONS.items()))
    p.add_argument("--client-id", metavar="UUID", default="",
                   help="the Globus native app client id (default: transfers: globus_client_id "
                        "in the DB's settings.yml)")
    p.add_argument("--data-access", metavar="COLLECTION_UUID", action="append", default=[],
                   help="also consent to data_access on this mapped collection (repeatable)")


def run(args: argparse.Namespace) -> int:
    from balsam.processing.transfers import globus_auth

    path = db_path()
    token_dir = globus_auth.token_dir_for(path)
    if args.action == "status":
        print(globus_auth.describe(token_dir))
    elif args.action == "logout":
        warning = globus_auth.logout(token_dir)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        print("Logged out of Globus: the stored tokens are deleted")
    else:
        client_id = args.client_id.strip() or _settings_client_id(path)
        globus_auth.login(token_dir, client_id, read_code=_read_code, data_access=args.data_access)
        print(globus_auth.describe(token_dir))
    return 0


def _settings_client_id(path: str) -> str:
    from balsam.db import dbsettings

    section = dbsettings.load(path).get("transfers") or {}
    return str(section.get("globus_client_id") or "")


def _read_code(prompt: str) -> str:
    # Written to stderr and read from stdin, so `echo CODE | balsam globus login` works too.
    print(prompt, end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line
