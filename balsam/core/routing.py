"""What follows each job state: the routing table, as data.

:data:`balsam.core.states.ALLOWED` says which moves are *permitted*; :data:`ROUTES` says which
move Balsam *makes*, who makes it, and when. One row per (state, condition): the actor that
handles a job in ``source`` when ``when`` holds, the step it runs (none for a pure state write)
and the states it may leave the job in. A newcomer answers "what happens to a job after
RUN_DONE?" by reading the RUN_DONE rows.

The processing code reads this table: :mod:`balsam.processing.steps` dispatches a claimed job
to the step of its state's row, and the SQL state lists of :mod:`balsam.processing.transitions`
and :mod:`balsam.processing.worker` are :func:`sql_in` of :func:`states_of`. Conditions are
evaluated there (in SQL, over the job and its app); here they are names with their meaning.
``tests/test_routing.py`` checks that every routed move is in :data:`ALLOWED`.

Like :mod:`balsam.core.states`, this module imports no Django and nothing else of Balsam.
"""
from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import NamedTuple

from balsam.core.states import State
from balsam.core.states import sql_in as sql_in  # re-exported (its callers say routing.sql_in)

S = State


class Actor(str, enum.Enum):
    """Who moves a job out of a state."""

    PARENTS = "parents"
    """The parents check of a processing pass (``processing.transitions.advance``)."""
    PURE = "pure"
    """A scriptless state write of a processing pass (``processing.transitions.advance``)."""
    WORKER = "worker"
    """A transition worker running a step (``processing.worker`` / ``processing.steps``)."""
    TRANSFER = "transfer"
    """The transfer step (``processing.transfers``)."""
    LAUNCHER = "launcher"
    """A launcher: it claims runnable jobs and records how their run ended."""


class Step(str, enum.Enum):
    """What an actor runs for the job (its name appears in messages: "preprocess failed")."""

    NONE = "none"
    PARENTS = "parents check"
    STAGE_IN = "stage-in"
    PREPROCESS = "preprocess"
    POSTPROCESS = "postprocess"
    ERROR_HANDLER = "error handler"
    TIMEOUT_HANDLER = "timeout handler"
    STAGE_OUT = "stage-out"
    RUN = "run"


class When(str, enum.Enum):
    """The condition of a route, in words (evaluated by the processing code)."""

    PARENTS_PENDING = "a parent has not reached JOB_FINISHED (only a CREATED job moves)"
    PARENTS_DONE = ("every parent JOB_FINISHED (or none, or wait_for_parents off): READY if "
                    "something must be staged in or linked, STAGED_IN if only a preprocess "
                    "script remains, else PREPROCESSED")
    PARENTS_BAD = "a parent FAILED or was killed, or the application does not exist"
    NO_STAGE_IN = "nothing to stage in or link: STAGED_IN if a preprocess script, else PREPROCESSED"
    STAGE_IN = "a stage_in_url, transfer slots in, or input_files from parents"
    NO_PREPROCESS = "the app has no preprocess script"
    PREPROCESS = "the app has a preprocess script"
    NO_POSTPROCESS = ("the app has no postprocess script: POSTPROCESSED if something to stage "
                      "out, else JOB_FINISHED")
    POSTPROCESS = ("the app has a postprocess script: POSTPROCESSED (+ JOB_FINISHED if nothing "
                   "to stage out), or the state the script set")
    NO_STAGE_OUT = "nothing to stage out"
    STAGE_OUT = "a stage_out_url with stage_out_files, or transfer slots out"
    HANDLED = ("post_error_handler / post_timeout_handler set and a postprocess script: the "
               "state the handler set (left unchanged -> FAILED)")
    UNHANDLED = "no handler: RUN_ERROR -> FAILED"
    TIMEOUT_RETRY = ("no handler and auto_timeout_retry: RESTART_READY once the back-off "
                     "waited, else FAILED")
    OVER_RETRY_LIMIT = "failed runs exceed the job's retry limit, handler or not"
    CLAIMED = "a launcher claims it (it fits the launcher's nodes, tags, GPUs)"
    RAN = "the run ended: exit 0, non-zero exit, or stopped / lost"


