"""Django-free job and app queries and their text/JSON renderings, shared by the job commands.

Everything here works on a plain psycopg2 cursor (``balsam.cli.common.transaction``) and builds
its SQL from :mod:`balsam.core.schema`. Filters are parameterised; user text never becomes SQL.
Listings fetch at most ``limit + 1`` rows and count the rest separately, so ``balsam ls`` stays
fast with 100,000 jobs in the table.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

from balsam.core import schema
from balsam.core.sql import as_dicts, column_names, fetch_dicts, like_contains
from balsam.errors import BalsamError

JOB, APP, DEP, EVENT = schema.JOB_TABLE, schema.APP_TABLE, schema.DEP_TABLE, schema.EVENT_TABLE

JOB_COLUMNS: list[str] = ["job_id", "created_at", "tick", "queued_launch_id"] + list(schema.JOB_DEFAULTS)
"""Every column of the job table, in insert order."""

LS_DEFAULT_COLUMNS = ["job_id", "name", "workflow", "application", "state"]
LS_FIELDS: list[str] = JOB_COLUMNS + ["parents"]
"""Names allowed in ``BALSAM_LS_FIELDS`` (``parents`` is computed from the dependency table)."""
LS_LIMIT_DEFAULT = 5000
STREAM_ROWS = 2000
"""Rows ``ls --format json`` fetches and writes at a time (memory stays flat for any limit)."""
ORDER = "ORDER BY created_at, job_id"


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the core's value errors (bad field value, bad state name) into one-line BalsamErrors."""
    from balsam.core.states import InvalidStateError

    try:
        yield
    except (schema.FieldError, InvalidStateError) as exc:
        raise BalsamError(str(exc))


def id_condition(text: str, column: str = "job_id") -> tuple[str, list[Any]]:
    """SQL matching job ids: exact for a full UUID, else a substring of the id text."""
    t = text.strip().lower()
    if not t or any(c not in "0123456789abcdef-" for c in t):
        raise BalsamError(f"{text!r} is not a job id or part of one (hex digits and dashes)")
    if len(t.replace("-", "")) == 32:
        with user_errors():
            return f"{column} = %s", [str(schema.parse_uuid(t))]
    return f"{column}::text LIKE %s", [f"%{t}%"]


def job_where(name: Optional[str] = None, id_text: Optional[str] = None,
              state: Optional[str] = None, wf: Optional[str] = None,
              wf_exact: Optional[str] = None) -> tuple[str, list[Any]]:
    """A ``WHERE ...`` clause (or '') and its parameters for the classic job filters.

    ``name`` is a case-insensitive substring, ``wf`` a substring and ``wf_exact`` an exact
    workflow; ``state`` must be a valid state name.
    """
    clauses: list[str] = []
    params: list[Any] = []
    if name is not None:
        clauses.append("name ILIKE %s")
        params.append(like_contains(name))
    if id_text is not None:
        sql, p = id_condition(id_text)
        clauses.append(sql)
        params += p
    if state is not None:
        from balsam.core.states import validate_state

        with user_errors():
            clauses.append("state = %s")
            params.append(validate_state(state).value)
    if wf is not None:
        clauses.append("workflow LIKE %s")
        params.append(like_contains(wf))
    if wf_exact is not None:
        clauses.append("workflow = %s")
        params.append(wf_exact)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def app_where(name: Optional[str] = None, id_text: Optional[str] = None) -> tuple[str, list[Any]]:
    """A ``WHERE ...`` clause (or '') for apps: name contains (case-insensitive), id exact number."""
    clauses: list[str] = []
    params: list[Any] = []
    if name is not None:
        clauses.append("name ILIKE %s")
        params.append(like_contains(name))
    if id_text is not None:
        if not id_text.strip().isdigit():
            raise BalsamError(f"--id {id_text!r}: applications are numbered; give the number shown "
                              "by `balsam ls apps`")
        clauses.append("id = %s")
        params.append(int(id_text))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


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


def fetch_jobs(cur: Any, where: str, params: list[Any], columns: Sequence[str],
               limit: int) -> tuple[list[dict], int]:
    """(the first ``limit`` matching jobs in creation order, the total number matching)."""
    cols = ", ".join(c for c in columns if c != "parents")
    cur.execute(f"SELECT {cols} FROM {JOB}{where} {ORDER} LIMIT %s", params + [limit + 1])
    rows = fetch_dicts(cur)
    total = len(rows)
    if total > limit:
        cur.execute(f"SELECT count(*) FROM {JOB}{where}", params)
        total, rows = int(cur.fetchone()[0]), rows[:limit]
    if "parents" in columns:
        parents = parents_of(cur, [r["job_id"] for r in rows])
        for r in rows:
            r["parents"] = parents.get(str(r["job_id"]), [])
    return rows, total


