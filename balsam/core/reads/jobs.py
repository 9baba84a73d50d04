"""Job, application and dependency reads on a DB-API cursor, shared by the CLI and the web.

Django-free (a plain psycopg2 cursor; SQL built from :mod:`balsam.core.schema`), so the CLI pays
no Django start-up for a listing. Filters are parameterised; user text never becomes SQL.
Listings fetch at most ``limit + 1`` rows and count the rest separately, so ``balsam ls`` stays
fast with 100,000 jobs in the table.
"""
from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Optional

from balsam.core import schema
from balsam.core.sql import as_dicts, column_names, fetch_dicts, like_contains, scalar
from balsam.core.states import InvalidStateError, State, sql_in
from balsam.errors import Ambiguous, BalsamError, NotFound

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor, PlainCursor

JOB, APP, DEP, EVENT = schema.JOB_TABLE, schema.APP_TABLE, schema.DEP_TABLE, schema.EVENT_TABLE

JOB_COLUMNS: list[str] = ["job_id", "created_at", "tick", "queued_launch_id"] + list(schema.JOB_DEFAULTS)
"""Every column of the job table, in insert order."""
ORDER = "ORDER BY created_at, job_id"
"""The listing order of jobs (creation), everywhere the CLI lists them."""
APP_COLUMNS = "id, " + ", ".join(schema.APP_DEFAULTS)
NO_PARENTS = f"NOT EXISTS (SELECT 1 FROM {DEP} d WHERE d.child_id = job_id)"
"""A condition on jobs: the roots of the dependency graph (``balsam ls --tree``)."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the core's value errors (bad field value, bad state name) into one-line BalsamErrors."""
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


def _page(cur: Cursor, where: str, params: list[Any], columns: Sequence[str],
          limit: int) -> tuple[list[str], list[tuple[Any, ...]], int]:
    """(the names of ``columns`` but ``parents``, the first ``limit`` matching jobs in creation
    order as tuples of them, the total number matching: counted only when more than ``limit``
    match)."""
    names = [c for c in columns if c != "parents"]
    cur.execute(f"SELECT {', '.join(names)} FROM {JOB}{where} {ORDER} LIMIT %s",
                params + [limit + 1])
    rows: list[tuple[Any, ...]] = cur.fetchall()
    total = len(rows)
    if total > limit:
        cur.execute(f"SELECT count(*) FROM {JOB}{where}", params)
        total, rows = int(scalar(cur)), rows[:limit]
    return names, rows, total


def fetch_jobs(cur: Cursor, where: str, params: list[Any], columns: Sequence[str],
               limit: int) -> tuple[list[dict[str, Any]], int]:
    """(the first ``limit`` matching jobs in creation order, the total number matching)."""
    names, found, total = _page(cur, where, params, columns, limit)
    rows = as_dicts(names, found)
    if "parents" in columns:
        parents = parents_of(cur, [r["job_id"] for r in rows])
        for r in rows:
            r["parents"] = parents.get(str(r["job_id"]), [])
    return rows, total


def fetch_job_columns(cur: Cursor, where: str, params: list[Any], columns: Sequence[str],
                      limit: int) -> tuple[list[list[Any]], int]:
    """What :func:`fetch_jobs` fetches, column by column: ([the values of each of ``columns``
    over the first ``limit`` matching jobs], the total number matching); ``parents`` needs
    ``job_id`` among ``columns``. A table renders from columns: making 5,000 dicts first cost
    ``balsam ls`` ~2 ms."""
    names, found, total = _page(cur, where, params, columns, limit)
    fetched = dict(zip(names, map(list, zip(*found)))) if found else {n: [] for n in names}
    if "parents" in columns:
        ids = fetched["job_id"]
        parents = parents_of(cur, ids)
        fetched["parents"] = [parents.get(str(i), []) for i in ids]
    return [fetched[c] for c in columns], total


def parents_of(cur: Cursor, job_ids: Sequence[Any]) -> dict[str, list[str]]:
    """{child id: [parent ids in the order the edges were made]} for ``job_ids``, one query."""
    if not job_ids:
        return {}
    cur.execute(f"SELECT child_id, parent_id FROM {DEP} WHERE child_id = ANY(%s::uuid[]) ORDER BY id",
                [[str(j) for j in job_ids]])
    result: dict[str, list[str]] = {}
    for child, parent in cur.fetchall():
        result.setdefault(str(child), []).append(str(parent))
    return result


def state_counts(cur: Cursor, where: str, params: list[Any]) -> dict[str, int]:
    """{state: number of matching jobs}, in lifecycle order, states without jobs left out."""
    from balsam.core.states import STATES

    cur.execute(f"SELECT state, count(*) FROM {JOB}{where} GROUP BY state", params)
    counts: dict[str, int] = dict(cur.fetchall())
    return {s: counts[s] for s in STATES + sorted(set(counts) - set(STATES)) if s in counts}