HANDLER_OUTCOMES: frozenset[State] = frozenset(
    {S.RESTART_READY, S.POSTPROCESSED, S.JOB_FINISHED, S.FAILED})
"""The states an error or timeout handler may set (classic handler semantics)."""


class Route(NamedTuple):
    """One row of :data:`ROUTES` (a named tuple, not a dataclass: ``balsam ls`` imports this
    module, and ``dataclasses`` brings ``inspect`` and ``ast``, ~7 ms of every CLI start)."""

    source: State
    when: When
    actor: Actor
    step: Step
    targets: frozenset[State]


def _r(source: State, when: When, actor: Actor, step: Step, targets: Iterable[State]) -> Route:
    return Route(source, when, actor, step, frozenset(targets))


ROUTES: tuple[Route, ...] = (
    _r(S.CREATED, When.PARENTS_PENDING, Actor.PARENTS, Step.PARENTS, {S.AWAITING_PARENTS}),
    *(r for src in (S.CREATED, S.AWAITING_PARENTS) for r in (
        _r(src, When.PARENTS_DONE, Actor.PARENTS, Step.PARENTS,
           {S.READY, S.STAGED_IN, S.PREPROCESSED}),
        _r(src, When.PARENTS_BAD, Actor.PARENTS, Step.PARENTS, {S.FAILED}))),
    _r(S.READY, When.NO_STAGE_IN, Actor.PURE, Step.NONE, {S.STAGED_IN, S.PREPROCESSED}),
    _r(S.READY, When.STAGE_IN, Actor.WORKER, Step.STAGE_IN, {S.STAGED_IN, S.PREPROCESSED}),
    _r(S.STAGED_IN, When.NO_PREPROCESS, Actor.PURE, Step.NONE, {S.PREPROCESSED}),
    _r(S.STAGED_IN, When.PREPROCESS, Actor.WORKER, Step.PREPROCESS, {S.PREPROCESSED}),
    _r(S.PREPROCESSED, When.CLAIMED, Actor.LAUNCHER, Step.RUN, {S.RUNNING}),
    _r(S.RESTART_READY, When.CLAIMED, Actor.LAUNCHER, Step.RUN, {S.RUNNING}),
    _r(S.RUNNING, When.RAN, Actor.LAUNCHER, Step.RUN, {S.RUN_DONE, S.RUN_ERROR, S.RUN_TIMEOUT}),
    _r(S.RUN_DONE, When.NO_POSTPROCESS, Actor.PURE, Step.NONE, {S.POSTPROCESSED, S.JOB_FINISHED}),
    _r(S.RUN_DONE, When.POSTPROCESS, Actor.WORKER, Step.POSTPROCESS,
       {S.POSTPROCESSED, S.JOB_FINISHED} | HANDLER_OUTCOMES),
    _r(S.POSTPROCESSED, When.NO_STAGE_OUT, Actor.PURE, Step.NONE, {S.JOB_FINISHED}),
    _r(S.POSTPROCESSED, When.STAGE_OUT, Actor.TRANSFER, Step.STAGE_OUT, {S.JOB_FINISHED}),
    _r(S.RUN_ERROR, When.OVER_RETRY_LIMIT, Actor.PURE, Step.NONE, {S.FAILED}),
    _r(S.RUN_ERROR, When.HANDLED, Actor.WORKER, Step.ERROR_HANDLER, HANDLER_OUTCOMES),
    _r(S.RUN_ERROR, When.UNHANDLED, Actor.PURE, Step.NONE, {S.FAILED}),
    _r(S.RUN_TIMEOUT, When.OVER_RETRY_LIMIT, Actor.PURE, Step.NONE, {S.FAILED}),
    _r(S.RUN_TIMEOUT, When.HANDLED, Actor.WORKER, Step.TIMEOUT_HANDLER, HANDLER_OUTCOMES),
    _r(S.RUN_TIMEOUT, When.TIMEOUT_RETRY, Actor.PURE, Step.NONE, {S.RESTART_READY, S.FAILED}),
)
"""Every system route (user requests, ``balsam kill`` / ``modify``, follow
:func:`balsam.core.states.allowed_sources` instead). Final states have no row."""


