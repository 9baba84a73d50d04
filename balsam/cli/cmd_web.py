"""``balsam web``: the web dashboard of the active DB, behind a login token.

Binds to 127.0.0.1 unless told otherwise. The token comes from ``--token``, then
``BALSAM_WEB_TOKEN``, else (on a loopback address only) is generated; the URL to open, with the
token, is printed once the socket is listening. Binding to any other address without an explicit
token is refused (one line, exit 2).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from balsam.cli.common import add_command


def register(sub: Any) -> None:
    p = add_command(sub, "web", run, "serve the web dashboard (overview, jobs, kill/retry) "
                                     "behind a login token")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=int, default=8100, metavar="N",
                   help="port to listen on (default 8100; 0 picks a free one)")
    p.add_argument("--token", metavar="T",
                   help="login token (default: $BALSAM_WEB_TOKEN, else a random one on localhost)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also accept requests whose Host header is NAME (repeatable; '.example.org' "
                        "for a domain, '*' for any); localhost and the bind address always are, "
                        "and with --bind 0.0.0.0 this machine's names and addresses")
    p.add_argument("--threads", type=int, default=4, metavar="N",
                   help="request threads, each with its own DB connection (default 4)")


def run(args: argparse.Namespace) -> int:
    from balsam.cli.common import db_path
    from balsam.errors import BalsamError
    from balsam.web import server

    if not 0 <= args.port <= 65535:
        raise BalsamError(f"--port {args.port} is not a TCP port")
    if not 1 <= args.threads <= 64:
        raise BalsamError("--threads must be between 1 and 64")
    token, generated = server.choose_token(args.token, args.bind)
    server.allowed_hosts(args.bind, args.allowed_host)  # a bad --allowed-host fails before binding
    path = db_path()
    from balsam.db import dbsettings

    dbsettings.load(path)  # a bad settings.yml is reported now, not on the first page
    try:
        srv, app = server.make_server(args.bind, args.port, args.threads)
    except ValueError:  # waitress: the address does not resolve
        raise BalsamError(f"--bind {args.bind!r} is not an address or host name to listen on")
    try:
        port = int(srv.effective_port)
        server.configure(token, port, args.bind, path, args.allowed_host)
        server.check_database()
        server.start_handler(app)
        host = f"[{args.bind}]" if ":" in args.bind else args.bind
        print(f"Balsam web dashboard of {path}", flush=True)
        print(f"  open: http://{host}:{port}/?token={token}", flush=True)
        if not generated:
            print("  (the token is the one you gave)", flush=True)
        print("  stop with Ctrl-C", flush=True)
        srv.run()
    except KeyboardInterrupt:
        print("balsam web: stopped", file=sys.stderr)
    finally:
        srv.close()
    return 0
