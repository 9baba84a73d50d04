"""The classic Python API for building and growing workflows: ``balsam.launcher.dag``.

Scripts written for classic Balsam keep working: ``dag.current_job``, ``dag.add_job(...)``,
``dag.add_dependency(...)``, ``dag.spawn_child(...)``, ``dag.kill(...)`` and the rest.

Importing this module does nothing: the module attributes (:data:`JOB_ID`, ``current_job``,
``parents``, ``children``, ``TIMEOUT``, ``ERROR``, ``LAUNCHER_NODES``, ``BalsamJob``,
``history_line``) are resolved when first read (PEP 562), so Django is loaded and the
``BALSAM_*`` environment read only by code that uses them. ``current_job`` is fetched once per
job id and then the same object is returned, so ``dag.current_job.args = ...;
dag.current_job.save()`` works; ``parents`` and ``children`` are fresh querysets on every access.

Differences from classic Balsam (each a defect there): unknown field names are refused
(``ValueError`` naming them) instead of being silently ignored; ``cpu_affinity`` defaults to the
model default ``"none"``; ``LAUNCHER_NODES`` is an int; edges are checked for cycles;
``current_job`` of a deleted job raises :class:`balsam.errors.NotFound` when read, not at import.
"""
from __future__ import annotations

import copy
import os
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

from balsam.core import schema
from balsam.errors import BalsamError, InvalidParentsError, NoApplication, NotFound
from balsam.launcher.dag_db import (  # noqa: F401  (part of the classic dag API)
    add_app,
    get_active_database,
    get_apps,
    get_database_paths,
    submit,
)

if TYPE_CHECKING:
    from balsam.core.models import BalsamJob

# The first seven names are resolved by __getattr__ (``from dag import *`` reads them then).
__all__ = [  # noqa: F822
    "JOB_ID", "TIMEOUT", "ERROR", "LAUNCHER_NODES", "current_job", "parents", "children",
    "add_job", "add_dependency", "spawn_child", "kill", "clone", "wf_from_template",
    "add_app", "get_apps", "get_database_paths", "get_active_database", "submit",
]

_MODEL_NAMES = ("BalsamJob", "ApplicationDefinition", "history_line")
_ENV_NAMES = ("JOB_ID", "current_job", "parents", "children", "TIMEOUT", "ERROR", "LAUNCHER_NODES")

SETTABLE_FIELDS = frozenset(schema.JOB_DEFAULTS) - {"lock"}
"""Job fields a caller may give to :func:`add_job`, :func:`spawn_child` and :func:`clone`
(besides ``parents`` and ``queued_launch``/``queued_launch_id``)."""
_EXTRA_KEYWORDS = frozenset({"parents", "queued_launch", "queued_launch_id"})
_NOT_CLONED = frozenset({"lock", "state", "user_workdir"})
_WF_LOCK_CLASS = 0x6A0B
"""First key of the two-key advisory lock :func:`wf_from_template` holds on the new workflow's
name (PostgreSQL's ``hashtext``, stable across processes, unlike Python's ``hash``)."""

_cached: dict[str, Any] = {"job_id": None, "job": None}


# ---- module attributes, resolved when read -------------------------------------------------------

def __getattr__(name: str) -> Any:
    if name in _MODEL_NAMES:
        from balsam.core import models

        return getattr(models, name)
    if name == "JOB_ID":
        return _job_id() or ""
    if name == "current_job":
        return _current()
    if name in ("parents", "children"):
        job = _current()
        if job is None:
            return None
        return job.get_parents() if name == "parents" else job.get_children()
    if name in ("TIMEOUT", "ERROR"):
        return os.environ.get(f"BALSAM_JOB_{name}", "").strip().upper() == "TRUE"
    if name == "LAUNCHER_NODES":
        text = os.environ.get("BALSAM_LAUNCHER_NODES", "").strip() or "1"
        try:
            return int(text)
        except ValueError:
            raise BalsamError(f"BALSAM_LAUNCHER_NODES={text!r} is not a whole number")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODEL_NAMES) | set(_ENV_NAMES))


