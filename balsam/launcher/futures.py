"""Futures for Balsam jobs: ``balsam.launcher.futures`` (classic ``FutureTask`` and ``wait``).

A :class:`FutureTask` wraps a saved job. Its job is re-read from the database while it is
active; once the job reaches a final state the future is *done* (JOB_FINISHED), *failed*
(FAILED) or *cancelled* (USER_KILLED, or the job was deleted). :meth:`FutureTask.result` waits
for that and runs the matching callback once. :func:`wait` watches many futures with one query
per poll, whatever their number. Importing this module does nothing (Django loads on first use).
"""
from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Sequence
from typing import Any, Callable, NamedTuple, Optional

from balsam.core.states import END_STATES, State
from balsam.errors import BalsamError

__all__ = ["FutureTask", "wait", "WaitResult", "TaskFailed", "TimeoutError",
           "ANY_COMPLETED", "ALL_COMPLETED"]

TimeoutError = builtins.TimeoutError
"""Raised when a timeout expires (the builtin, so ``except TimeoutError`` catches it anyway)."""

ANY_COMPLETED = "ANY_COMPLETED"
ALL_COMPLETED = "ALL_COMPLETED"
POLL_SECONDS = 1.0
"""Default time between two polls of the database (classic: 1 s)."""

_DONE, _FAILED, _CANCELLED = State.JOB_FINISHED.value, State.FAILED.value, State.USER_KILLED.value


class TaskFailed(BalsamError):
    """The job of a future FAILED and the future has no fail callback."""


class FutureTask:
    """The future outcome of a saved job.

    ``done_callback(job, *args, **kwargs)`` gives the result of a finished job;
    ``fail_callback`` (same arguments), if given, the result of a failed one. Each runs at most
    once: its return value (or exception) is kept and given again by later :meth:`result` calls.
    ``job`` is refreshed in place with the full row when the job reaches a final state.
    """

    def __init__(self, job: Any, done_callback: Callable[..., Any],
                 fail_callback: Optional[Callable[..., Any]] = None, *args: Any, **kwargs: Any) -> None:
        if not hasattr(job, "state") or getattr(job, "pk", None) is None \
                or getattr(getattr(job, "_state", None), "adding", False):
            raise TypeError(f"FutureTask needs a saved BalsamJob, not {job!r}")
        self.job = job
        self._done_callback = done_callback
        self._fail_callback = fail_callback
        self._args, self._kwargs = args, kwargs
        self._vanished = False  # the job was deleted: cancelled
        self._seen_state: str = job.state
        self._outcome: Optional[tuple[bool, Any]] = None  # (callback returned, value or exception)

    def __repr__(self) -> str:
        return f"<FutureTask {self.job.cute_id} {self._seen_state}>"

    def _final_state(self) -> Optional[str]:
        if self._vanished:
            return _CANCELLED
        return self.job.state if self.job.state in END_STATES else None

    def _is(self, state: str) -> bool:
        if self._final_state() is None:
            _poll([self])
        return self._final_state() == state

    @property
    def done(self) -> bool:
        """The job finished (JOB_FINISHED). Re-reads the job while it is active."""
        return self._is(_DONE)

    @property
    def failed(self) -> bool:
        """The job FAILED. Re-reads the job while it is active."""
        return self._is(_FAILED)

    @property
    def cancelled(self) -> bool:
        """The job was killed (USER_KILLED) or deleted. Re-reads the job while it is active."""
        return self._is(_CANCELLED)

    @property
    def active(self) -> bool:
        """The job is not in a final state yet. Re-reads the job while it is active."""
        if self._final_state() is None:
            _poll([self])
        return self._final_state() is None

    def result(self, timeout: Optional[float] = None, poll_period: float = POLL_SECONDS) -> Any:
        """Wait for the job to end and return the outcome.

        Finished: the done callback's value. Failed: the fail callback's value, or
        :class:`TaskFailed` without one. Cancelled: None. :class:`TimeoutError` if the job is
        still active after ``timeout`` seconds (None: wait for ever); the job is polled every
        ``poll_period`` seconds and once more at the deadline.
        """
        _poll_until([self], lambda: self._final_state() is not None, timeout, poll_period,
                    lambda: f"job {self.job.cute_id} is still {self._seen_state} after {timeout} s")
        final = self._final_state()
        if final == _CANCELLED:
            return None
        if self._outcome is None:
            callback = self._done_callback if final == _DONE else self._fail_callback
            if callback is None:
                raise TaskFailed(f"job {self.job.cute_id} failed: {self.job.get_recent_state_str()}")
            try:
                self._outcome = (True, callback(self.job, *self._args, **self._kwargs))
            except Exception as exc:
                self._outcome = (False, exc)
                raise
        returned, value = self._outcome
        if returned:
            return value
        raise value

    def cancel(self, recursive: bool = False) -> bool:
        """Kill the job (with ``recursive``, the jobs below it too); True if it was killed now,
        False if it had already ended."""
        from balsam.launcher import dag

        if self._final_state() is not None:
            return False
        try:
            killed = dag.kill(self.job, recursive=recursive)
        except BalsamError:  # deleted meanwhile
            killed = []
        _poll([self])
        return str(self.job.pk) in killed


