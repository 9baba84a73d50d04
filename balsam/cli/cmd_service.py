"""``balsam service``: start (detached or in the foreground), stop or query the DB's service."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from balsam.cli.common import add_command, db_path

EPILOG = """One service runs per database (a PostgreSQL advisory lock; a second one exits 2).
Every cycle (settings.yml service: cycle_seconds) it syncs batch-job states from the
scheduler, sweeps launcher sessions whose lease expired, moves jobs through the steps that
run nothing, plans batch jobs for the runnable backlog within the queue policies and submits
them; transition workers (service: transition_threads) run stage-in/out and pre/postprocess
scripts. A failing scheduler command or a database outage is logged (<db>/log/service_*.log)
and retried. Without --foreground the service detaches and this command prints its pid and log."""


def register(sub: Any) -> None:
    p = add_command(sub, "service", run, "run the service that submits and tracks batch jobs",
                    epilog=EPILOG)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--foreground", action="store_true",
                      help="run in this process (logs still go to the log file) until "
                           "SIGTERM/SIGINT")
    what.add_argument("--stop", action="store_true",
                      help="stop the running service (SIGTERM) and wait until it exited")
    what.add_argument("--status", action="store_true",
                      help="say whether a service runs: pid, host, last cycle and counts "
                           "(exit 0 if running, 1 if not)")


def _counts(values: Any) -> str:
    if not values:
        return "none"
    return ", ".join(f"{k} {v}" for k, v in values.items())


def _status(path: str) -> int:
    from balsam.service import control

    running, rec, note = control.status(path)
    if not running:
        print("not running" + (f" ({note})" if note else ""))
        return 1
    rec = rec or {}
    print(f"running: pid {rec.get('pid', '?')} on host {rec.get('host', '?')}, "
          f"since {rec.get('started', '?')}" + (f" ({note})" if note else ""))
    print(f"last cycle: {rec.get('last_cycle') or 'none yet'} ({rec.get('cycles', 0)} cycle(s))")
    print(f"last cycle counts: {_counts(rec.get('counts'))}")
    print(f"totals: {_counts(rec.get('totals'))}")
    print(f"log: {rec.get('log', '?')}")
    return 0


def run(args: argparse.Namespace) -> int:
    path = db_path()
    from balsam.service import control

    if args.status:
        return _status(path)
    if args.stop:
        stopped, message = control.stop(path)
        print(message)
        return 0
    if args.foreground:
        from balsam.service import service

        return service.run(path)
    code, _pid, message = control.start_detached(path)
    print(message, file=sys.stdout if code == 0 else sys.stderr)
    return code