def _job_id() -> Optional[uuid.UUID]:
    """The job this process runs for (``BALSAM_JOB_ID``), or None outside a job."""
    text = os.environ.get("BALSAM_JOB_ID", "").strip()
    if not text:
        return None
    try:
        return schema.parse_uuid(text)
    except schema.FieldError:
        raise BalsamError(f"BALSAM_JOB_ID={text!r} is not a job id (UUID)")


def _current() -> Optional[BalsamJob]:
    """The job named by ``BALSAM_JOB_ID`` (one object per id), or None outside a job."""
    job_id = _job_id()
    if job_id is None:
        return None
    if _cached["job_id"] != job_id:
        from balsam.core.models import BalsamJob

        job = BalsamJob.objects.filter(pk=job_id).first()
        if job is None:
            raise NotFound(f"BALSAM_JOB_ID names job {job_id}, which is not in the Balsam DB "
                           "(it was deleted?)")
        _cached.update(job_id=job_id, job=job)
    return _cached["job"]


# ---- jobs ------------------------------------------------------------------------------------------

def environ_text(value: Union[str, Mapping[str, Any], None]) -> str:
    """The classic ``A=1:B=2`` text of ``environ_vars`` given as that text or as a dict."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        for key, val in value.items():
            if not str(key).strip() or any(c in str(key) for c in "=: ") or ":" in str(val):
                raise ValueError(f"environ_vars entry {key}={val}: names may not be empty or contain "
                                 "'=', ':' or spaces, values may not contain ':'")
        return ":".join(f"{key}={val}" for key, val in value.items())
    schema.parse_envstring(str(value))  # FieldError (a ValueError) naming a bad entry
    return str(value)


def _checked(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Job keyword arguments checked and converted; ValueError naming unknown or bad ones."""
    from balsam.core.states import USER_TARGETS, validate_state

    unknown = sorted(set(fields) - SETTABLE_FIELDS - _EXTRA_KEYWORDS)
    if unknown:
        raise ValueError(f"unknown job field(s): {', '.join(unknown)}")
    values = dict(fields)
    if "environ_vars" in values:
        values["environ_vars"] = environ_text(values["environ_vars"])
    for key in SETTABLE_FIELDS.intersection(values):
        if key == "data" and values[key] is None:
            values[key] = {}
        values[key] = schema.coerce_field(key, values[key])
    if "state" in values:
        state = validate_state(values["state"])
        if state not in USER_TARGETS:
            raise ValueError(f"a job cannot be created {state.value}: only a launcher makes a "
                             "job RUNNING")
        values["state"] = state.value
    if "queued_launch" in values:
        launch = values.pop("queued_launch")
        values["queued_launch_id"] = getattr(launch, "pk", launch)
    return values


def _require_app(name: str) -> None:
    from balsam.core.models import ApplicationDefinition

    if not ApplicationDefinition.objects.filter(name=name).exists():
        raise NoApplication(f"application {name!r} does not exist (add it with dag.add_app or "
                            "`balsam app`)")


def _insert(jobs: list[BalsamJob]) -> None:
    # bulk_create checks the new jobs' parents without the graph lock that add_dependency takes
    # (an edge into a new job cannot close a cycle), so many ranks adding jobs at once do not
    # queue behind each other. One transaction: on any error nothing is written.
    from balsam.core.models import BalsamJob

    BalsamJob.objects.bulk_create(jobs)


