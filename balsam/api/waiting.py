"""Waiting for jobs and reading their results: ``Job.result()``, ``wait()``, ``as_completed()``.

A job is *done* in a final state: JOB_FINISHED, FAILED or USER_KILLED. Waiting polls the
database for a whole set of jobs at once -- one statement per poll reading only the jobs that
became done, whatever their number -- at intervals growing from ``POLL_FIRST_SECONDS`` to
``POLL_MAX_SECONDS``. A function task's outcome is read from :mod:`balsam.site.pyfunc`'s table.

This module sees jobs only as objects with ``_row`` (the classic row) and ``_site``, so
:mod:`balsam.api.jobs` can use it without an import cycle.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Optional

from django.db import connection

from balsam.core import schema
from balsam.core.states import END_STATES, State
from balsam.errors import BalsamError
from balsam.site import pyfunc

FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"
POLL_FIRST_SECONDS = 0.02
POLL_MAX_SECONDS = 1.0
"""Polling starts fast (short tasks) and backs off (1 s at most between looks)."""


class JobNotDone(BalsamError):
    """``result()`` of a job that is not in a final state yet."""


class JobTimeout(BalsamError, TimeoutError):
    """``result(timeout=...)`` or ``as_completed(timeout=...)`` ran out of time."""


class JobFailed(BalsamError):
    """A job that ended FAILED or USER_KILLED without an exception of its own to re-raise
    (e.g. a command job, or a function task that never ran)."""


class NoResult(BalsamError):
    """A finished job with no recorded return value (not a function app's job)."""


class DoneAndNotDone(NamedTuple):
    done: set[Any]
    not_done: set[Any]


def _label(job: Any) -> str:
    return f"job {str(job._row.pk)[:8]} ({job._row.application})"


def _done_states(jobs: Sequence[Any]) -> dict[str, str]:
    """{job id: final state} of those of ``jobs`` that are done (one statement)."""
    if not jobs:
        return {}
    jobs[0]._site.activate()
    with connection.cursor() as cur:
        cur.execute(f"SELECT job_id::text, state FROM {schema.JOB_TABLE} "
                    f"WHERE job_id = ANY(%s::uuid[]) AND state = ANY(%s)",
                    [[str(j._row.pk) for j in jobs], END_STATES])
        return dict(cur.fetchall())


def _poll(pending: dict[str, Any], deadline: Optional[float],
          interval: float) -> tuple[list[Any], float]:
    """Jobs of ``pending`` done now (removed from it, their ``state`` refreshed), after
    sleeping ``interval`` if none was; ([], next interval) at the deadline."""
    while True:
        found = _done_states(list(pending.values()))
        if found:
            done = []
            for job_id, state in found.items():
                job = pending.pop(job_id)
                _set_state(job, state)
                done.append(job)
            return done, POLL_FIRST_SECONDS
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return [], interval
        time.sleep(interval if left is None else min(interval, left))
        interval = min(POLL_MAX_SECONDS, interval * 1.5)


def _deadline(timeout: Optional[float]) -> Optional[float]:
    return None if timeout is None else time.monotonic() + max(0.0, float(timeout))


def wait(jobs: Iterable[Any], timeout: Optional[float] = None,
         return_when: str = ALL_COMPLETED) -> DoneAndNotDone:
    """Wait until the jobs are done (``return_when``: ``ALL_COMPLETED``, ``FIRST_COMPLETED``,
    or ``FIRST_EXCEPTION``: the first that ends other than JOB_FINISHED) or ``timeout``
    seconds pass; returns (done, not_done) sets, as :func:`concurrent.futures.wait`."""
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        raise BalsamError(f"return_when must be ALL_COMPLETED, FIRST_COMPLETED or "
                          f"FIRST_EXCEPTION, not {return_when!r}")
    pending = {str(j._row.pk): j for j in jobs}
    done: set[Any] = set()
    deadline, interval = _deadline(timeout), POLL_FIRST_SECONDS
    while pending:
        finished, interval = _poll(pending, deadline, interval)
        if not finished:
            break
        done.update(finished)
        if return_when == FIRST_COMPLETED or (
                return_when == FIRST_EXCEPTION and any(j._row.state != State.JOB_FINISHED.value
                                                       for j in finished)):
            break
    return DoneAndNotDone(done, set(pending.values()))


def as_completed(jobs: Iterable[Any], timeout: Optional[float] = None) -> Iterator[Any]:
    """Yield the jobs as they become done (those already done first); :class:`JobTimeout`
    if ``timeout`` seconds pass before all are."""
    pending = {str(j._row.pk): j for j in jobs}
    deadline, interval = _deadline(timeout), POLL_FIRST_SECONDS
    while pending:
        finished, interval = _poll(pending, deadline, interval)
        if not finished:
            raise JobTimeout(f"{len(pending)} of the jobs are not done after {timeout} s")
        yield from finished


def result(job: Any, timeout: Optional[float] = None) -> Any:
    """The return value of a function job's ``run()``; its exception re-raised (the remote
    traceback as ``__cause__``); :class:`JobNotDone` if it is not done (``timeout``: wait up
    to that many seconds first, then :class:`JobTimeout`)."""
    if timeout is not None:
        done, _ = wait([job], timeout)
        if not done:
            raise JobTimeout(f"{_label(job)} is not done after {timeout} s "
                             f"(state {_current_state(job)})")
    else:
        _current_state(job)
    state = job._row.state
    if state not in END_STATES:
        raise JobNotDone(f"{_label(job)} is {state}, not done: no result yet "
                         "(result(timeout=...) waits)")
    with connection.cursor() as cur:
        outcome = pyfunc.load_outcomes(cur, [str(job._row.pk)]).get(str(job._row.pk))
    if outcome is not None and outcome.failed:
        pyfunc.reraise(outcome, _label(job))
    if state != State.JOB_FINISHED.value:
        raise JobFailed(f"{_label(job)} is {state}: {_last_message(job)}")
    if outcome is None:
        raise NoResult(f"{_label(job)} finished without a recorded return value (only a "
                       "function app's run() has one)")
    return pyfunc.deserialize(outcome.value)


def _current_state(job: Any) -> str:
    job._site.activate()
    with connection.cursor() as cur:
        cur.execute(f"SELECT state FROM {schema.JOB_TABLE} WHERE job_id = %s", [str(job._row.pk)])
        found = cur.fetchone()
    if found is None:
        raise JobFailed(f"{_label(job)} no longer exists")
    _set_state(job, str(found[0]))
    return str(found[0])


def _set_state(job: Any, state: str) -> None:
    """The state read from the database, as if loaded (a later ``save()`` does not write it)."""
    job._row.state = job._row._loaded_state = state


def _last_message(job: Any) -> str:
    with connection.cursor() as cur:
        cur.execute(f"SELECT message FROM {schema.EVENT_TABLE} WHERE job_id = %s "
                    "ORDER BY id DESC LIMIT 1", [str(job._row.pk)])
        found = cur.fetchone()
    return (found[0] if found and found[0] else "no message").strip().splitlines()[0][:300]
