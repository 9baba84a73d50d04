"""``balsam modify ID ATTR VALUE``: change one field of a job or an application."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, TextIO

from balsam.cli.common import add_command, transaction
from balsam.cli.jobout import add_output_flags, full_apps, full_jobs, machine_output, print_apps, print_jobs
from balsam.core import schema
from balsam.core.reads.apps import app_exists, find_app
from balsam.core.reads.jobs import find_job
from balsam.core.writes import apps as app_writes
from balsam.core.writes.jobs import set_job_field
from balsam.errors import BalsamError, NotFound

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

EPILOG = """VALUE is converted to the field's type: booleans take true/false/yes/no/1/0, integers
must be whole numbers, `data` takes a JSON object. Setting `state` records a state change (a
USER_KILLED job only changes with --force; a RUNNING job can only be killed, unless --force;
RUNNING cannot be set by hand; a job a live launcher holds -- claimed, RUNNING, or killed and
not yet let go -- can only be killed, even with --force: moved, it could run twice). Moving a
job out of a final state (FAILED, JOB_FINISHED, USER_KILLED), e.g. `balsam modify ID state
READY`, resets its retry count: it gets its whole max_retries again. --quiet prints the job's
id (the app's number), --format json the whole changed job or application."""

READ_ONLY_JOB = {"job_id": "the job id never changes", "created_at": "the creation time never changes",
                 "tick": "tick is managed by launchers",
                 "queued_launch_id": "the batch job link is managed by the service",
                 "parents": "use `balsam dep PARENT CHILD` to add dependencies"}
SCRIPT_FIELDS = ("executable", "preprocess", "postprocess")


def register(sub: Any) -> None:
    p = add_command(sub, "modify", run, "change a field of a job or an application", epilog=EPILOG)
    p.add_argument("id", help="job id prefix; for --type apps, the application's number or name")
    p.add_argument("attr", help="field to change (e.g. state, num_nodes, args, data)")
    p.add_argument("value", help="new value")
    p.add_argument("--type", choices=["jobs", "apps"], default="jobs", help="what to modify (default jobs)")
    p.add_argument("--force", action="store_true",
                   help="allow changing the state of a USER_KILLED job or of a RUNNING one")
    add_output_flags(p, "changed job or application")


def run(args: argparse.Namespace) -> int:
    from balsam.core.reads.jobs import user_errors

    note = sys.stderr if machine_output(args) else sys.stdout
    with user_errors(), transaction() as (_, cur):
        if args.type == "apps":
            app, shown = modify_app(cur, args.id, args.attr, args.value, note)
            apps = full_apps(cur, [app]) if args.format == "json" else [app]
        else:
            job_id, shown = modify_job(cur, args.id, args.attr, args.value, args.force)
            jobs = full_jobs(cur, [job_id]) if args.format == "json" else [{"job_id": job_id}]
    text = f"{'app' if args.type == 'apps' else 'job'} {args.attr} changed to: {shown}"
    if args.type == "apps":
        print_apps(args, apps, text)
    else:
        print_jobs(args, jobs, text)
    return 0


def modify_job(cur: Cursor, id_text: str, attr: str, value: str, force: bool) -> tuple[str, str]:
    """Apply the change; return (the job's id, the stored value as text)."""
    if attr in READ_ONLY_JOB:
        raise BalsamError(f"{attr} cannot be modified: {READ_ONLY_JOB[attr]}")
    if attr not in schema.JOB_DEFAULTS:
        raise BalsamError(f"unknown job attribute {attr!r} (fields: {', '.join(schema.JOB_DEFAULTS)})")
    job = find_job(cur, id_text, "job_id")
    if attr == "state":
        from balsam.core import lifecycle
        from balsam.core.states import State, validate_state

        new = validate_state(value).value
        if new == State.RUNNING:
            raise BalsamError("RUNNING cannot be set by hand: only a launcher that runs the job sets it")
        lifecycle.transition_one(cur, job["job_id"], new, "User mutated state from command line",
                                 user=True, force=force)
        return str(job["job_id"]), new
    new_value = schema.check_field(attr, value)  # the checks of `balsam job` and the API
    if attr == "application" and not app_exists(cur, new_value):
        raise NotFound(f"application {new_value!r} does not exist (see `balsam ls apps`)")
    stored = set_job_field(cur, job["job_id"], attr, new_value)
    return str(job["job_id"]), str(stored)


def modify_app(cur: Cursor, id_text: str, attr: str, value: str,
               note: TextIO) -> tuple[dict[str, Any], str]:
    """Apply the change; return (the app's id and old name, the new value). Renaming an app also
    renames it in the jobs that use it (said on ``note``)."""
    if attr not in schema.APP_DEFAULTS:
        raise BalsamError(f"unknown application attribute {attr!r} "
                          f"(fields: {', '.join(schema.APP_DEFAULTS)})")
    app = find_app(cur, id_text)
    new_value = schema.coerce_field(attr, value, schema.APP_DEFAULTS)
    if attr in SCRIPT_FIELDS:
        from balsam.cli.cmd_app import python_script_command

        new_value = python_script_command(new_value)
    if attr == "executable" and not new_value:
        raise BalsamError("executable may not be empty")
    if attr == "name":
        new_value = new_value.strip()
        if not new_value:
            raise BalsamError("name may not be empty")
        schema.check_name("name", new_value)
        renamed = app_writes.rename_app(cur, app["id"], app["name"], new_value)
        if renamed:
            print(f"{renamed} jobs using {app['name']!r} now name {new_value!r}", file=note)
    else:
        app_writes.set_app_field(cur, app["id"], attr, new_value)
    return app, str(new_value)