def apps_by_name(cur: Cursor) -> dict[str, dict[str, Any]]:
    cur.execute(f"SELECT id, {', '.join(schema.APP_DEFAULTS)} FROM {APP}")
    return {a["name"]: a for a in fetch_dicts(cur)}


def histories(cur: Cursor, jobs: Sequence[dict[str, Any]]) -> dict[str, str]:
    """{job id: classic state_history text}, identical to ``BalsamJob.state_history``; one query."""
    from balsam.core.history import creation_notes, history_line

    notes = creation_notes(cur, [j["job_id"] for j in jobs])
    created = State.CREATED.value
    text = {str(j["job_id"]): history_line(created, notes.get(str(j["job_id"]), ""), j["created_at"])
            for j in jobs}
    if jobs:
        cur.execute(f"SELECT job_id, timestamp, to_state, message FROM {EVENT} "
                    "WHERE job_id = ANY(%s::uuid[]) ORDER BY id", [list(text)])
        for job_id, when, state, message in cur.fetchall():
            text[str(job_id)] += history_line(state, message, when)
    return text


def tree_lines(cur: Cursor, roots: Sequence[dict[str, Any]]) -> list[str]:
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

    def walk(job: dict[str, Any], depth: int, path: frozenset[str]) -> None:
        jid = str(job["job_id"])
        lines.append(f"{'|   ' * depth}{job['name']} {schema.cute_id(job['name'], jid)} {job['state']}")
        for child in children.get(jid, []):
            if str(child["job_id"]) not in path:
                walk(child, depth + 1, path | {jid})

    for root in roots:
        walk(root, 0, frozenset())
    return lines


def job_batches(cur: PlainCursor, where: str, params: list[Any], columns: Sequence[str], limit: int,
                batch: int, cursor_name: str = "balsam_job_batches"
                ) -> Generator[list[dict[str, Any]], None, None]:
    """The first ``limit + 1`` matching jobs in creation order, ``batch`` rows at a time from a
    server-side cursor (memory stays flat), each row with ``parents`` when ``columns`` names it.
    One row past ``limit`` tells the caller that more match."""
    cols = ", ".join(c for c in columns if c != "parents")
    rows_cur = cur.connection.cursor(name=cursor_name)
    try:
        rows_cur.execute(f"SELECT {cols} FROM {JOB}{where} {ORDER} LIMIT %s", params + [limit + 1])
        while True:
            found = rows_cur.fetchmany(batch)
            if not found:
                return
            rows = as_dicts(column_names(rows_cur), found)
            if "parents" in columns:
                parents = parents_of(cur, [r["job_id"] for r in rows])
                for r in rows:
                    r["parents"] = parents.get(str(r["job_id"]), [])
            yield rows
    finally:
        rows_cur.close()


def count_where(cur: Cursor, table: str, where: str, params: list[Any]) -> int:
    """How many rows of ``table`` match ``where`` (a clause from :func:`job_where`/:func:`app_where`)."""
    cur.execute(f"SELECT count(*) FROM {table}{where}", params)
    return int(scalar(cur))


def first_ids(cur: Cursor, table: str, column: str, where: str, params: list[Any],
              limit: int) -> list[str]:
    """``column`` of the first ``limit + 1`` matching rows in listing order, as text."""
    order = ORDER if table == JOB else "ORDER BY id"
    cur.execute(f"SELECT {column} FROM {table}{where} {order} LIMIT %s", params + [limit + 1])
    return [str(r[0]) for r in cur.fetchall()]


def find_job(cur: Cursor, text: str, columns: str = "*") -> dict[str, Any]:
    """The one job whose id starts with ``text`` (hex, with or without dashes).

    :class:`NotFound` if none, :class:`Ambiguous` if several.
    """
    prefix = text.strip().lower()
    if not prefix or any(c not in "0123456789abcdef-" for c in prefix):
        raise BalsamError(f"{text!r} is not a job id or id prefix (hex digits)")
    if len(prefix.replace("-", "")) == 32:
        cur.execute(f"SELECT {columns} FROM {JOB} WHERE job_id = %s",
                    [str(schema.parse_uuid(prefix))])
    else:
        cur.execute(f"SELECT {columns} FROM {JOB} WHERE job_id::text LIKE %s LIMIT 2",
                    [prefix + "%"])
    rows = fetch_dicts(cur)
    if not rows:
        raise NotFound(f"no job id starts with {text!r}")
    if len(rows) > 1:
        raise Ambiguous(f"job id prefix {text!r} matches more than one job: give more characters")
    return rows[0]


