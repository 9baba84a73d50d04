"""``balsam wait``: block until the selected jobs are final (Django-free).

The wait listens on the database's job notifications (``NOTIFY balsam_jobs``, sent once per
statement that inserts or updates jobs) and re-counts the selection's states when woken, at
most every :data:`balsam.defaults.WAIT_MIN_INTERVAL_SECONDS` (or :data:`~balsam.defaults.
WAIT_LOAD_FACTOR` times the last count's duration, if longer), and at least every
:data:`balsam.defaults.WAIT_FALLBACK_SECONDS` (a notification lost with a dropped connection
costs at most that long). Each count is one ``GROUP BY state`` query over the selection; the
connection (:class:`balsam.db.database.Database`) reconnects across a server restart.

The selection is a WHERE clause evaluated at every count: jobs added later that match it
(children a dag script spawns into the workflow) are waited for too. ``--state`` and job ids
fix the selection instead: ids are resolved once, ``--state S`` takes the jobs in state S when
the wait starts.
"""
from __future__ import annotations

import io
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

from balsam import defaults
from balsam.core import schema
from balsam.core.reads import jobs as reads
from balsam.core.reads.jobs import find_job
from balsam.core.states import END_STATES, State
from balsam.errors import BalsamError, NotFound

EXIT_FINISHED = 0
"""Every selected job is JOB_FINISHED."""
EXIT_FAILED = 1
"""Every selected job is final, and some are FAILED or USER_KILLED."""
EXIT_TIMEOUT = 124
"""``--timeout`` passed first (the code of coreutils' ``timeout``)."""

FINAL = tuple(END_STATES)
FAILED_STATES = (State.FAILED.value, State.USER_KILLED.value)


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


def read_ids(words: Sequence[str], stdin: TextIO) -> list[str]:
    """The id words given on the command line, ``-`` replaced by the words read from ``stdin``
    (e.g. the output of ``balsam job --from-file ... --quiet``)."""
    ids: list[str] = []
    for word in words:
        ids += stdin.read().split() if word == "-" else [word]
    return ids


def load_ids(cur: Any, ids: Sequence[str]) -> None:
    """Create and fill this connection's :data:`IDS_TABLE`, unless it already exists (a
    reconnected :class:`Database` gets a new session, so the table is made again)."""
    cur.execute("SELECT to_regclass(%s)", [f"pg_temp.{IDS_TABLE}"])
    if cur.fetchone()[0] is not None:
        return
    cur.execute(f"CREATE TEMP TABLE {IDS_TABLE} (job_id uuid NOT NULL)")  # ids are distinct
    cur.copy_expert(f"COPY {IDS_TABLE} FROM STDIN", io.StringIO("".join(f"{i}\n" for i in ids)))
    cur.execute(f"ANALYZE {IDS_TABLE}")


def resolve_ids(cur: Any, words: Iterable[str]) -> list[str]:
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
                full.append(str(find_job(cur, word, "job_id")["job_id"]))
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


def select_jobs(cur: Any, ids: Sequence[str], name: Optional[str], wf: Optional[str],
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


def count_states(cur: Any, sel: Selection) -> dict[str, int]:
    """{state: number of selected jobs}, in lifecycle order (states without jobs left out)."""
    from balsam.core.states import STATES

    if sel.ids is not None:
        load_ids(cur, sel.ids)
    cur.execute(f"SELECT state, count(*) FROM {_source(sel)}{sel.where} GROUP BY state", sel.params)
    counts = dict(cur.fetchall())
    return {s: counts[s] for s in STATES + sorted(set(counts) - set(STATES)) if s in counts}


def summary(counts: dict[str, int]) -> str:
    """``40/100 final (38 finished, 2 failed or killed), 10 RUNNING, 50 CREATED``."""
    total = sum(counts.values())
    done = sum(counts.get(s, 0) for s in FINAL)
    bad = sum(counts.get(s, 0) for s in FAILED_STATES)
    pending = ", ".join(f"{n} {s}" for s, n in counts.items() if s not in FINAL)
    finished = counts.get(State.JOB_FINISHED.value, 0)
    text = f"{done}/{total} final ({finished} finished, {bad} failed or killed)"
    return f"{text}, {pending}" if pending else text


def outcome(counts: dict[str, int], timed_out: bool, timeout: Optional[float],
            expected: Optional[int] = None) -> tuple[int, str]:
    """(exit status, the one line ``balsam wait`` prints) for the last counts. ``expected``:
    how many jobs a fixed selection had (the ones missing now were removed: not finished)."""
    total = sum(counts.values())
    removed = max(0, expected - total) if expected is not None else 0
    pending = total - sum(counts.get(s, 0) for s in FINAL)
    if timed_out and pending:
        return EXIT_TIMEOUT, f"timed out after {timeout:g} s: {pending} of {total} jobs not final; " \
                             + summary(counts)
    if not total:
        return EXIT_FAILED, "no selected job is left: they were removed while waiting"
    bad = {s: counts[s] for s in FAILED_STATES if counts.get(s)}
    if removed:
        bad["removed"] = removed
    if bad:
        named = ", ".join(f"{n} {s}" for s, n in bad.items())
        return EXIT_FAILED, f"{sum(bad.values())} of {total + removed} jobs did not finish: {named}"
    return EXIT_FINISHED, f"all {total} jobs finished"


class ProgressLine:
    """One rewritten status line on ``stream`` (stderr), only when it is a terminal."""

    def __init__(self, stream: Optional[TextIO] = None, force: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.active = force or self.stream.isatty()
        self.width = 0
        self.started = time.monotonic()

    def show(self, text: str) -> None:
        if self.active:
            line = f"balsam wait: {text} [{time.monotonic() - self.started:.0f} s]"
            self.stream.write("\r" + line.ljust(self.width))
            self.stream.flush()
            self.width = len(line)

    def clear(self) -> None:
        if self.active and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def wait_for(db: Any, sel: Selection, timeout: Optional[float],
             progress: Optional[ProgressLine] = None) -> tuple[int, str]:
    """Block until every selected job is final or ``timeout`` seconds pass; returns
    (exit status, message) from :func:`outcome`. ``db`` is a :class:`Database`."""
    progress = progress or ProgressLine()
    start = time.monotonic()
    deadline = start + timeout if timeout is not None else float("inf")
    db.listen()
    try:
        while True:
            last = time.monotonic()
            counts = db.run_before(deadline, count_states, sel) if timeout is not None \
                else db.run(count_states, sel)
            took = time.monotonic() - last
            gap = max(defaults.WAIT_MIN_INTERVAL_SECONDS, defaults.WAIT_LOAD_FACTOR * took)
            progress.show(summary(counts))
            pending = sum(n for s, n in counts.items() if s not in FINAL)
            now = time.monotonic()
            if not pending or now >= deadline:
                return outcome(counts, bool(pending), timeout, sel.expected)
            db.wait(min(defaults.WAIT_FALLBACK_SECONDS, deadline - now))
            # Notifications come once per statement: under a busy launcher, many per second.
            pause = last + gap - time.monotonic()
            if pause > 0:
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            db.notified()  # those that came during the pause are covered by the next count
    finally:
        progress.clear()
        db.close()
