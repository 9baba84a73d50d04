"""``balsam.api.Job``: the newer API's job, a translation of one classic ``BalsamJob`` row.

A :class:`Job` wraps a :class:`balsam.core.models.BalsamJob` and reads and writes it through the
name tables of :mod:`balsam.api.names`; there is no second table and no second state writer
(states change through the model's ``save()``, i.e. :mod:`balsam.core.lifecycle`; inserts go
through ``bulk_create``, i.e. :mod:`balsam.core.bulk`). Creating a Job loads its site app,
checks the parameters and renders the command (errors are raised here, not when the job runs);
the rendered command is stored in the classic ``args`` column, so the launcher runs it as any
classic job. Jobs made by the classic API are Jobs too (their ``app_name`` is the classic app).
A job's ``transfers`` (values of the app's transfer slots) are checked and resolved when it is
created and written with it (:mod:`balsam.processing.transfers.slots`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

from django.db import connection, transaction

from balsam.api import names, waiting
from balsam.api.sites import Site, site_for
from balsam.core.models import BalsamJob, JobEvent
from balsam.core.schema import FieldError
from balsam.core.states import InvalidStateError, State
from balsam.errors import BalsamError
from balsam.processing.transfers import slots
from balsam.site import pyfunc
from balsam.site.app import resolve_transfers


class JobStateRefused(BalsamError):
    """A state change the state writer refuses (classic user rules)."""


_SETTABLE = ("app_name", "workdir", "parameters", "args", "tags", "data", "parent_ids", "num_nodes",
             "ranks_per_node", "threads_per_rank", "gpus_per_rank", "node_packing_count",
             "wall_time_min", "launch_params", "transfers")


JOB_NAME = "job"
"""The classic ``name`` of every newer-API job (the newer API has none): classic jobs need one,
and the task's output file is ``<name>.out``, i.e. ``job.out`` in the workdir as in 0.6."""

_MUTABLE = tuple(k for k in names.JOB_COLUMNS
                 if k not in ("id", "app_name", "parameters", "gpus_per_rank"))
"""Fields a user (or a hook) may assign on an existing Job."""


