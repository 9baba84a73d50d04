"""The reads of ``balsam wait``: which jobs a wait selects, and their states (Django-free).

The selection is a WHERE clause evaluated at every count: jobs added later that match it
(children a dag script spawns into the workflow) are counted too. Job ids and ``--state`` fix
it instead: ids are resolved once into a temporary table (:data:`IDS_TABLE`), ``--state S``
takes the jobs in state S when the wait starts. Each count is one ``GROUP BY state`` query.

Unlike the other read modules this one imports :mod:`balsam.db.driver` (for the COPY of the
ids, on either driver): only ``balsam wait`` loads it, and it opens a
:class:`balsam.db.database.Database` anyway.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from balsam.core import schema
from balsam.core.reads import jobs as reads
from balsam.core.states import STATES
from balsam.db.driver import copy_in
from balsam.errors import BalsamError, NotFound

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

_CANONICAL = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
"""A full job id as ``balsam job --quiet`` prints it (checked without building a UUID object)."""

IDS_TABLE = "balsam_wait_ids"
"""A temporary table (one per connection) holding a fixed selection's ids: 100,000 ids are sent
once by COPY, not with every count."""


@dataclass
class Selection:
    """The jobs waited for: ``where`` (with ``params``) over the job table, and, for a fixed
    selection, only the jobs of ``ids``."""

    where: str
    params: list[Any] = field(default_factory=list)
    ids: Optional[list[str]] = None
    expected: Optional[int] = None
    """How many jobs a fixed selection (``ids``) matched when the wait started."""


def load_ids(cur: Cursor, ids: Sequence[str]) -> None:
    """Create and fill this connection's :data:`IDS_TABLE`, unless it already exists (a
    reconnected :class:`Database` gets a new session, so the table is made again)."""
    cur.execute("SELECT to_regclass(%s)", [f"pg_temp.{IDS_TABLE}"])
    row = cur.fetchone()
    if row is not None and row[0] is not None:
        return
    cur.execute(f"CREATE TEMP TABLE {IDS_TABLE} (job_id uuid NOT NULL)")  # ids are distinct
    copy_in(cur, f"COPY {IDS_TABLE} FROM STDIN", ["".join(f"{i}\n" for i in ids).encode()])
    cur.execute(f"ANALYZE {IDS_TABLE}")


def resolve_ids(cur: Cursor, words: Iterable[str]) -> list[str]:
    """Full job ids for ``words`` (full ids or unique prefixes), each once; :class:`NotFound`
    naming the first few that match no job. Leaves :data:`IDS_TABLE` filled on ``cur``."""
    full: list[str] = []
    with reads.user_errors():
        for word in words:
            if _CANONICAL.match(word):
                full.append(word.lower())
            elif len(word.replace("-", "")) == 32:
                full.append(str(schema.parse_uuid(word)))
            else:
                full.append(str(reads.find_job(cur, word, "job_id")["job_id"]))
    full = list(dict.fromkeys(full))
    load_ids(cur, full)
    cur.execute(f"SELECT w.job_id::text FROM {IDS_TABLE} w LEFT JOIN {reads.JOB} j USING (job_id) "
                "WHERE j.job_id IS NULL")
    missing = {r[0] for r in cur.fetchall()}
    if missing:
        first = [i for i in full if i in missing][:3]
        raise NotFound(f"{len(missing)} job id(s) match no job: {', '.join(first)}"
                       + (" ..." if len(missing) > 3 else ""))
    return full


def select_jobs(cur: Cursor, ids: Sequence[str], name: Optional[str], wf: Optional[str],
                state: Optional[str]) -> Selection:
    """The selection for ``balsam wait``'s arguments (see the module docstring); BalsamError
    if it matches no job."""
    where, params = reads.job_where(name=name, state=state, wf=wf)
    sel = Selection(where, params, resolve_ids(cur, ids) if ids else None)
    if state is not None:  # a snapshot: the jobs leave that state while we wait
        cur.execute(f"SELECT job_id::text FROM {_source(sel)}{where}", params)
        sel = Selection("", [], [r[0] for r in cur.fetchall()])
        cur.execute(f"DROP TABLE IF EXISTS {IDS_TABLE}")
    total = sum(count_states(cur, sel).values())
    if not total:
        raise BalsamError("no job matches the selection: nothing to wait for")
    sel.expected = total if sel.ids is not None else None
    return sel


def _source(sel: Selection) -> str:
    return f"{reads.JOB} JOIN {IDS_TABLE} USING (job_id)" if sel.ids is not None else reads.JOB


def count_states(cur: Cursor, sel: Selection) -> dict[str, int]:
    """{state: number of selected jobs}, in lifecycle order (states without jobs left out)."""
    if sel.ids is not None:
        load_ids(cur, sel.ids)
    cur.execute(f"SELECT state, count(*) FROM {_source(sel)}{sel.where} GROUP BY state", sel.params)
    counts: dict[str, int] = dict(cur.fetchall())
    return {s: counts[s] for s in STATES + sorted(set(counts) - set(STATES)) if s in counts}
