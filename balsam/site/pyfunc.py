"""Python-function tasks: site apps whose class defines ``run(self, ...)`` instead of a command.

A job of such an app stores its ``run()`` arguments (the job's ``parameters``, and its
positional ``args`` if any, checked against ``run``'s signature when the job is created)
serialized with cloudpickle in the side table ``core_jobpayload`` (one row per job, deleted with
it: migration 0011): a dict of keyword arguments, or, when the job has positional values (for
positional-only parameters or ``*args``), the pair ``(positional list, keyword dict)``. Its classic
``args`` column holds the runner command, ``python -m balsam.launcher.pyfunc_task``, so every
launcher path starts it like any command; serial mode hands it to a warm Python worker instead.
The runner loads the arguments, calls ``run()`` in the job's working directory with ``self.job``
bound to a :class:`TaskJob`, and writes the outcome to the same row: the cloudpickled return
value, or the cloudpickled exception with its traceback text (``failed``), and which process ran
it (``worker``: host:pid). (In serial mode a small task's row comes with the work order and its
outcome goes back to the launcher's master, which writes it with the task's end:
:mod:`balsam.core.payloads`, :func:`task_from_row`, :func:`inline_outcome`.) The task then
exits 0 (RUN_DONE) or 1 (RUN_ERROR, the traceback in the output tail), so the usual state rules
follow. The client reads the outcome back with
:func:`load_outcomes` and :func:`reraise`.

Everything here is plain DB-API with ``%s`` parameters (psycopg2 cursors or Django's).
"""
from __future__ import annotations

import inspect
import json
import os
import pickle
import shlex
import socket
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from balsam.core.payloads import PAYLOAD_TABLE, OutcomeRow
from balsam.db.dbapi import Cursor
from balsam.errors import BalsamError

RUNNER_MODULE = "balsam.launcher.pyfunc_task"
"""The module the launcher runs for a function task (``python -m``; serial mode's warm
workers recognise this command and run the task in a process that is already up)."""


def runner_command(python: str = sys.executable) -> str:
    """The command line stored as a function job's ``args``."""
    return f"{shlex.quote(python)} -m {RUNNER_MODULE}"


Arguments = Union[dict[str, Any], tuple[list[Any], dict[str, Any]]]
"""A stored payload: keyword arguments, or (positional, keyword) arguments."""


class SerializationError(BalsamError):
    """A value that cloudpickle cannot serialize (an argument of a function task)."""


def serialize(value: Any) -> bytes:
    """``value`` as cloudpickle bytes (lambdas, local classes and closures included)."""
    # Imported here: ~25 ms that command apps' hook runs and `balsam site` need not pay.
    import cloudpickle

    data: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return data


def deserialize(data: bytes) -> Any:
    """The value :func:`serialize` wrote."""
    return pickle.loads(bytes(data))