class Job:
    """A job of the newer API (see the module docstring). Create with the fields of
    :data:`_SETTABLE` and ``site_path`` (default: the active database)."""

    objects: JobManager

    def __init__(self, site_path: Optional[str] = None, *, app_name: str, workdir: str,
                 parameters: Optional[Mapping[str, Any]] = None,
                 args: Optional[Sequence[Any]] = None, **fields: Any) -> None:
        unknown = sorted(set(fields) - set(_SETTABLE) - {"site_id"})
        if unknown:
            raise names.TranslationError(f"unknown Job field(s) {', '.join(unknown)} (fields: "
                                         f"{', '.join(_SETTABLE)})")
        if args is not None and not isinstance(args, (list, tuple)):
            raise names.TranslationError(f"args must be a list or tuple of run()'s positional "
                                         f"arguments, not {type(args).__name__}")
        site = site_for(site_path, fields.pop("site_id", None))
        app = site.app(app_name)
        call = (app.cls.resolve_call(parameters, args or ())
                if app.cls.is_function() or args else None)
        try:
            values = _classic_values(site, app, workdir, parameters, call, fields)
            row = BalsamJob(**values)
            row._validated()
        except FieldError as exc:
            raise names.TranslationError(f"job of app {app_name}: {exc}")
        if fields.get("parent_ids"):
            row.parents = [str(p) for p in fields["parent_ids"]]
        self._bind(site, row)
        if call is not None:  # run()'s arguments, written with the row
            self.__dict__["_arguments"] = pyfunc.serialized_arguments(app.name, call.kwargs,
                                                                      call.args)
        given = fields.get("transfers")
        if given is not None and not isinstance(given, Mapping):
            raise names.TranslationError(f"transfers must be a dict of slot values, not "
                                         f"{type(given).__name__}")
        self.__dict__["_slots"] = resolve_transfers(
            app.cls, given, site.transfer_locations() if given else {})

    @classmethod
    def _wrap(cls, site: Site, row: BalsamJob) -> Job:
        job = cls.__new__(cls)
        job._bind(site, row)
        return job

    def _bind(self, site: Site, row: BalsamJob) -> None:
        self.__dict__.update(_site=site, _row=row, _dirty=set(), _arguments=None, _slots=None)

    # ---- fields -------------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        column = names.JOB_COLUMNS.get(name)
        if column is None:
            raise AttributeError(f"Job has no field {name!r}")
        return getattr(self._row, column)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "state":
            value = names.classic_state(value)
        elif name not in _MUTABLE:
            raise names.TranslationError(
                f"Job field {name!r} cannot be set on a job (settable: {', '.join(_MUTABLE)}; "
                "app_name, parameters and transfers are fixed: the command and the transfer "
                "slots were made from them; "
                "gpus_per_rank was checked against the site's GPUs)")
        setattr(self._row, names.JOB_COLUMNS[name], value)
        self._dirty.add(names.JOB_COLUMNS[name])

    @property
    def site_id(self) -> str:
        return self._site.site_id

    @property
    def workdir(self) -> str:
        """The working directory relative to ``<site>/data`` (classic jobs: their default
        ``data/<workflow>/<name>_<id8>``)."""
        return os.path.relpath(self._row.working_directory, self._site.data_path)

    @property
    def parent_ids(self) -> list[str]:
        return self._row.get_parents_by_id()

    @property
    def launch_params(self) -> dict[str, Any]:
        return {k: getattr(self._row, col) for k, col in names.LAUNCH_PARAMS.items()}

    @property
    def transfers(self) -> dict[str, str]:
        """The job's filled transfer slots as given (``{slot: "LOCATION:/path"}``)."""
        if self._slots is not None:
            return {s.slot: s.given for s in self._slots}
        self._site.activate()
        with connection.cursor() as cur:
            return slots.of_job(cur, str(self._row.pk))

    @property
    def return_code(self) -> Optional[int]:
        ended = [State.RUN_DONE.value, State.RUN_ERROR.value]
        last = (JobEvent.objects.filter(job_id=self._row.pk, to_state__in=ended)
                .order_by("-id").values_list("to_state", "message").first())
        return names.return_code(last)

    @property
    def classic(self) -> BalsamJob:
        """The classic row this Job translates."""
        return self._row

    def save(self) -> None:
        """Insert a new job, or write the fields changed since loading (a changed state goes
        through the state writer, with the classic user rules)."""
        row = self._row
        self._site.activate()
        try:
            if row._state.adding:
                with transaction.atomic(), connection.cursor() as cur:
                    row.save()
                    if self._arguments is not None:
                        pyfunc.store_arguments(cur, [(str(row.pk), self._arguments)])
                    slots.store(cur, [(str(row.pk), v) for v in self._slots or ()])
            elif self._dirty:
                row.save(update_fields=sorted(self._dirty))
        except InvalidStateError as exc:  # a move the state writer refuses (e.g. to RUNNING)
            raise JobStateRefused(f"job {str(row.pk)[:8]}: {exc}")
        except FieldError as exc:
            raise names.TranslationError(f"job {str(row.pk)[:8]}: {exc}")
        self._dirty.clear()

    def refresh_from_db(self) -> None:
        self._site.activate()
        self._row.refresh_from_db()
        self._dirty.clear()

    def result(self, timeout: Optional[float] = None) -> Any:
        """A function job's return value, or its exception re-raised with the remote traceback
        as ``__cause__`` (:func:`balsam.api.waiting.result`); ``JobNotDone`` if the job is not
        done yet, unless ``timeout`` says how long to wait for it."""
        return waiting.result(self, timeout)

    def done(self) -> bool:
        """Whether the job is in a final state (JOB_FINISHED, FAILED, USER_KILLED) now."""
        return bool(waiting.wait([self], 0).done)

    def delete(self) -> None:
        self._site.activate()
        self._row.delete()

    def __repr__(self) -> str:
        return (f"Job(id={str(self._row.pk)[:8]}, app_name={self.app_name!r}, "
                f"workdir={self.workdir!r}, state={self.state!r})")


