"""Many jobs from one ``balsam job`` command: ``--from-file FILE`` (a row per job) or ``--array``.

The flags give every job's fields; a file column named like a job field sets that field for its
row (an empty CSV cell keeps the flag's value); ``{column}`` in a templated flag (``--name``,
``--args``, ``--description``, ``--url-in``, ``--url-out``, ``--env``) is replaced by the row's
value, ``{i}`` by the row's index (0-based; the array index with ``--array``, and a file column
named ``i`` wins), ``{{`` and ``}}`` by literal braces. Every job gets ``BALSAM_ARRAY_INDEX=i``
in its environment. A column that is neither a job field nor used in a template is refused
(a misspelt field must not be ignored).

A ``parents`` column gives each row's parents: job ids, or names of rows above it
(:mod:`balsam.cli.rowparents`).

All rows are built and checked before anything is written, each bad value named by the line
it is on; then one COPY inserts them all, and one statement their dependencies, in one
transaction: all rows or none.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import difflib
import re
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

from balsam.cli import rowfile, rowparents
from balsam.core import bulk, schema
from balsam.core.reads.apps import app_defaults
from balsam.errors import BalsamError, NotFound

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor

TEMPLATED = {"name": "--name", "args": "--args", "description": "--description",
             "stage_in_url": "--url-in", "stage_out_url": "--url-out", "environ_vars": "--env"}
"""Job fields whose flag may hold ``{column}`` substitutions, and the flag's name."""

ROW_FIELDS = frozenset(schema.JOB_DEFAULTS) - {"state", "lock"}
"""Job fields a file column may set (the state and the launcher's lock are Balsam's)."""

ARRAY_MAX = 1_000_000
"""Most jobs one ``--array`` may create: every row is built in memory before the COPY (about
1.2 kB each), and a typo must not fill the memory or the disk."""

INDEX = "i"
_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")
_ARRAY = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?\Z")


def array_indices(text: str) -> range:
    """``N`` -> 0..N-1; ``A-B`` -> A..B; ``A-B:STEP`` -> every STEP-th from A to B (inclusive)."""
    m = _ARRAY.match(text.strip())
    if not m:
        raise BalsamError(f"--array {text!r}: expected N, A-B or A-B:STEP (whole numbers)")
    if m.group(2) is None:
        indices = range(int(m.group(1)))
    else:
        first, last, step = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
        if last < first or step < 1:
            raise BalsamError(f"--array {text!r}: need A <= B and STEP >= 1")
        indices = range(first, last + 1, step)
    if not 1 <= len(indices) <= ARRAY_MAX:
        raise BalsamError(f"--array {text!r}: gives {len(indices)} jobs; between 1 and "
                          f"{ARRAY_MAX} allowed")
    return indices


def compile_template(flag: str, text: str, names: Iterable[str]) -> tuple[str, set[str]]:
    """(a ``str.format_map`` pattern, the names it uses) for a templated flag's text;
    BalsamError naming a ``{name}`` that is no column (nor ``i``)."""
    known = set(names)
    out: list[str] = []
    used: set[str] = set()
    pos = 0
    for m in _TOKEN.finditer(text):
        out.append(text[pos:m.start()])
        token, name = m.group(0), m.group(1)
        if name is None:
            out.append({"{{": "{{", "}}": "}}", "{": "{{", "}": "}}"}[token])
        elif name not in known:
            raise BalsamError(f"{flag} {text!r}: {{{name}}} is not a column of the file (nor "
                              f"{{i}}); write {{{{{name}}}}} for a literal {{{name}}}")
        else:
            out.append(token)
            used.add(name)
        pos = m.end()
    out.append(text[pos:])
    return "".join(out), used


def check_columns(source: str, columns: Sequence[str], used: set[str]) -> list[str]:
    """The columns that set job fields; BalsamError for one that is neither a settable field
    nor used in a template (with the closest field name)."""
    fields = []
    for col in columns:
        if col in ROW_FIELDS:
            fields.append(col)
        elif col == rowparents.COLUMN:
            continue
        elif col in schema.JOB_DEFAULTS or col in schema.JOB_SYSTEM_COLUMNS:
            raise BalsamError(f"{source}: column {col!r}: this job field is set by Balsam, not "
                              "by a file")
        elif col not in used:
            close = difflib.get_close_matches(col, sorted(ROW_FIELDS), n=1)
            hint = f" (did you mean the job field {close[0]!r}?)" if close else ""
            raise BalsamError(f"{source}: column {col!r} is neither a job field nor used as "
                              f"{{{col}}} in {', '.join(TEMPLATED.values())}{hint}")
    return fields