def json_view(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """What the job's JSON ``parameters`` column shows of ``run()``'s arguments: JSON values as
    they are, anything else as its ``repr`` (the real values are in the payload table)."""
    view: dict[str, Any] = {}
    for name, value in parameters.items():
        try:
            json.dumps(value)
            view[name] = value
        except (TypeError, ValueError):
            view[name] = f"<pickled {type(value).__name__}: {repr(value)[:120]}>"
    return view


def serialized_arguments(app_name: str, kwargs: Mapping[str, Any],
                         args: Sequence[Any] = ()) -> bytes:
    """The payload of ``run(*args, **kwargs)``: ``kwargs`` alone when there are no positional
    values (the form every earlier job has), else ``(list(args), kwargs)``
    (:class:`SerializationError` naming the argument that cannot be serialized)."""
    payload: Arguments = (list(args), dict(kwargs)) if args else dict(kwargs)
    try:
        return serialize(payload)
    except Exception:  # noqa: BLE001 - find which argument, for the message
        named = [(f"positional argument {i + 1}", v) for i, v in enumerate(args)]
        named += [(f"parameter {name!r}", v) for name, v in kwargs.items()]
        for what, value in named:
            try:
                serialize(value)
            except Exception as exc:  # noqa: BLE001 - cloudpickle raises many kinds
                raise SerializationError(f"{what} of app {app_name} cannot be serialized with "
                                         f"cloudpickle: {type(exc).__name__}: {exc}")
        raise


def split_arguments(payload: Arguments) -> tuple[list[Any], dict[str, Any]]:
    """(positional, keyword) arguments of a stored payload (either form of
    :func:`serialized_arguments`)."""
    if isinstance(payload, tuple):
        args, kwargs = payload
        return list(args), dict(kwargs)
    return [], dict(payload)


# ---- the outcome --------------------------------------------------------------------------

class RemoteTraceback(Exception):
    """The traceback text of a function task's exception, as it was on the compute node
    (set as the re-raised exception's ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.text.rstrip()}\n\"\"\""


class TaskFailed(BalsamError):
    """A function task raised an exception that cannot be re-created here (its pickle does not
    load); the message holds its traceback text."""


@dataclass
class Outcome:
    """What one run of a function task produced."""

    failed: bool
    value: bytes
    """cloudpickle bytes: the return value, or the exception (``failed``)."""
    traceback: str = ""
    worker: str = ""


def call(cls: type, job: Any, arguments: Arguments) -> Outcome:
    """Run ``cls(job).run(*args, **kwargs)`` with the stored ``arguments`` (a payload:
    :func:`split_arguments`) and capture its outcome (never raises for the task's own
    exceptions; a return value that cannot be serialized is a failure saying so)."""
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        args, kwargs = split_arguments(arguments)
        value = cls(job).run(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - SystemExit/KeyboardInterrupt in run() too
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return Outcome(True, _exception_bytes(exc), text, worker)
    try:
        return Outcome(False, serialize(value), "", worker)
    except Exception as exc:  # noqa: BLE001 - the value is the problem
        text = (f"the return value of {cls.__name__}.run() cannot be serialized with "
                f"cloudpickle: {type(exc).__name__}: {exc}\n")
        return Outcome(True, _exception_bytes(TypeError(text.strip())), text, worker)


def _exception_bytes(exc: BaseException) -> bytes:
    try:
        return serialize(exc)
    except Exception:  # noqa: BLE001 - an exception holding something unpicklable
        return serialize(TaskFailed(f"{type(exc).__name__}: {exc}"))


def reraise(outcome: Outcome, job_label: str) -> None:
    """Raise the task's exception here, its remote traceback text as ``__cause__``."""
    try:
        exc = deserialize(outcome.value)
    except Exception as load_error:  # noqa: BLE001 - e.g. its class is not importable here
        raise TaskFailed(f"{job_label} raised an exception that cannot be loaded here "
                         f"({type(load_error).__name__}: {load_error}); its traceback:\n"
                         f"{outcome.traceback}")
    if not isinstance(exc, BaseException):
        raise TaskFailed(f"{job_label} failed:\n{outcome.traceback}")
    raise exc from RemoteTraceback(outcome.traceback)


# ---- the task's view of its job -----------------------------------------------------------

@dataclass
class TaskJob:
    """``self.job`` inside ``run()``: the job's identity and values (read-only; the hooks get
    the full :class:`balsam.api.Job`)."""

    id: str
    app_name: str
    workdir: str
    """The absolute working directory (the current directory while ``run()`` runs)."""
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


# ---- signature checks ---------------------------------------------------------------------

def run_signature(cls: type) -> inspect.Signature:
    """The signature of ``cls.run`` without ``self``."""
    params = list(inspect.signature(cls.run).parameters.values())  # type: ignore[attr-defined]
    return inspect.Signature(params[1:])


@dataclass
class BoundCall:
    """``run()``'s arguments for one job, checked against its signature."""

    args: list[Any]
    """Positional values: those of positional-only parameters (and, when ``*args`` gets
    values, of every parameter before it), then ``*args``'s; empty when every value can be
    passed by name."""
    kwargs: dict[str, Any]
    """Every other value by name (defaults applied; ``**kwargs``'s entries flattened)."""
    named: dict[str, Any]
    """Every value by parameter name, ``*args``'s as a list under its name: what the job's
    ``parameters`` column shows."""


def bind_arguments(cls: type, given: Mapping[str, Any], args: Sequence[Any] = ()) -> BoundCall:
    """``args`` and ``given`` checked against ``run()``'s signature and completed with its
    defaults; ValueError naming what does not fit. A value given by position for a parameter
    that has a name is stored by name (as 0.7 stores ``parameters``); only positional-only
    parameters and ``*args`` keep positions."""
    sig = run_signature(cls)
    try:
        bound = sig.bind(*args, **given)
    except TypeError as exc:
        raise ValueError(f"{exc} (run{sig})")
    bound.apply_defaults()
    call = BoundCall([], {}, {})
    params = list(sig.parameters.values())
    # Values for *args can only follow every parameter before it given by position.
    by_position = any(p.kind is p.VAR_POSITIONAL and bound.arguments.get(p.name) for p in params)
    for p in params:
        value = bound.arguments.get(p.name)
        if p.kind is p.POSITIONAL_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and by_position):
            call.args.append(value)
            call.named[p.name] = value
        elif p.kind is p.VAR_POSITIONAL:
            call.args.extend(value or ())
            if value:
                call.named[p.name] = list(value)
        elif p.kind is p.VAR_KEYWORD:
            call.kwargs.update(value or {})
            call.named.update(value or {})
        else:
            call.kwargs[p.name] = value
            call.named[p.name] = value
    return call