def _classic_values(site: Site, app: Any, workdir: str, parameters: Optional[Mapping[str, Any]],
                    call: Optional[pyfunc.BoundCall], fields: dict[str, Any]) -> dict[str, Any]:
    """The classic row values of a new job (every check that can fail happens here; ``call``:
    a function app's checked ``run()`` arguments)."""
    cls = app.cls
    resolved = cls.resolve_parameters(parameters) if call is None else call.named
    values: dict[str, Any] = {
        "name": JOB_NAME,
        "application": app.name,
        "args": cls.render_command(resolved),
        "parameters": pyfunc.json_view(resolved) if call is not None else resolved,
        "user_workdir": _workdir(site, workdir),
        "environ_vars": cls.environ_string(),
        "post_error_handler": cls.overrides("handle_error"),
        "post_timeout_handler": cls.overrides("handle_timeout"),
        "auto_timeout_retry": True,
    }
    for name in ("tags", "data"):
        if fields.get(name) is not None:
            if not isinstance(fields[name], Mapping):
                raise names.TranslationError(f"{name} must be a dict, not "
                                             f"{type(fields[name]).__name__}")
            values[name] = dict(fields[name])
    for name in ("num_nodes", "ranks_per_node", "threads_per_rank", "node_packing_count"):
        if name in fields:
            values[name] = fields[name]
    minutes = fields.get("wall_time_min", 0)
    values["wall_time_minutes"] = minutes if minutes else 1  # 0.6: 0 = unknown; classic >= 1
    values["gpus_per_rank"] = _gpus_per_rank(site, fields)
    for key, value in (fields.get("launch_params") or {}).items():
        if key not in names.LAUNCH_PARAMS:
            raise names.TranslationError(f"unknown launch_params key {key!r} (one of "
                                         f"{', '.join(names.LAUNCH_PARAMS)})")
        values[names.LAUNCH_PARAMS[key]] = value
    return values


def _gpus_per_rank(site: Site, fields: Mapping[str, Any]) -> int:
    """``gpus_per_rank``, checked against the site's nodes (a job no launcher could take would
    wait for ever): ranks_per_node x gpus_per_rank GPUs at most, one for a single-rank job."""
    gpus = fields.get("gpus_per_rank", 0)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise names.TranslationError(f"gpus_per_rank must be a whole number >= 0, not {gpus!r}")
    if not gpus:
        return 0
    ranks = fields.get("ranks_per_node", 1)
    if fields.get("num_nodes", 1) == 1 and ranks == 1 and gpus > 1:
        raise names.TranslationError("gpus_per_rank: a single-rank job runs in serial mode, which "
                                     "gives each task one GPU; use 1 (or more ranks)")
    have = site.gpus_per_node()
    if gpus * ranks > have:
        raise names.TranslationError(
            f"gpus_per_rank {gpus} x ranks_per_node {ranks} is more than the {have} GPU(s) per "
            f"node of this site (gpus_per_node in {site.site_path}/settings.yml)")
    return gpus


def _workdir(site: Site, workdir: str) -> str:
    text = str(workdir or "").strip()
    parts = text.replace("\\", "/").split("/")
    if not text or os.path.isabs(text) or ".." in parts:
        raise names.TranslationError(f"workdir {workdir!r} must be a relative path inside "
                                     f"{site.data_path} (no '..')")
    return os.path.join(site.data_path, os.path.normpath(text))


def _lookups(site: Site, filters: Mapping[str, Any]) -> dict[str, Any]:
    """Django lookups on BalsamJob for newer-API filter keywords."""
    out: dict[str, Any] = {}
    for key, value in filters.items():
        field, _, op = key.partition("__")
        suffix = f"__{op}" if op else ""
        if field == "tags" and not op:
            out["tags__contains"] = dict(value)
        elif field == "workdir" and op in ("", "in"):
            out[f"user_workdir{suffix}"] = (_workdir(site, value) if not op
                                            else [_workdir(site, v) for v in value])
        elif field == "workdir" and op == "startswith":
            out["user_workdir__startswith"] = os.path.join(site.data_path, str(value))
        elif field == "parent_ids":
            out["parent_links__parent_id__in"] = [str(p) for p in value]
        elif field == "state" and not op:
            out["state"] = names.classic_state(value)
        elif field == "state" and op == "in":
            out["state__in"] = [names.classic_state(s) for s in value]
        elif field in names.JOB_COLUMNS:
            out[names.JOB_COLUMNS[field] + suffix] = value
        else:
            raise names.TranslationError(f"cannot filter Jobs by {key!r} (fields: "
                                         f"{', '.join(names.JOB_COLUMNS)}, workdir, parent_ids)")
    return out