class WaitResult(NamedTuple):
    """The futures given to :func:`wait`, by outcome, each list in the order given."""

    active: list[FutureTask]
    done: list[FutureTask]
    failed: list[FutureTask]
    cancelled: list[FutureTask]


def wait(futures: Iterable[FutureTask], timeout: Optional[float] = None,
         return_when: str = ANY_COMPLETED, poll_period: float = POLL_SECONDS) -> WaitResult:
    """Wait until any (``ANY_COMPLETED``) or all (``ALL_COMPLETED``) of ``futures`` have ended,
    polling every ``poll_period`` seconds with one query for all of them, and return them sorted
    by outcome. :class:`TimeoutError` if that has not happened after ``timeout`` seconds."""
    if return_when not in (ANY_COMPLETED, ALL_COMPLETED):
        raise ValueError(f"return_when must be {ANY_COMPLETED!r} or {ALL_COMPLETED!r}, "
                         f"not {return_when!r}")
    futures = list(futures)

    def enough() -> bool:
        ended = sum(f._final_state() is not None for f in futures)
        return ended == len(futures) or (return_when == ANY_COMPLETED and ended > 0)

    def late() -> str:
        left = sum(f._final_state() is None for f in futures)
        return f"{left} of {len(futures)} jobs still active after {timeout} s"

    _poll_until(futures, enough, timeout, poll_period, late)
    groups: dict[Optional[str], list[FutureTask]] = {None: [], _DONE: [], _FAILED: [], _CANCELLED: []}
    for future in futures:
        groups[future._final_state()].append(future)
    return WaitResult(groups[None], groups[_DONE], groups[_FAILED], groups[_CANCELLED])


def _poll_until(futures: Sequence[FutureTask], enough: Callable[[], bool], timeout: Optional[float],
                poll_period: float, late: Callable[[], str]) -> None:
    """Poll until ``enough()``; :class:`TimeoutError` with ``late()`` after ``timeout`` s."""
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    while True:
        _poll(futures)
        if enough():
            return
        pause = poll_period
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(late())
            pause = min(pause, left)
        time.sleep(pause)


def _poll(futures: Iterable[FutureTask]) -> None:
    """Read the state of every active future's job in one query; the jobs that reached a final
    state are then refreshed in full with one more query."""
    from balsam.core.models import BalsamJob

    active: dict[str, list[FutureTask]] = {}
    for future in futures:
        if future._final_state() is None:
            active.setdefault(str(future.job.pk), []).append(future)
    if not active:
        return
    states = {str(pk): state for pk, state in
              BalsamJob.objects.filter(pk__in=list(active)).values_list("pk", "state")}
    for job_id, waiting in active.items():
        for future in waiting:
            future._vanished = job_id not in states
            future._seen_state = states.get(job_id, "deleted")
    ended = [job_id for job_id, state in states.items() if state in END_STATES]
    if ended:
        for fresh in BalsamJob.objects.filter(pk__in=ended):
            for future in active[str(fresh.pk)]:
                _adopt(future.job, fresh)


def _adopt(job: Any, fresh: Any) -> None:
    """Make ``job`` hold the row just loaded into ``fresh``, as ``job.refresh_from_db()`` would
    (without a query per job): every field, the loaded-state bookkeeping, empty relation caches."""
    if job is not fresh:
        job.__dict__.update(fresh.__dict__)