def routes_from(source: State) -> tuple[Route, ...]:
    """The rows of ``source``, in table order."""
    return tuple(r for r in ROUTES if r.source is source)


def states_of(*actors: Actor, steps: Iterable[Step] = ()) -> list[State]:
    """The states with a route by one of ``actors`` or running one of ``steps``, in lifecycle
    order."""
    wanted = set(steps)
    return [s for s in State if any(r.actor in actors or r.step in wanted for r in routes_from(s))]


def worker_step(source: str) -> Step | None:
    """The step a transition worker runs for a job in ``source`` (None: none)."""
    for r in ROUTES:
        if r.source.value == source and r.actor is Actor.WORKER:
            return r.step
    return None


def step_name(source: str) -> str:
    """The name of the step that handles ``source`` in messages ("preprocess failed: ...")."""
    for r in ROUTES:
        if r.source.value == source and r.actor in (Actor.WORKER, Actor.TRANSFER):
            return r.step.value
    return source


def step_state(step: Step) -> State:
    """The (first) state whose row runs ``step``."""
    return next(r.source for r in ROUTES if r.step is step)


STAGE_IN_STATE: State = step_state(Step.STAGE_IN)
"""The state in which a job's inputs are staged in (its transfer items of direction ``in``)."""
STAGE_OUT_STATE: State = step_state(Step.STAGE_OUT)
"""The state in which a job's outputs are staged out (its transfer items of direction ``out``)."""

PARENT_STATES: list[State] = states_of(Actor.PARENTS)
"""States the parents check reads (CREATED, AWAITING_PARENTS)."""
PURE_STATES: list[State] = states_of(Actor.PURE)
"""States a processing pass may move without running anything."""
WORKER_STATES: list[State] = states_of(Actor.WORKER)
"""States a transition worker has a step for."""
HANDLER_STATES: list[State] = states_of(steps=(Step.ERROR_HANDLER, Step.TIMEOUT_HANDLER))
"""States of a run that ended badly (a handler, a retry or FAILED follows)."""
PROCESSING_STATES: list[State] = states_of(Actor.PARENTS, Actor.PURE, Actor.WORKER,
                                           Actor.TRANSFER)
"""States in which processing (not a compute node) has work: classic PROCESSABLE_STATES."""
CLAIMABLE_STATES: list[State] = [r.source for r in ROUTES if r.when is When.CLAIMED]
"""States a launcher may claim: classic RUNNABLE_STATES."""

LAUNCHER_MOVES: dict[State, tuple[str, ...]] = {
    t: tuple(r.source.value for r in ROUTES if r.actor is Actor.LAUNCHER and t in r.targets)
    for t in State if any(r.actor is Actor.LAUNCHER and t in r.targets for r in ROUTES)}
"""The moves a launcher makes: each target from these sources only (starting a held runnable
job, recording the end of its run)."""

LAUNCHER_FOLLOW_ON: dict[State, State] = {S.RUN_DONE: S.JOB_FINISHED}
"""Pure moves a launcher makes in the same row update as the run's end it records, where the
route's condition holds (``When.NO_POSTPROCESS`` with ``When.NO_STAGE_OUT``: no postprocess
script, nothing to stage out; decided in SQL by
:data:`balsam.processing.transitions.FINISH_ON_RECORD`), so a plain run costs no processing
pass; both events are recorded. Every other RUN_DONE job is left to processing as its row
says."""
