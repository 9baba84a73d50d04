"""``balsam wait [IDS] [--wf W] [--name N] [--state S] [--timeout S]``: block until jobs are final."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from balsam.cli.common import add_command, db_path, transaction

EPILOG = """Exit status: 0 when every selected job is JOB_FINISHED; 1 when all are final and some
are FAILED or USER_KILLED or were removed (the last line says how many); 124 when --timeout
passes first; 2 for
bad input (no job matches, unknown id, bad state name). The last line (stdout) sums up the
outcome; on a terminal a progress line is shown on stderr meanwhile. Without ids or --state the
selection is re-evaluated at every count, so jobs added later to a selected workflow (children
spawned by a dag script) are waited for too; ids and --state fix it when the wait starts.
Waking: the database notifies every job change, so a final state is seen within a fraction of a
second, without polling."""


def register(sub: Any) -> None:
    p = add_command(sub, "wait", run, "wait until the selected jobs are final", epilog=EPILOG)
    p.add_argument("ids", nargs="*", metavar="ID",
                   help="job ids or unique id prefixes; `-` reads ids from stdin "
                        "(e.g. from `balsam job --from-file F --quiet`)")
    p.add_argument("--wf", help="workflow contains this text")
    p.add_argument("--name", help="name contains this text (case-insensitive)")
    p.add_argument("--state", help="the jobs in exactly this state when the wait starts")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="give up after S seconds (exit status 124)")


def run(args: argparse.Namespace) -> int:
    from balsam.cli import waiting
    from balsam.core.reads import waits
    from balsam.db.database import Database
    from balsam.errors import BalsamError

    if args.timeout is not None and not args.timeout >= 0:
        raise BalsamError(f"--timeout must be a number of seconds >= 0, not {args.timeout:g}")
    ids = waiting.read_ids(args.ids, sys.stdin)
    if args.ids and not ids:
        raise BalsamError("no job ids were read from stdin")
    path = db_path()
    with transaction(path) as (_, cur):
        selection = waits.select_jobs(cur, ids, args.name, args.wf, args.state)
    db = Database(path, application_name="balsam-wait")
    code, message = waiting.wait_for(db, selection, args.timeout)
    print(message)
    return code