def add_job(name: str, workflow: str, application: str, description: str = "", args: str = "",
            mpi_flags: str = "", num_nodes: int = 1, ranks_per_node: int = 1,
            cpu_affinity: str = schema.JOB_DEFAULTS["cpu_affinity"], threads_per_rank: int = 1,
            threads_per_core: int = 1, environ_vars: Union[str, Mapping[str, Any], None] = None,
            data: Optional[dict[str, Any]] = None, save: bool = True, **kwargs: Any) -> BalsamJob:
    """Create a job (saved unless ``save=False``) and return it.

    ``kwargs`` may be any other job field (:data:`SETTABLE_FIELDS`), ``parents`` (jobs or ids)
    and ``queued_launch``; anything else raises ``ValueError`` naming it, as does a bad value.
    The application must exist (:class:`~balsam.core.models.NoApplication`). ``environ_vars`` is
    the classic ``"A=1:B=2"`` text or a dict. Inside a job, the new job inherits the current
    job's ``queued_launch`` unless one is given. Parents are checked
    (:class:`~balsam.core.models.InvalidParentsError`).
    """
    fields: dict[str, Any] = dict(
        name=name, workflow=workflow, application=application, description=description,
        args=args, mpi_flags=mpi_flags, num_nodes=num_nodes, ranks_per_node=ranks_per_node,
        cpu_affinity=cpu_affinity, threads_per_rank=threads_per_rank,
        threads_per_core=threads_per_core, environ_vars=environ_vars, data=data, **kwargs)
    values = _checked(fields)
    _require_app(values["application"])
    if "queued_launch_id" not in values:
        running = _current()
        if running is not None:
            values["queued_launch_id"] = running.queued_launch_id
    from balsam.core.models import BalsamJob

    job = BalsamJob(**values)
    if save:
        _insert([job])
    return job


def _job_pk(obj: Any) -> str:
    """The job id of a job, UUID, UUID text or single-row queryset (ValueError otherwise)."""
    from django.db.models import QuerySet

    if isinstance(obj, QuerySet):
        ids = list(obj.values_list("pk", flat=True)[:2])
        if len(ids) != 1:
            raise ValueError(f"a queryset given as a job must match exactly one job, not "
                             f"{'none' if not ids else 'several'}")
        obj = ids[0]
    return str(schema.parse_uuid(getattr(obj, "pk", obj)))  # FieldError is a ValueError


def add_dependency(parent: Any, child: Any) -> None:
    """Make ``child`` wait for ``parent`` (each a job, UUID, UUID text or one-row queryset).

    Refuses (:class:`~balsam.core.models.InvalidParentsError`) missing jobs, self-edges,
    duplicates, edges that would close a cycle, and children that have already started; the
    cycle check walks only the graph below the child.
    """
    from django.db import connection, transaction

    from balsam.core import lifecycle

    parent_id, child_id = _job_pk(parent), _job_pk(child)
    try:
        with transaction.atomic(), connection.cursor() as cur:
            lifecycle.add_dependency(cur, parent_id, child_id)
    except BalsamError as exc:
        raise InvalidParentsError(str(exc))


def _clone_values(job: BalsamJob) -> dict[str, Any]:
    values = {k: copy.deepcopy(getattr(job, k)) for k in schema.JOB_DEFAULTS if k not in _NOT_CLONED}
    values["queued_launch_id"] = job.queued_launch_id
    return values


def clone(job: BalsamJob, **kwargs: Any) -> BalsamJob:
    """An unsaved copy of ``job`` in state CREATED with a new id: every field (and its parents)
    except ``lock``, ``state``, ``user_workdir``, events and launcher hold; ``kwargs`` override
    fields as in :func:`add_job` (unknown names: ``ValueError``)."""
    from balsam.core.models import BalsamJob

    values = _clone_values(job)
    values["parents"] = job.get_parents_by_id()
    values.update(_checked(kwargs))
    return BalsamJob(**values)


def spawn_child(**kwargs: Any) -> BalsamJob:
    """From inside a job: save and return a copy of the current job (see :func:`clone`) whose
    parents are the current job's parents plus the current job.

    ``kwargs`` override fields (unknown names: ``ValueError``; ``parents=`` replaces the default
    parents). The spawning job is recorded as ``data["spawned_by"]`` (its id), and the child's
    ``state_history`` opens with ``spawned by [name | id8]`` as in classic. :class:`BalsamError`
    outside a job.
    """
    running = _current()
    if running is None:
        raise BalsamError("spawn_child() works only inside a Balsam job (BALSAM_JOB_ID is not set)")
    if "application" in kwargs:
        _require_app(str(kwargs["application"]))
    kwargs.setdefault("parents", running.get_parents_by_id() + [str(running.pk)])
    child = clone(running, **kwargs)
    child.data = dict(child.data, spawned_by=str(running.pk))
    _insert([child])
    return child