class JobQuery:
    """A lazy, filtered set of Jobs of one site (what ``Job.objects.filter`` returns)."""

    def __init__(self, site: Site, queryset: Any) -> None:
        self.site = site
        self.queryset = queryset

    def filter(self, **filters: Any) -> JobQuery:
        return JobQuery(self.site, self.queryset.filter(**_lookups(self.site, filters)).distinct())

    def __iter__(self) -> Any:
        return (Job._wrap(self.site, row) for row in self.queryset.order_by("created_at", "job_id"))

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, index: int) -> Job:
        return Job._wrap(self.site, self.queryset.order_by("created_at", "job_id")[index])

    def count(self) -> int:
        return int(self.queryset.count())

    def get(self, **filters: Any) -> Job:
        found = list(self.filter(**filters).queryset[:2])
        if len(found) != 1:
            from balsam.errors import Ambiguous, NotFound

            raise (NotFound if not found else Ambiguous)(
                f"{'no' if not found else 'more than one'} job matches {filters}")
        return Job._wrap(self.site, found[0])

    def update(self, **values: Any) -> int:
        """Set fields of every job in the set (``state`` through the state writer)."""
        if not set(values) <= set(_MUTABLE):
            raise names.TranslationError(f"cannot update {', '.join(sorted(set(values) - set(_MUTABLE)))}"
                                         f" (fields: {', '.join(_MUTABLE)})")
        changes = {names.JOB_COLUMNS[k]: v for k, v in values.items()}
        if "state" in changes:
            changes["state"] = names.classic_state(changes["state"])
        try:
            return int(self.queryset.update(**changes))
        except FieldError as exc:
            raise names.TranslationError(str(exc))

    def delete(self) -> int:
        return int(self.queryset.delete()[0])


class JobManager:
    """``Job.objects``: queries start from the active site (or ``site_path=``)."""

    def _all(self, site_path: Optional[str] = None) -> JobQuery:
        return JobQuery(Site(site_path), BalsamJob.objects.all())

    def all(self, site_path: Optional[str] = None) -> JobQuery:
        return self._all(site_path)

    def filter(self, site_path: Optional[str] = None, **filters: Any) -> JobQuery:
        return self._all(site_path).filter(**filters)

    def get(self, site_path: Optional[str] = None, **filters: Any) -> Job:
        return self._all(site_path).get(**filters)

    def count(self, site_path: Optional[str] = None, **filters: Any) -> int:
        return self._all(site_path).filter(**filters).count()

    def create(self, site_path: Optional[str] = None, **fields: Any) -> Job:
        job = Job(site_path, **fields)
        job.save()
        return job

    def bulk_create(self, jobs: Iterable[Job]) -> list[Job]:
        """Insert all ``jobs`` in one transaction (PostgreSQL COPY); nothing is written if one
        is invalid."""
        jobs = list(jobs)
        sites = {j._site.site_path for j in jobs}
        if len(sites) > 1:
            raise BalsamError(f"bulk_create got jobs of {len(sites)} sites: one site per call")
        if jobs:
            Site(jobs[0]._site.site_path)
            with transaction.atomic(), connection.cursor() as cur:
                BalsamJob.objects.bulk_create([j._row for j in jobs])
                pyfunc.store_arguments(cur, [(str(j._row.pk), j._arguments) for j in jobs
                                             if j._arguments is not None])
                slots.store(cur, [(str(j._row.pk), v) for j in jobs for v in j._slots or ()])
        return jobs

    def update(self, site_path: Optional[str] = None, filters: Optional[Mapping[str, Any]] = None,
               **values: Any) -> int:
        return self._all(site_path).filter(**(filters or {})).update(**values)

    def delete(self, site_path: Optional[str] = None, **filters: Any) -> int:
        return self._all(site_path).filter(**filters).delete()


Job.objects = JobManager()
