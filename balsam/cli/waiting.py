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
the wait starts. The SQL of both is :mod:`balsam.core.reads.waits`.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Optional, TextIO

from balsam import defaults
from balsam.core.reads.waits import Selection, count_states
from balsam.core.states import END_STATES, State
from balsam.db.database import Database

EXIT_FINISHED = 0
"""Every selected job is JOB_FINISHED."""
EXIT_FAILED = 1
"""Every selected job is final, and some are FAILED or USER_KILLED."""
EXIT_TIMEOUT = 124
"""``--timeout`` passed first (the code of coreutils' ``timeout``)."""

FINAL = tuple(END_STATES)
FAILED_STATES = (State.FAILED.value, State.USER_KILLED.value)


def read_ids(words: Sequence[str], stdin: TextIO) -> list[str]:
    """The id words given on the command line, ``-`` replaced by the words read from ``stdin``
    (e.g. the output of ``balsam job --from-file ... --quiet``)."""
    ids: list[str] = []
    for word in words:
        ids += stdin.read().split() if word == "-" else [word]
    return ids


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


def wait_for(db: Database, sel: Selection, timeout: Optional[float],
             progress: Optional[ProgressLine] = None) -> tuple[int, str]:
    """Block until every selected job is final or ``timeout`` seconds pass; returns
    (exit status, message) from :func:`outcome`."""
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