def kill(job: Any, recursive: bool = True) -> list[str]:
    """Mark ``job`` (and, with ``recursive``, every job below it) USER_KILLED; return the ids
    killed. Jobs already final are left alone; a RUNNING job's launcher stops it. A job object
    given has its ``state`` refreshed. :class:`NotFound` if the job does not exist."""
    from django.db import connection, transaction

    from balsam.core import lifecycle
    from balsam.core.models import BalsamJob

    job_id = _job_pk(job)
    with transaction.atomic(), connection.cursor() as cur:
        killed = lifecycle.kill(cur, [job_id], recursive=recursive)
        if not killed and not BalsamJob.objects.filter(pk=job_id).exists():
            raise NotFound(f"job {job_id} does not exist")
    if isinstance(job, BalsamJob) and job_id in killed:
        job.refresh_from_db(fields=["state"])
    return killed


def wf_from_template(source_wf: str, new_wf: str, **overrides: Mapping[str, Any]) -> Any:
    """Copy every job of workflow ``source_wf`` into a new workflow ``new_wf``, edges included
    (matched by job name), in one transaction; return the new jobs' queryset.

    ``overrides`` maps a job name to field values for its copy, e.g.
    ``wf_from_template("tmpl", "run2", sim={"args": "--seed 2"})`` (``parents`` there replaces
    the copied edges). Copies start CREATED with no ``queued_launch``; an edge from a job
    outside ``source_wf`` is kept. ``ValueError`` if the
    source is empty, ``new_wf`` already has jobs, names repeat, or an override names no job.
    """
    from django.db import connection, transaction

    from balsam.core.models import BalsamJob, JobDependency

    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [_WF_LOCK_CLASS, new_wf])
        templates = list(BalsamJob.objects.filter(workflow=source_wf).order_by("created_at", "pk"))
        if not templates:
            raise ValueError(f"workflow {source_wf!r} has no jobs to copy")
        if BalsamJob.objects.filter(workflow=new_wf).exists():
            raise ValueError(f"workflow {new_wf!r} already has jobs")
        repeated = sorted(n for n, count in Counter(t.name for t in templates).items() if count > 1)
        if repeated:
            raise ValueError(f"job names repeat in workflow {source_wf!r}: {', '.join(repeated)}")
        unknown = sorted(set(overrides) - {t.name for t in templates})
        if unknown:
            raise ValueError(f"no job named {', '.join(unknown)} in workflow {source_wf!r}")
        copies, given_parents = {}, set()
        for t in templates:
            override = overrides.get(t.name, {})
            if not isinstance(override, Mapping) or "workflow" in override:
                raise ValueError(f"the override for job {t.name!r} must be a dict of field values "
                                 "other than workflow")
            values = _clone_values(t)
            values.update(_checked({"workflow": new_wf, "queued_launch_id": None, **override}))
            copies[str(t.pk)] = BalsamJob(**values)
            if "parents" in override:
                given_parents.add(str(t.pk))
        parents: dict[str, list[str]] = {}
        for parent, child in (JobDependency.objects.filter(child__workflow=source_wf)
                              .order_by("id").values_list("parent_id", "child_id")):
            new_parent = copies.get(str(parent))
            parents.setdefault(str(child), []).append(str(new_parent.pk if new_parent else parent))
        for template_id, job in copies.items():
            if template_id not in given_parents:
                job.parents = parents.get(template_id, [])
        _insert(list(copies.values()))
    return BalsamJob.objects.filter(workflow=new_wf)