def stream_jobs_json(cur: Any, where: str, params: list[Any], limit: int) -> None:
    """Write the first ``limit`` matching jobs (every field and ``parents``) to stdout as the
    JSON list :func:`dumps` makes, :data:`STREAM_ROWS` at a time from a server-side cursor, so
    memory stays flat however many jobs match; the number not shown goes to stderr."""
    cols = ", ".join(c for c in LS_FIELDS if c != "parents")
    rows_cur = cur.connection.cursor(name="balsam_ls_json")
    rows_cur.execute(f"SELECT {cols} FROM {JOB}{where} {ORDER} LIMIT %s", params + [limit + 1])
    written, more = 0, False
    try:
        sys.stdout.write("[")
        while not more:
            batch = rows_cur.fetchmany(STREAM_ROWS)
            if not batch:
                break
            if written + len(batch) > limit:
                batch, more = batch[: limit - written], True
            rows = as_dicts(column_names(rows_cur), batch)
            parents = parents_of(cur, [r["job_id"] for r in rows])
            for r in rows:
                r["parents"] = parents.get(str(r["job_id"]), [])
                item = dumps(jsonable(r)).replace("\n", "\n  ")
                sys.stdout.write(f"{',' if written else ''}\n  {item}")
                written += 1
        sys.stdout.write("\n]\n" if written else "]\n")
        sys.stdout.flush()
    except (BrokenPipeError, KeyboardInterrupt) as exc:
        _drop_stdout(exc)
        return
    finally:
        rows_cur.close()
    if more:
        cur.execute(f"SELECT count(*) FROM {JOB}{where}", params)
        hidden_notice(int(cur.fetchone()[0]) - written, to_stderr=True)


def parents_of(cur: Any, job_ids: Sequence[Any]) -> dict[str, list[str]]:
    """{child id: [parent ids in the order the edges were made]} for ``job_ids``, one query."""
    if not job_ids:
        return {}
    cur.execute(f"SELECT child_id, parent_id FROM {DEP} WHERE child_id = ANY(%s::uuid[]) ORDER BY id",
                [[str(j) for j in job_ids]])
    result: dict[str, list[str]] = {}
    for child, parent in cur.fetchall():
        result.setdefault(str(child), []).append(str(parent))
    return result


def state_counts(cur: Any, where: str, params: list[Any]) -> dict[str, int]:
    """{state: number of matching jobs}, in lifecycle order, states without jobs left out."""
    from balsam.core.states import STATES

    cur.execute(f"SELECT state, count(*) FROM {JOB}{where} GROUP BY state", params)
    counts = dict(cur.fetchall())
    return {s: counts[s] for s in STATES + sorted(set(counts) - set(STATES)) if s in counts}


def hidden_notice(hidden: int, to_stderr: bool = False) -> str:
    """The classic "(N more BalsamJobs not shown...)" line ('' when nothing is hidden)."""
    if hidden <= 0:
        return ""
    note = f"({hidden} more BalsamJobs not shown...)"
    if to_stderr:
        print(f"{note} raise BALSAM_LS_LIMIT to see them", file=sys.stderr)
        return ""
    return "\n" + note


def apps_by_name(cur: Any) -> dict[str, dict[str, Any]]:
    cur.execute(f"SELECT id, {', '.join(schema.APP_DEFAULTS)} FROM {APP}")
    return {a["name"]: a for a in fetch_dicts(cur)}


def job_verbose(job: dict[str, Any], apps: dict[str, dict[str, Any]], db_path: str) -> str:
    """The full job repr of a row with all columns and parents: the same text as ``repr(BalsamJob)``."""
    from balsam.core.render import job_repr

    workdir = schema.working_directory(db_path, job["workflow"], job["name"], job["job_id"],
                                       job["user_workdir"])
    return job_repr(job, apps.get(job["application"]), workdir)


def histories(cur: Any, jobs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """{job id: classic state_history text}, identical to ``BalsamJob.state_history``; one query."""
    from balsam.core.history import creation_notes, history_line

    notes = creation_notes(cur, [j["job_id"] for j in jobs])
    text = {str(j["job_id"]): history_line("CREATED", notes.get(str(j["job_id"]), ""), j["created_at"])
            for j in jobs}
    if jobs:
        cur.execute(f"SELECT job_id, timestamp, to_state, message FROM {EVENT} "
                    "WHERE job_id = ANY(%s::uuid[]) ORDER BY id", [list(text)])
        for job_id, when, state, message in cur.fetchall():
            text[str(job_id)] += history_line(state, message, when)
    return text


def tree_lines(cur: Any, roots: Sequence[dict[str, Any]]) -> list[str]:
    """The dependency forest under ``roots`` (rows with job_id, name, state), one line per job.

    All descendant edges come from one recursive query; a job with two parents appears under both.
    """
    children: dict[str, list[dict[str, Any]]] = {}
    if roots:
        cur.execute(f"""
            WITH RECURSIVE down(parent_id, child_id) AS (
                SELECT parent_id, child_id FROM {DEP} WHERE parent_id = ANY(%s::uuid[])
                UNION
                SELECT d.parent_id, d.child_id FROM {DEP} d JOIN down ON d.parent_id = down.child_id
            )
            SELECT down.parent_id, j.job_id, j.name, j.state FROM down
            JOIN {JOB} j ON j.job_id = down.child_id ORDER BY j.created_at, j.job_id""",
                    [[str(r["job_id"]) for r in roots]])
        for parent, job_id, name, state in cur.fetchall():
            children.setdefault(str(parent), []).append({"job_id": job_id, "name": name, "state": state})
    lines: list[str] = []

    def walk(job: dict[str, Any], depth: int, path: frozenset) -> None:
        jid = str(job["job_id"])
        lines.append(f"{'|   ' * depth}{job['name']} {schema.cute_id(job['name'], jid)} {job['state']}")
        for child in children.get(jid, []):
            if str(child["job_id"]) not in path:
                walk(child, depth + 1, path | {jid})

    for root in roots:
        walk(root, 0, frozenset())
    return lines


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A row with ids as strings and times in ISO 8601, ready for ``json.dumps``."""
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