def build_rows(base: dict[str, Any], records: Sequence[rowfile.Record],
               indices: Optional[Sequence[int]], columns: Sequence[str], source: str) -> list[dict[str, Any]]:
    """Full, checked job rows (``schema.new_job_row`` form) for each record, or for each index
    of ``indices`` (then ``records`` is empty); BalsamError naming the line of a bad value."""
    names = set(columns) | {INDEX}
    patterns: dict[str, str] = {}
    used: set[str] = set()
    env_names: set[str] = set()
    base = dict(base)
    for field, flag in TEMPLATED.items():
        pattern, names_used = compile_template(flag, base[field], names)
        if names_used:
            patterns[field] = pattern
            used |= names_used
            env_names = names_used if field == "environ_vars" else env_names
        else:  # only literal braces: the same text for every job
            base[field] = pattern.format_map({})
    fields = check_columns(source, columns, used)
    now = datetime.datetime.now(datetime.timezone.utc)
    step = datetime.timedelta(microseconds=1)  # creation order = row order in `balsam ls`
    items: Iterable[tuple[Optional[int], dict[str, Any], int]] = \
        ((None, {}, i) for i in indices) if indices is not None else \
        ((line, values, n) for n, (line, values) in enumerate(records))
    rows: list[dict[str, Any]] = []
    for line, values, index in items:
        row = dict(base)
        try:
            if patterns:
                subs = {k: rowfile.as_text(v) for k, v in values.items()}
                subs.setdefault(INDEX, str(index))
                if any(":" in subs.get(k, "") for k in env_names):
                    raise schema.FieldError("a value substituted into --env contains ':' "
                                            "(it separates variables)")
                for field, pattern in patterns.items():
                    try:
                        text = pattern.format_map(subs)
                    except KeyError as exc:
                        raise schema.FieldError(f"no value for {{{exc.args[0]}}} in {TEMPLATED[field]}")
                    row[field] = schema.coerce_field(field, text)
                if env_names:
                    schema.parse_envstring(row["environ_vars"])
            for field in fields:
                value = values.get(field, "")
                if value != "":
                    row[field] = schema.coerce_field(field, value)
            if "environ_vars" in values:
                schema.parse_envstring(row["environ_vars"])
        except schema.FieldError as exc:
            where = f"{source}, line {line}" if line is not None else f"--array index {index}"
            raise BalsamError(f"{where}: {exc}")
        env = row["environ_vars"]
        row["environ_vars"] = f"{env}:BALSAM_ARRAY_INDEX={index}" if env else \
            f"BALSAM_ARRAY_INDEX={index}"
        row["job_id"] = bulk.uuid4()
        row["created_at"] = row["tick"] = now + step * len(rows)
        rows.append(row)
    return rows


def row_label(n: int, records: Sequence[rowfile.Record], indices: Optional[Sequence[int]],
              source: str) -> str:
    """Where the ``n``-th job came from: ``FILE, line L`` or ``--array index I``."""
    return f"--array index {indices[n]}" if indices is not None else f"{source}, line {records[n][0]}"


def check_apps(cur: Cursor, rows: Sequence[dict[str, Any]], label: Callable[[int], str]) -> dict[str, Any]:
    """The application rows the jobs name, by name; NotFound naming (``label(n)``) the first
    job whose application does not exist."""
    wanted = list(dict.fromkeys(r["application"] for r in rows))
    apps = app_defaults(cur, wanted)
    for n, row in enumerate(rows):
        if row["application"] not in apps:
            raise NotFound(f"{label(n)}: application {row['application']!r} does not exist "
                           "(see `balsam ls apps`)")
    return apps


def insert(cur: Cursor, rows: list[dict[str, Any]]) -> None:
    """All rows in one COPY (they were checked by :func:`build_rows`)."""
    bulk.copy_jobs(cur, rows, normalized=True)


def run_many(args: argparse.Namespace) -> int:
    """``balsam job ... --from-file FILE`` or ``--array SPEC``: build, check, confirm, one COPY."""
    import functools

    from balsam.cli import jobout
    from balsam.cli.common import confirm, transaction
    from balsam.cli.jobflags import job_values
    from balsam.cli.newjob import show_new_job
    from balsam.core.reads.jobs import user_errors

    if args.from_file is not None and args.array is not None:
        raise BalsamError("--from-file and --array cannot be combined (a file row has {i}, its "
                          "index, already)")
    with user_errors():
        base = schema.new_job_row(job_values(args))
    records: list[rowfile.Record] = []
    columns: list[str] = []
    indices: Optional[range] = None
    if args.array is not None:
        source, indices = "--array", array_indices(args.array)
    else:
        source = args.from_file
        columns, records = rowfile.read_records(args.from_file)
        if not records:
            raise BalsamError(f"--from-file {source}: no rows, nothing to add")
    rows = build_rows(base, records, indices, columns, source)
    links = rowparents.link(rows, records, source) if rowparents.COLUMN in columns else \
        rowparents.Links(per_row=[[] for _ in rows])
    label = functools.partial(row_label, records=records, indices=indices, source=source)
    with transaction() as (db_path, cur):
        check_apps(cur, rows, label)
        rowparents.check_outside(cur, links, source)
        if not args.yes:
            out = jobout.preview_stream(args)
            with contextlib.redirect_stdout(out):
                show_new_job(cur, db_path, rows[0], links.per_row[0])
            print(f"[INFO]: ... and {len(rows) - 1} more jobs from {source}", file=out)
            if not confirm(f"Add these {len(rows)} jobs to the database?", False):
                print("aborted: no job added", file=sys.stderr)
                return 1
        insert(cur, rows)
        bulk.insert_edges(cur, links.edges)
    deps = f" with {len(links.edges)} dependencies" if links.edges else ""
    jobout.print_jobs(args, rows, f"Added {len(rows)} jobs to the database{deps}", links.per_row)
    return 0
