"""Batched recording of task starts and ends.

**When RUNNING is recorded**: MPI mode before it starts a task (not here: in
:func:`balsam.core.leases.cycle`), serial mode after, here (:meth:`StatusBuffer.started`); the
module docstring of :mod:`balsam.launcher.modes` says how and why.

A launcher notes what happened to its tasks in a :class:`StatusBuffer` as it happens and writes
it in one transaction: one statement for every start and end (a task that started and ended
in the same batch is recorded RUNNING, then its end, with one row update), one more for claims
to drop (jobs a user killed, jobs not started), and, before them, one for the outcomes of
Python-function tasks that serial mode's warm workers sent back (``Batch.pyfunc_outcomes``,
:mod:`balsam.core.payloads`: a result is durable when its RUN_DONE is). Nothing is lost while
the database is unreachable: a failed write keeps everything pending for the next flush.
Writing the same batch twice is harmless (:func:`launcher_moves.move` moves jobs
only from the expected states and only if this session holds them), so a batch whose commit
outcome is unknown is simply written again. A start refused because a user killed the job
before it was written is reported (``Written.not_started``: the caller stops the task) and,
in the same transaction, its run is written into the job's history, dated when the start was
noted (:mod:`balsam.core.killed_starts`; every start and end is noted with its
``time.monotonic()`` for that).
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Optional

from balsam import defaults
from balsam.core import killed_starts, launcher_moves, leases, payloads, schema
from balsam.core.states import State
from balsam.db.database import Database
from balsam.db.dbapi import Cursor
from balsam.errors import DatabaseUnavailable

FLUSH_AT_PENDING = 256
"""A flush is due at once when this many items are pending."""


@dataclass
class Batch:
    """State changes taken from a buffer, to write in one transaction."""

    started: list[str] = field(default_factory=list)
    start_message: str = ""
    done: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    timeouts: dict[str, str] = field(default_factory=dict)
    release: list[str] = field(default_factory=list)
    unlaunched: list[str] = field(default_factory=list)
    """Of ``release``: jobs recorded RUNNING ahead of their launch (MPI mode) that a user killed
    before it: their RUNNING visit is marked as no run when the hold is dropped
    (:func:`killed_starts.record_unlaunched`)."""
    oldest: Optional[float] = None
    start_noted: dict[str, float] = field(default_factory=dict)
    """When (``time.monotonic()``) each start was noted, and each end (``end_noted``): a start
    refused because a user killed the job is recorded dated from them
    (:mod:`balsam.core.killed_starts`)."""
    end_noted: dict[str, float] = field(default_factory=dict)
    pyfunc_outcomes: list[payloads.OutcomeRow] = field(default_factory=list)
    """Outcomes of Python-function tasks that their warm workers returned (not counted in
    ``len``: each comes with its task's end), written before the ends in the same transaction
    (:func:`_write_pyfunc_outcomes`)."""

    def __len__(self) -> int:
        return (len(self.started) + len(self.done) + len(self.errors) + len(self.timeouts)
                + len(self.release))


@dataclass
class Written:
    """What a written batch changed: ``not_started`` are ids whose RUNNING was refused (a user
    killed or changed the job before its start was recorded: stop its task; a killed job's run
    was written into its history all the same, :mod:`balsam.core.killed_starts`); ``ended``
    counts jobs whose end was recorded (a job a user killed meanwhile stays USER_KILLED)."""

    started: list[str] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)
    ended: int = 0


def _write_pyfunc_outcomes(cursor: Cursor, batch: Batch) -> None:
    """The batch's function-task outcomes, one statement, before the ends are recorded in the
    same transaction: a result is durable when its RUN_DONE is."""
    if batch.pyfunc_outcomes:
        payloads.store_outcomes(cursor, batch.pyfunc_outcomes)


def _running_here(cursor: Cursor, session_id: int, ids: list[str]) -> list[str]:
    cursor.execute(f"SELECT job_id FROM {schema.JOB_TABLE} WHERE job_id = ANY(%s::uuid[]) "
                   "AND session_id = %s AND state = %s", [ids, session_id, State.RUNNING.value])
    return [str(r[0]) for r in cursor.fetchall()]


def _record_killed_starts(cursor: Cursor, session_id: int, batch: Batch, refused: list[str],
                          ends: dict[str, tuple[State, str]]) -> None:
    """Record the runs of ``refused`` starts whose jobs a user killed first (one statement;
    :mod:`balsam.core.killed_starts`), dated from when they were noted."""
    now, started, ended = time.monotonic(), batch.start_noted, batch.end_noted
    killed_starts.record(
        cursor, session_id, {j: now - started.get(j, now) for j in refused},
        batch.start_message, {j: (*ends[j], now - ended.get(j, now))
                              for j in refused if j in ends})


def release_claims(cursor: Cursor, session_id: int, batch: Batch) -> None:
    """Drop the claims of ``batch.release`` (its ``unlaunched`` jobs' RUNNING visits marked as
    no run first: :func:`killed_starts.record_unlaunched`)."""
    killed_starts.record_unlaunched(cursor, session_id, batch.unlaunched)
    if batch.release:
        leases.release(cursor, session_id, batch.release)


class StatusBuffer:
    """Pending state changes of ``session_id``'s tasks, written by :meth:`flush`.

    ``started(ids)`` records RUNNING (serial mode; see the module docstring for MPI mode).
    ``done``/``error``/``timeout`` record the end of a RUNNING job; ``release`` drops the
    claim on a job that will not run (killed by a user, or claimed but not started). With
    ``follow``, a recorded end goes on to its follow-on state in the same row update where
    its condition holds (both events recorded). Not thread-safe: one loop owns it (several
    threads: :class:`balsam.launcher.status_writers.StatusWriters`).
    """

    def __init__(self, db: Database, session_id: int,
                 flush_seconds: float = defaults.STATUS_FLUSH_SECONDS,
                 start_message: str = "",
                 follow: Optional[launcher_moves.FollowOn] = None) -> None:
        self.db = db
        self.follow = follow
        """Pure moves taken with the ends recorded (RUN_DONE -> JOB_FINISHED of a job with
        nothing to postprocess or stage out: ``transitions.FINISH_ON_RECORD``), or None."""
        self.session_id = session_id
        self.flush_seconds = flush_seconds
        self.start_message = start_message
        self._batch = Batch(start_message=start_message)

    # ---- noting -----------------------------------------------------------------------------
    def _touch(self) -> None:
        if self._batch.oldest is None:
            self._batch.oldest = time.monotonic()

    def started(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        self._batch.started.extend(ids)
        self._batch.start_noted.update(dict.fromkeys(ids, time.monotonic()))
        self._touch()

    def done(self, job_id: str) -> None:
        self._batch.done.append(job_id)
        self._batch.end_noted[job_id] = time.monotonic()
        self._touch()

    def error(self, job_id: str, message: str) -> None:
        self._batch.errors[job_id] = message
        self._batch.end_noted[job_id] = time.monotonic()
        self._touch()

    def timeout(self, job_id: str, message: str) -> None:
        self._batch.timeouts[job_id] = message
        self._batch.end_noted[job_id] = time.monotonic()
        self._touch()

    def release(self, job_id: str) -> None:
        self._batch.release.append(job_id)
        self._touch()

    def unlaunched(self, job_id: str) -> None:
        """Drop the claim on a job recorded RUNNING ahead of its launch, which a user killed
        before it (see :class:`Batch`)."""
        self._batch.unlaunched.append(job_id)
        self.release(job_id)

    def pyfunc_outcomes(self, rows: Iterable[payloads.OutcomeRow]) -> None:
        """Function-task outcomes to write with the next batch (see :class:`Batch`)."""
        self._batch.pyfunc_outcomes.extend(rows)
        self._touch()

    # ---- writing ----------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Number of items not yet written."""
        return len(self._batch)

    def pending_ids(self) -> set[str]:
        """Ids with a pending change (their jobs still count as this launcher's)."""
        b = self._batch
        return set(b.started) | set(b.done) | set(b.errors) | set(b.timeouts) | set(b.release)

    def due(self) -> bool:
        """A flush is due: ``flush_seconds`` since the oldest pending item, or many pending."""
        oldest = self._batch.oldest
        if oldest is None:
            return False
        return (len(self._batch) >= FLUSH_AT_PENDING
                or time.monotonic() - oldest >= self.flush_seconds)

    def take(self) -> Batch:
        """Everything pending, removed from the buffer (give it back with :meth:`restore` if
        writing it failed)."""
        batch, self._batch = self._batch, Batch(start_message=self.start_message)
        return batch

    def restore(self, batch: Batch) -> None:
        """Put an unwritten batch back in front of what was noted since."""
        newer = self._batch
        batch.started.extend(newer.started)
        batch.done.extend(newer.done)
        batch.errors.update(newer.errors)
        batch.timeouts.update(newer.timeouts)
        batch.release.extend(newer.release)
        batch.unlaunched.extend(newer.unlaunched)
        batch.pyfunc_outcomes.extend(newer.pyfunc_outcomes)
        batch.start_noted.update(newer.start_noted)
        batch.end_noted.update(newer.end_noted)
        if batch.oldest is None:
            batch.oldest = newer.oldest
        self._batch = batch

    def write(self, cursor: Cursor, batch: Batch) -> Written:
        """Write ``batch`` in the caller's transaction: one statement
        (:func:`launcher_moves.move`) for every start and end -- a run that started and ended since
        the last write is recorded RUNNING then its end with one row update --, one more to
        drop claims, rarely one or two to sort out starts that were refused."""
        out = Written()
        _write_pyfunc_outcomes(cursor, batch)
        ends: dict[str, tuple[State, str]] = {j: (State.RUN_DONE, "") for j in batch.done}
        ends.update((j, (State.RUN_ERROR, m)) for j, m in batch.errors.items())
        ends.update((j, (State.RUN_TIMEOUT, m)) for j, m in batch.timeouts.items())
        started = set(batch.started)
        moves: list[launcher_moves.Move] = []
        for job_id in batch.started:
            if job_id in ends:
                state, message = ends[job_id]
                moves.append((job_id, state, message, State.RUNNING, batch.start_message))
            else:
                moves.append((job_id, State.RUNNING, batch.start_message))
        moves += [(j, state, m) for j, (state, m) in ends.items() if j not in started]
        moved = launcher_moves.move(cursor, moves, self.session_id, self.follow)
        done = {j for j, _, _ in moved}
        out.started = [j for j in batch.started if j in done]
        out.ended = sum(1 for _, _, to in moved if to != State.RUNNING.value)
        rest = [j for j in batch.started if j not in done]
        if rest:  # already RUNNING under this session: an earlier, lost-looking commit
            already = set(_running_here(cursor, self.session_id, rest))
            recorded = self._recorded(cursor, [j for j in rest if j in ends and
                                               j not in already], ends)
            out.started += [j for j in rest if j in already or j in recorded]
            out.not_started = [j for j in rest if j not in already and j not in recorded]
            out.ended += len(recorded)
            for state in (State.RUN_DONE, State.RUN_ERROR, State.RUN_TIMEOUT):
                ids = [j for j in rest if j in already and ends.get(j, (None,))[0] is state]
                if ids:
                    out.ended += len(leases.finish(cursor, self.session_id, ids, state,
                                                   {j: ends[j][1] for j in ids}))
            if out.not_started:  # the runs still happened: in the history all the same
                _record_killed_starts(cursor, self.session_id, batch, out.not_started, ends)
        release_claims(cursor, self.session_id, batch)
        return out

    def _recorded(self, cursor: Cursor, ids: list[str],
                  ends: dict[str, tuple[State, str]]) -> set[str]:
        """Those of ``ids`` (runs that started and ended since the last write, their moves
        refused) whose run an earlier write of this batch recorded, its commit reply lost: the
        job is released in the end noted for it (or that end's follow-on). A job a user killed
        or changed first is not: its start was refused."""
        if not ids:
            return set()
        cursor.execute(f"SELECT job_id, state FROM {schema.JOB_TABLE} "
                       "WHERE job_id = ANY(%s::uuid[]) AND session_id IS NULL", [ids])
        follow = self.follow.states if self.follow is not None else {}
        found = set()
        for job_id, state in cursor.fetchall():
            end = ends[str(job_id)][0]
            if state in (end.value, getattr(follow.get(end), "value", None)):
                found.add(str(job_id))
        return found

    def flush(self, *, before: Optional[float] = None) -> Optional[Written]:
        """Write everything pending in one transaction; None (all kept pending) if the
        database is unreachable. ``before`` (a ``time.monotonic()`` deadline) keeps retrying
        until then instead of giving up at once."""
        if not self.pending and not self._batch.pyfunc_outcomes:
            return Written()
        batch = self.take()
        try:
            if before is None:
                return self.db.try_run(self.write, batch)
            return self.db.run_before(before, self.write, batch)
        except DatabaseUnavailable:
            self.restore(batch)
            return None
        except BaseException:
            self.restore(batch)
            raise
