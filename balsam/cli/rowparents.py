"""The ``parents`` column of ``balsam job --from-file``: dependencies of the new jobs.

A row's ``parents`` value lists its parents separated by spaces or semicolons (in JSON lines
also a list of strings); empty means none. Each entry is either a full job id (a job already in
the database) or the name of an *earlier* row of the same file (its job name after
substitution), which must be the name of exactly one row of the file. Referring only to earlier
rows keeps the new jobs' graph acyclic by construction, and edges from existing jobs to new
ones cannot close a cycle, so no graph walk is needed. Every problem is named by its line.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from balsam.cli import rowfile
from balsam.core import schema
from balsam.core.writes.jobs import lock_jobs
from balsam.errors import BalsamError, NotFound

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

COLUMN = "parents"
_SEPARATORS = re.compile(r"[\s;]+")


@dataclass
class Links:
    """The dependencies of the new jobs: ``edges`` (parent id, child id), each row's parent ids
    (``per_row``, in the order given) and the line of the first row naming each parent that is
    not a new job (``outside``, to check it exists)."""

    edges: list[tuple[str, str]] = field(default_factory=list)
    per_row: list[list[str]] = field(default_factory=list)
    outside: dict[str, int] = field(default_factory=dict)


def entries(value: Any) -> list[str]:
    """The parent entries of one cell: text split at spaces and semicolons, or a JSON list of
    strings."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    if not isinstance(value, str):
        raise schema.FieldError(f"parents must be text or a list of text, not {rowfile.as_text(value)}")
    return [v for v in _SEPARATORS.split(value) if v]


def _resolve(entry: str, name: str, earlier: dict[str, str], names: Counter[str]) -> tuple[str, bool]:
    """(the parent's id, whether it is a new job) for one entry of the row named ``name``."""
    if names[entry] > 1:
        raise schema.FieldError(f"parent {entry!r} is the name of {names[entry]} rows: give a "
                                "job id, or make the names unique")
    if entry in earlier:
        return earlier[entry], True
    try:
        return str(schema.parse_uuid(entry)), False
    except schema.FieldError:
        pass
    if entry == name:
        raise schema.FieldError("a job cannot be its own parent")
    if entry in names:
        raise schema.FieldError(f"parent {entry!r} is the name of a later row: a row may name "
                                "only rows above it")
    raise schema.FieldError(f"parent {entry!r} is neither a job id nor the name of an earlier row")


def link(rows: Sequence[dict[str, Any]], records: Sequence[rowfile.Record], source: str) -> Links:
    """The dependencies the ``parents`` column of ``records`` gives the new jobs ``rows`` (built
    from them, in order); BalsamError naming the line of a bad entry."""
    links = Links()
    earlier: dict[str, str] = {}
    names = Counter(r["name"] for r in rows)
    for row, (line, values) in zip(rows, records):
        child = str(row["job_id"])
        parents: dict[str, None] = {}
        try:
            for entry in entries(values.get(COLUMN, "")):
                parent, new = _resolve(entry, row["name"], earlier, names)
                if not new:
                    links.outside.setdefault(parent, line)
                parents.setdefault(parent)
        except schema.FieldError as exc:
            raise BalsamError(f"{source}, line {line}: {exc}")
        links.per_row.append(list(parents))
        links.edges.extend((p, child) for p in parents)
        earlier[row["name"]] = child
    return links


def check_outside(cur: Cursor, links: Links, source: str) -> None:
    """NotFound naming the first line that names a parent job id not in the database; the jobs
    found are locked against removal until the transaction ends."""
    if not links.outside:
        return
    found = lock_jobs(cur, list(links.outside))
    missing = [(line, job_id) for job_id, line in links.outside.items() if job_id not in found]
    if missing:
        line, job_id = min(missing)
        raise NotFound(f"{source}, line {line}: parent job {job_id} does not exist")

