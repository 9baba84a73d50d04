"""The script-running steps of a job, without the database: what to run and which states follow.

A transition worker (:mod:`balsam.processing.worker`) claims a job, calls :func:`run_step` with
everything the step needs (a :class:`StepJob`), and writes the :class:`Outcome` it returns (the worker rows of
:data:`balsam.core.routing.ROUTES`, which this module dispatches by):

=================  ===============================================  ==========================
state              step                                             success
=================  ===============================================  ==========================
READY              link ``input_files`` from the parents' working   STAGED_IN (+ PREPROCESSED
                   directories (``stage_in_url`` was staged by the  if no preprocess script)
                   transfer step, :mod:`.transfers`)
STAGED_IN          the app's preprocess script                      PREPROCESSED
RUN_DONE           the app's postprocess script                     POSTPROCESSED (+
                                                                    JOB_FINISHED if nothing to
                                                                    stage out), unless the
                                                                    script set the state
RUN_ERROR          postprocess with ``BALSAM_JOB_ERROR=TRUE``       the state the script set;
RUN_TIMEOUT        postprocess with ``BALSAM_JOB_TIMEOUT=TRUE``     left unchanged -> FAILED
=================  ===============================================  ==========================

Stage-out (POSTPROCESSED) is the transfer step's alone. Any failure (input link, missing
script, non-zero exit, timeout) -> FAILED with a message saying what failed and the log's tail.
A script stopped because the job was killed meanwhile writes nothing (the job stays
USER_KILLED).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from balsam.core import jobenv, routing
from balsam.core.routing import Step
from balsam.core.states import State
from balsam.errors import BalsamError
from balsam.processing import inputs, scripts
from balsam.processing.warm_hooks import HookRunner

HANDLER_FLAGS = {State.RUN_ERROR.value: "BALSAM_JOB_ERROR", State.RUN_TIMEOUT.value: "BALSAM_JOB_TIMEOUT"}


@dataclass
class StepJob:
    """A claimed job as a step needs it: its row (``job_id``, ``state``, staging fields, ...),
    its app's scripts, its working directory, and its parents as (id, working directory)."""

    row: Mapping[str, Any]
    preprocess: str
    postprocess: str
    envscript: Optional[str]
    workdir: str
    parents: Sequence[tuple[str, str]]


@dataclass
class Outcome:
    """What to write: ``moves`` in order, each from the state the job is in then, or nothing.

    ``handler``: the job ran its error/timeout handler successfully -- if it is still in its
    original state, the handler did not set an outcome and the job fails with
    ``unhandled_message``. ``write`` is False when nothing at all may be written (the step was
    stopped because the job was killed or the worker is stopping)."""

    moves: list[tuple[State, str]] = field(default_factory=list)
    handler: bool = False
    unhandled_message: str = ""
    write: bool = True


@dataclass(frozen=True)
class Limits:
    """Time limits of the steps (seconds) and how a stopped script is killed."""

    script_timeout: float
    kill_grace: float = 5.0
    tail_lines: int = 30


def run_step(job: StepJob, db_path: str, base_env: Mapping[str, str], limits: Limits,
             should_abort: Optional[Callable[[], bool]] = None,
             hooks: Optional[HookRunner] = None) -> Outcome:
    """Run the step of ``job``'s current state: the worker step of its row in
    :data:`balsam.core.routing.ROUTES` (see the module docstring). ``hooks``: the worker's warm
    hook runner, for site apps' hook commands (:mod:`balsam.processing.warm_hooks`)."""
    state = job.row["state"]
    step = routing.worker_step(state)
    try:
        if step is Step.STAGE_IN:
            return _stage_in(job, db_path)
        if step is Step.PREPROCESS:
            return _script(job, "preprocess", db_path, base_env, limits, should_abort, hooks)
        if step in (Step.POSTPROCESS, Step.ERROR_HANDLER, Step.TIMEOUT_HANDLER):
            return _script(job, "postprocess", db_path, base_env, limits, should_abort, hooks)
    except BalsamError as exc:
        return Outcome([(State.FAILED, f"{routing.step_name(state)} failed: {exc}")])
    return Outcome(write=False)  # not a step state (changed meanwhile): nothing to do


def _stage_in(job: StepJob, db_path: str) -> Outcome:
    row = job.row
    said = []
    if row.get("stage_in_url") or row.get("staged_files"):  # items done (claim_step checks)
        origin = f" from {row['stage_in_url']}" if row.get("stage_in_url") else ""
        said.append(f"staged in {row.get('staged_files', 0)} item(s){origin}")
    if row.get("input_files") and job.parents:
        linked = inputs.link_input_files(job.workdir, row["input_files"], job.parents,
                                         trusted_roots=[os.path.join(db_path, "data")])
        said.append(f"linked {len(linked)} input file(s) from {len(job.parents)} parent(s)")
    moves = [(State.STAGED_IN, "; ".join(said) or "nothing to stage in")]
    if not job.preprocess:
        moves.append((State.PREPROCESSED, "nothing to preprocess: ready to run"))
    return Outcome(moves)


def _script(job: StepJob, kind: str, db_path: str, base_env: Mapping[str, str], limits: Limits,
            should_abort: Optional[Callable[[], bool]],
            hooks: Optional[HookRunner] = None) -> Outcome:
    row = job.row
    state = row["state"]
    command = job.preprocess if kind == "preprocess" else job.postprocess
    extra, header = {}, []
    flag = HANDLER_FLAGS.get(state)
    if flag is not None:
        extra[flag] = "TRUE"
        header.append(f"# Invoked to handle {state}")
    env = scripts.script_environment(
        base_env, jobenv.job_variables(row, [p for p, _ in job.parents], db_path), extra)
    result = scripts.run_script(kind, command, job.workdir, env, envscript=job.envscript,
                                timeout=limits.script_timeout, header=header,
                                should_abort=should_abort, kill_grace=limits.kill_grace,
                                tail_lines=limits.tail_lines, hooks=hooks,
                                app=str(row.get("application") or ""))
    if result.aborted:
        return Outcome(write=False)
    name = routing.step_name(state)
    if not result.ok:
        return Outcome([(State.FAILED, scripts.failure_message(name, result))])
    took = f"{result.seconds:.1f} s"
    if flag is not None:
        return Outcome(handler=True, unhandled_message=(
            f"the {name} ({command}) exited 0 after {took} but left the job {state}: "
            "a handler must set the job's state"))
    if kind == "preprocess":
        return Outcome([(State.PREPROCESSED, f"preprocess done in {took}")])
    moves = [(State.POSTPROCESSED, f"postprocess done in {took}")]
    if not ((row.get("stage_out_url") and row.get("stage_out_files")) or row.get("out_slots")):
        moves.append((State.JOB_FINISHED, "nothing to stage out"))
    return Outcome(moves)