# ---- the payload table (any DB-API cursor) ------------------------------------------------

def store_arguments(cursor: Cursor, rows: Iterable[tuple[str, bytes]]) -> None:
    """Insert the serialized arguments of new jobs ((job id, bytes) pairs)."""
    rows = list(rows)
    for start in range(0, len(rows), 1000):
        chunk = rows[start:start + 1000]
        values = ", ".join(["(%s, %s)"] * len(chunk))
        cursor.execute(f"INSERT INTO {PAYLOAD_TABLE} (job_id, args) VALUES {values}",
                       [x for job_id, data in chunk for x in (str(job_id), _binary(data))])


def _binary(data: bytes) -> Any:
    """``data`` in the form the cursor's driver binds as bytea (memoryview works with both
    psycopg2 and psycopg 3)."""
    return memoryview(data)


TASK_QUERY = (f"SELECT j.application, j.tags, j.data, j.parameters, p.args "
              f"FROM core_balsamjob j LEFT JOIN {PAYLOAD_TABLE} p ON p.job_id = j.job_id "
              f"WHERE j.job_id = %s")


def load_task(cursor: Cursor, job_id: str, workdir: str) -> tuple[TaskJob, Optional[Arguments]]:
    """The job bound as ``self.job`` and its stored ``run()`` arguments (the payload of
    :func:`serialized_arguments`; None: no payload row)."""
    cursor.execute(TASK_QUERY, [job_id])
    found = cursor.fetchone()
    if found is None:
        raise BalsamError(f"job {job_id} does not exist")
    return task_from_row(job_id, workdir, found)


def task_from_row(job_id: str, workdir: str, row: Sequence[Any]
                  ) -> tuple[TaskJob, Optional[dict[str, Any]]]:
    """What :func:`load_task` returns, from the job's (application, tags, data, parameters,
    args) as :data:`TASK_QUERY` or :func:`balsam.core.payloads.inline_tasks` read them (JSON as
    text or as values)."""
    app_name, tags, data, params, args = row
    job = TaskJob(job_id, app_name, workdir, _json(params), _json(tags), _json(data))
    return job, (None if args is None else deserialize(args))


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value or {})


def inline_outcome(job_id: str, outcome: Outcome, max_bytes: int) -> Optional[OutcomeRow]:
    """``outcome`` as the row the launcher's master writes in its status batch
    (:func:`balsam.core.payloads.store_outcomes`), or None if it is to be written here (bigger
    than ``max_bytes``, or text PostgreSQL would refuse: its error is the runner's to report)."""
    if len(outcome.value) + len(outcome.traceback) > max_bytes \
            or "\x00" in outcome.traceback or "\x00" in outcome.worker:
        return None
    return (job_id, outcome.failed, outcome.value, outcome.traceback, outcome.worker)


def store_outcome(cursor: Cursor, job_id: str, outcome: Outcome) -> None:
    """Write the outcome of a run (replacing an earlier run's)."""
    cursor.execute(f"UPDATE {PAYLOAD_TABLE} SET result = %s, failed = %s, traceback = %s, "
                   f"worker = %s, finished_at = now() WHERE job_id = %s",
                   [_binary(outcome.value), outcome.failed, outcome.traceback, outcome.worker,
                    job_id])


def load_outcomes(cursor: Cursor, job_ids: Iterable[str]) -> dict[str, Outcome]:
    """The recorded outcomes of ``job_ids`` (jobs never run, or not function jobs, absent)."""
    ids = [str(j) for j in job_ids]
    if not ids:
        return {}
    cursor.execute(f"SELECT job_id::text, failed, result, traceback, worker FROM {PAYLOAD_TABLE} "
                   f"WHERE job_id = ANY(%s::uuid[]) AND result IS NOT NULL", [ids])
    return {str(j): Outcome(bool(f), bytes(r), t or "", w or "")
            for j, f, r, t, w in cursor.fetchall()}