def jobs_by_ids(cur: Cursor, ids: Sequence[Any]) -> list[dict[str, Any]]:
    """Every column of the jobs ``ids``, in creation order."""
    cur.execute(f"SELECT {', '.join(JOB_COLUMNS)} FROM {JOB} WHERE job_id = ANY(%s::uuid[]) "
                f"{ORDER}", [[str(i) for i in ids]])
    return fetch_dicts(cur)


def workflow_exists(cur: Cursor, workflow: str) -> bool:
    cur.execute(f"SELECT 1 FROM {JOB} WHERE workflow = %s LIMIT 1", [workflow])
    return cur.fetchone() is not None


def workflow_counts(cur: Cursor, where: str, params: list[Any]) -> list[dict[str, Any]]:
    """[{workflow, jobs}] for the jobs matching ``where``, by workflow name."""
    cur.execute(f"SELECT workflow, count(*) AS jobs FROM {JOB}{where} GROUP BY workflow "
                "ORDER BY workflow", params)
    return fetch_dicts(cur)


def app_rows(cur: Cursor, where: str = "", params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Every field of the applications matching ``where`` (from :func:`app_where`), by number."""
    cur.execute(f"SELECT {APP_COLUMNS} FROM {APP}{where} ORDER BY id", list(params))
    return fetch_dicts(cur)


def apps_by_ids(cur: Cursor, ids: Sequence[int]) -> list[dict[str, Any]]:
    """Every field of the applications numbered ``ids``, by number."""
    return app_rows(cur, " WHERE id = ANY(%s)", [list(ids)])


def app_summaries(cur: Cursor) -> list[dict[str, Any]]:
    """Every application's id, name, description, commands and envscript, by name."""
    cur.execute("SELECT id, name, description, executable, preprocess, postprocess, envscript "
                f"FROM {APP} ORDER BY name")
    return fetch_dicts(cur)


def job_detail(cur: Cursor, job_id: str) -> Optional[dict[str, Any]]:
    """Every column of the job ``job_id`` (a full id), or None."""
    cur.execute(f"SELECT * FROM {JOB} WHERE job_id = %s", [job_id])
    found = fetch_dicts(cur)
    return found[0] if found else None


def job_events(cur: Cursor, job_id: str, limit: int = 500) -> list[dict[str, Any]]:
    """The first ``limit`` state events of a job, oldest first."""
    cur.execute(f"SELECT timestamp, from_state, to_state, message FROM {EVENT} "
                "WHERE job_id = %s ORDER BY id LIMIT %s", [job_id, limit])
    return fetch_dicts(cur)


def has_run(cur: Cursor, job_id: str) -> bool:
    """True if the job was ever RUNNING (its events say so)."""
    cur.execute(f"SELECT EXISTS (SELECT 1 FROM {EVENT} WHERE job_id = %s "
                f"AND to_state = {sql_in([State.RUNNING])})", [job_id])
    return bool(scalar(cur))


def job_relatives(cur: Cursor, job_id: str, limit: int = 200
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(parents, children) of a job: id, name, workflow, state; at most ``limit`` of each."""
    out = []
    for mine, other in (("child_id", "parent_id"), ("parent_id", "child_id")):
        cur.execute(f"SELECT j.job_id, j.name, j.workflow, j.state FROM {DEP} d "
                    f"JOIN {JOB} j ON j.job_id = d.{other} WHERE d.{mine} = %s "
                    "ORDER BY j.created_at, j.job_id LIMIT %s", [job_id, limit])
        out.append(fetch_dicts(cur))
    return out[0], out[1]


def job_labels(cur: Cursor, where: str, params: list[Any]) -> list[dict[str, Any]]:
    """``{job_id, name}`` of every job matching ``where`` (from :func:`job_where`), in listing order."""
    cur.execute(f"SELECT job_id, name FROM {JOB}{where} {ORDER}", params)
    return fetch_dicts(cur)


def workflow_size(cur: Cursor, workflow: str) -> int:
    """How many jobs the workflow named exactly ``workflow`` has."""
    cur.execute(f"SELECT count(*) FROM {JOB} WHERE workflow = %s", [workflow])
    row = cur.fetchone()
    return int(row[0]) if row else 0


def waiting_children(cur: Cursor, job_ids: Sequence[str]) -> int:
    """How many jobs outside ``job_ids`` wait (a waiting state) on one of ``job_ids``."""
    from balsam.core.states import WAITING_STATES

    cur.execute(f"""SELECT count(DISTINCT d.child_id) FROM {DEP} d
        JOIN {JOB} c ON c.job_id = d.child_id
        WHERE d.parent_id = ANY(%s::uuid[]) AND NOT d.child_id = ANY(%s::uuid[])
          AND c.state = ANY(%s::text[])""", [list(job_ids), list(job_ids), WAITING_STATES])
    row = cur.fetchone()
    return int(row[0]) if row else 0
