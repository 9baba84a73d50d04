"""The job listings' CLI side: the ``BALSAM_LS_*`` knobs and the text/JSON renderings of rows
that :mod:`balsam.core.reads.jobs` (the read layer the CLI shares with the web) fetches.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from balsam.core import schema
from balsam.core.reads.jobs import JOB, JOB_COLUMNS, count_where, job_batches
from balsam.errors import BalsamError

if TYPE_CHECKING:
    from balsam.db.dbapi import PlainCursor

LS_DEFAULT_COLUMNS = ["job_id", "name", "workflow", "application", "state"]
LS_FIELDS: list[str] = JOB_COLUMNS + ["parents"]
"""Names allowed in ``BALSAM_LS_FIELDS`` (``parents`` is computed from the dependency table)."""
LS_LIMIT_DEFAULT = 5000
STREAM_ROWS = 2000
"""Rows ``ls --format json`` fetches and writes at a time (memory stays flat for any limit)."""


def ls_limit() -> int:
    """``BALSAM_LS_LIMIT`` (default 5000): how many objects a listing shows at most."""
    text = os.environ.get("BALSAM_LS_LIMIT", "").strip()
    if not text:
        return LS_LIMIT_DEFAULT
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise BalsamError(f"BALSAM_LS_LIMIT must be a positive whole number, not {text!r}")
    return limit


def ls_fields() -> list[str]:
    """Table columns: the defaults plus the colon-separated ``BALSAM_LS_FIELDS``, each checked."""
    extra = [f.strip() for f in os.environ.get("BALSAM_LS_FIELDS", "").split(":") if f.strip()]
    for field in extra:
        if field not in LS_FIELDS:
            raise BalsamError(f"BALSAM_LS_FIELDS names an unknown job field {field!r}: fix or unset "
                              f"it (valid: {', '.join(LS_FIELDS)})")
    return list(dict.fromkeys(LS_DEFAULT_COLUMNS + extra))


def stream_jobs_json(cur: PlainCursor, where: str, params: list[Any], limit: int) -> None:
    """Write the first ``limit`` matching jobs (every field and ``parents``) to stdout as the
    JSON list :func:`dumps` makes, :data:`STREAM_ROWS` at a time from a server-side cursor, so
    memory stays flat however many jobs match; the number not shown goes to stderr."""
    batches = job_batches(cur, where, params, LS_FIELDS, limit, STREAM_ROWS, "balsam_ls_json")
    written, more = 0, False
    try:
        sys.stdout.write("[")
        for rows in batches:
            if written + len(rows) > limit:
                rows, more = rows[: limit - written], True
            for r in rows:
                item = dumps(jsonable(r)).replace("\n", "\n  ")
                sys.stdout.write(f"{',' if written else ''}\n  {item}")
                written += 1
            if more:
                break
        sys.stdout.write("\n]\n" if written else "]\n")
        sys.stdout.flush()
    except (BrokenPipeError, KeyboardInterrupt) as exc:
        _drop_stdout(exc)
        return
    finally:
        batches.close()
    if more:
        hidden_notice(count_where(cur, JOB, where, params) - written, to_stderr=True)


def hidden_notice(hidden: int, to_stderr: bool = False) -> str:
    """The classic "(N more BalsamJobs not shown...)" line ('' when nothing is hidden)."""
    if hidden <= 0:
        return ""
    note = f"({hidden} more BalsamJobs not shown...)"
    if to_stderr:
        print(f"{note} raise BALSAM_LS_LIMIT to see them", file=sys.stderr)
        return ""
    return "\n" + note


def job_verbose(job: dict[str, Any], apps: dict[str, dict[str, Any]], db_path: str) -> str:
    """The full job repr of a row with all columns and parents: the same text as ``repr(BalsamJob)``."""
    from balsam.core.render import job_repr

    workdir = schema.working_directory(db_path, job["workflow"], job["name"], job["job_id"],
                                       job["user_workdir"])
    return job_repr(job, apps.get(job["application"]), workdir)


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A row with ids as strings and times in ISO 8601, ready for ``json.dumps``."""
    import uuid  # only for --json: `balsam ls` does not import it otherwise (~1 ms)

    out: dict[str, Any] = {}
    for key, val in row.items():
        if isinstance(val, datetime.datetime):
            val = val.isoformat()
        elif isinstance(val, uuid.UUID):
            val = str(val)
        out[key] = val
    return out


def write_out(text: str) -> None:
    """Print ``text`` to stdout; a reader that went away (``| head``) ends the output quietly,
    and Ctrl-C while the reader is slow leaves no half-written buffer to block the exit."""
    try:
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, KeyboardInterrupt) as exc:
        _drop_stdout(exc)


def _drop_stdout(exc: BaseException) -> None:
    """After a broken pipe or Ctrl-C while writing: send what is left to /dev/null (the
    exit-time flush must not fail or block again); re-raise a Ctrl-C."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    if isinstance(exc, KeyboardInterrupt):
        raise exc


def dumps(rows: Any) -> str:
    return json.dumps(rows, indent=2, default=str)
