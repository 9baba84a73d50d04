"""Job states, their groups and the allowed-transition table.

States are data. This module imports nothing from Django or the rest of Balsam so that every
component (launcher, service, CLI fast paths, platform code) can reason about states cheaply.
The one writer of job states, :mod:`balsam.core.lifecycle`, checks every change against
:data:`ALLOWED`.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable

from balsam.errors import BalsamError


class State(str, enum.Enum):
    """A job's state. Members compare equal to their names, so ``State.RUNNING == "RUNNING"``."""

    CREATED = "CREATED"
    """Inserted; dependencies not checked yet."""
    AWAITING_PARENTS = "AWAITING_PARENTS"
    """At least one parent has not reached JOB_FINISHED."""
    READY = "READY"
    """Dependencies satisfied; stage-in pending."""
    STAGED_IN = "STAGED_IN"
    """Input data in the working directory; preprocess pending."""
    PREPROCESSED = "PREPROCESSED"
    """Ready to run: a launcher may claim it."""
    RUNNING = "RUNNING"
    """Claimed by a launcher and executing."""
    RUN_DONE = "RUN_DONE"
    """The application exited with status 0; postprocess pending."""
    POSTPROCESSED = "POSTPROCESSED"
    """Postprocess done; stage-out pending."""
    JOB_FINISHED = "JOB_FINISHED"
    """Done. Final."""
    RUN_TIMEOUT = "RUN_TIMEOUT"
    """Stopped before it finished (walltime, signal, lost launcher); retry or handler pending."""
    RUN_ERROR = "RUN_ERROR"
    """The application exited with a non-zero status; error handler pending."""
    RESTART_READY = "RESTART_READY"
    """Ready to run again in its existing working directory."""
    FAILED = "FAILED"
    """Failed for good. Final (a user may reset it)."""
    USER_KILLED = "USER_KILLED"
    """Killed by a user. Final; never left except by an explicit, forced user request."""

    def __str__(self) -> str:
        return self.value


S = State

STATES: list[str] = [s.value for s in State]
"""Every state name, in lifecycle order (classic ``balsam.core.models.STATES``)."""

PROCESSABLE_STATES: list[str] = [
    "CREATED", "AWAITING_PARENTS", "READY", "STAGED_IN",
    "RUN_DONE", "POSTPROCESSED", "RUN_TIMEOUT", "RUN_ERROR",
]
"""States in which a transition worker (not a compute node) has work to do."""

RUNNABLE_STATES: list[str] = ["PREPROCESSED", "RESTART_READY"]
"""States in which a launcher may claim and run the job."""

ACTIVE_STATES: list[str] = ["RUNNING"]
"""States in which the job holds compute resources."""

END_STATES: list[str] = ["JOB_FINISHED", "FAILED", "USER_KILLED"]
"""Final states."""

WAITING_STATES: list[str] = ["CREATED", "AWAITING_PARENTS"]
"""States of a job that still waits on its parents."""

_groups = [PROCESSABLE_STATES, RUNNABLE_STATES, ACTIVE_STATES, END_STATES]
assert sorted(sum(_groups, [])) == sorted(STATES), "state groups must partition STATES"

_T = dict[State, frozenset[State]]


def _table(spec: dict[State, Iterable[State]]) -> _T:
    return {src: frozenset(dst) for src, dst in spec.items()}


ALLOWED: _T = _table({
    S.CREATED: {S.AWAITING_PARENTS, S.READY, S.STAGED_IN, S.PREPROCESSED, S.FAILED, S.USER_KILLED},
    S.AWAITING_PARENTS: {S.READY, S.STAGED_IN, S.PREPROCESSED, S.FAILED, S.USER_KILLED},
    S.READY: {S.STAGED_IN, S.PREPROCESSED, S.FAILED, S.USER_KILLED},
    S.STAGED_IN: {S.PREPROCESSED, S.FAILED, S.USER_KILLED},
    S.PREPROCESSED: {S.RUNNING, S.FAILED, S.USER_KILLED},
    S.RESTART_READY: {S.RUNNING, S.FAILED, S.USER_KILLED},
    S.RUNNING: {S.RUN_DONE, S.RUN_ERROR, S.RUN_TIMEOUT, S.USER_KILLED},
    # A postprocess script may decide the outcome itself (classic handler semantics).
    S.RUN_DONE: {S.POSTPROCESSED, S.JOB_FINISHED, S.RESTART_READY, S.FAILED, S.USER_KILLED},
    S.POSTPROCESSED: {S.JOB_FINISHED, S.FAILED, S.USER_KILLED},
    S.RUN_TIMEOUT: {S.RESTART_READY, S.POSTPROCESSED, S.JOB_FINISHED, S.FAILED, S.USER_KILLED},
    S.RUN_ERROR: {S.RESTART_READY, S.POSTPROCESSED, S.JOB_FINISHED, S.FAILED, S.USER_KILLED},
    S.JOB_FINISHED: frozenset(),
    S.FAILED: frozenset(),
    S.USER_KILLED: frozenset(),
})
"""System transitions: what launchers, transition workers and handlers may do."""

USER_TARGETS: frozenset[State] = frozenset(s for s in State if s is not S.RUNNING)
"""States a user may set by hand (``balsam modify``, ``job.update_state``). Only a launcher's claim
makes a job RUNNING, so that nothing pretends a job runs when no launcher holds it."""


class InvalidStateError(BalsamError, ValueError):
    """A state name that is not one of :data:`STATES`, or a forbidden transition."""


def sql_in(states: Iterable[State | str]) -> str:
    """``'A', 'B'``: a SQL list of state names, for ``state IN (...)`` (each checked by
    :class:`State`, so nothing else can enter the SQL). Here rather than in
    :mod:`balsam.core.routing` (which re-exports it) so that the CLI's reads need not build the
    routing table."""
    return ", ".join(f"'{State(s).value}'" for s in states)


def validate_state(name: str) -> State:
    """Return the :class:`State` named ``name`` or raise :class:`InvalidStateError`."""
    try:
        return State(str(name).strip().upper())
    except ValueError:
        raise InvalidStateError(f"invalid state {name!r}: expected one of {', '.join(STATES)}")


def allowed_sources(target: State, *, user: bool = False, force: bool = False) -> frozenset[State]:
    """The states from which a job may move to ``target``.

    System actors follow :data:`ALLOWED`. A ``user`` request may move a job from any state to any
    state in :data:`USER_TARGETS`, except, unless ``force`` is also given, out of USER_KILLED (a
    killed job is never resurrected by accident) and out of RUNNING other than to USER_KILLED (a
    launcher holds a running job; making it runnable again would run it twice).
    """
    if user:
        if target not in USER_TARGETS:
            return frozenset()
        sources = {s for s in State if s is not target}
        if not force:
            sources.discard(S.USER_KILLED)
            if target is not S.USER_KILLED:
                sources.discard(S.RUNNING)
        return frozenset(sources)
    return frozenset(src for src, dsts in ALLOWED.items() if target in dsts)


def check_transition(src: str, dst: str, *, user: bool = False, force: bool = False) -> None:
    """Raise :class:`InvalidStateError` unless ``src -> dst`` is allowed."""
    s, d = validate_state(src), validate_state(dst)
    if s not in allowed_sources(d, user=user, force=force):
        who = "a user" if user else "Balsam"
        raise InvalidStateError(f"{who} may not move a job from {s.value} to {d.value}")
