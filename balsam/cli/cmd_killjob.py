"""``balsam killjob --id PREFIX``: mark a job (and optionally its descendants) USER_KILLED."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from balsam.cli.common import add_command, add_yes_flag, confirm, transaction
from balsam.cli.jobout import add_output_flags, full_jobs, print_jobs
from balsam.core import schema
from balsam.core.reads.jobs import find_job

EPILOG = """A killed job is never run again unless its state is changed with
`balsam modify ID state STATE --force`. Jobs already in a final state (JOB_FINISHED, FAILED,
USER_KILLED) are left as they are. Without a terminal the answer is read from standard input
(`yes | balsam killjob --id X`). Answering no to the prompt exits with status 1."""
SHOW_AT_MOST = 10


def register(sub: Any) -> None:
    p = add_command(sub, "killjob", run, "kill a job (mark it USER_KILLED)", epilog=EPILOG)
    p.add_argument("--id", required=True, metavar="PREFIX", help="job id prefix matching exactly one job")
    p.add_argument("--recursive", action="store_true", help="also kill every job that depends on it")
    add_yes_flag(p)
    add_output_flags(p)


def run(args: argparse.Namespace) -> int:
    from balsam.core import lifecycle
    from balsam.core.states import END_STATES

    with transaction() as (_, cur):
        job = find_job(cur, args.id, "job_id, name, state")
        label = schema.cute_id(job["name"], job["job_id"])
        if job["state"] in END_STATES and not args.recursive:
            print_jobs(args, [], f"Job {label} is already {job['state']} (a final state): nothing "
                       "to kill")
            return 0
        scope = " and every job that depends on it" if args.recursive else ""
        if not confirm(f"Really kill job {label}{scope}?", args.yes):
            print("aborted: nothing killed", file=sys.stderr)
            return 1
        killed = lifecycle.kill(cur, [job["job_id"]], recursive=args.recursive)
        rows = full_jobs(cur, killed) if args.format == "json" else []
    if not killed:
        print_jobs(args, [], f"Job {label} is already {job['state']} and no job depending on it "
                   "can be killed")
        return 0
    killed.sort(key=lambda k: k != str(job["job_id"]))  # the named job first
    shown = ", ".join(k[:8] for k in killed[:SHOW_AT_MOST])
    more = f" and {len(killed) - SHOW_AT_MOST} more" if len(killed) > SHOW_AT_MOST else ""
    print_jobs(args, rows or [{"job_id": k} for k in killed],
               f"Killed {len(killed)} job{'s' if len(killed) != 1 else ''}: {shown}{more}")
    return 0
