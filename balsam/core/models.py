"""Django models: BalsamJob, ApplicationDefinition, QueuedLaunch, dependencies and state events.

Importing this module configures Django in-process (no database connection, no environment
lookup); the server is found when the first query runs. Job states are written only through
:mod:`balsam.core.lifecycle`: ``save()`` never overwrites ``state`` behind another process's back.
"""
from __future__ import annotations

import datetime
import functools
import json
import uuid
from collections.abc import Iterable
from typing import Any, Optional

from balsam.db.django_setup import ensure_django

ensure_django()

from django.db import connection, models, transaction  # noqa: E402
from django.db.models.base import ModelState  # noqa: E402
from django.utils import timezone  # noqa: E402

from balsam.core import batchstates, history, lifecycle, schema  # noqa: E402
from balsam.core.analytics_classic import (  # noqa: E402,F401  (classic scripts import these here)
    error_report,
    process_job_times,
    throughput_report,
    utilization_report,
)
from balsam.core.analytics_errors import ERROR_STATES  # noqa: E402
from balsam.core.copyfmt import track_dicts  # noqa: E402
from balsam.core.copyfmt import untrack_atom_dict as _untrack_atom_dict  # noqa: E402
from balsam.core.jobapi import JobAPI  # noqa: E402
from balsam.core.jobqueryset import BalsamJobQuerySet  # noqa: E402
from balsam.core.states import (  # noqa: E402,F401  (classic names re-exported)
    ACTIVE_STATES,
    END_STATES,
    PROCESSABLE_STATES,
    RUNNABLE_STATES,
    STATES,
    InvalidStateError,
    State,
    validate_state,
)
from balsam.core.transfer_models import TransferBatch, TransferItem  # noqa: E402,F401
from balsam.db.dbapi import Cursor  # noqa: E402
from balsam.errors import (  # noqa: E402,F401  (classic names re-exported)
    BalsamError,
    InvalidParentsError,
    NoApplication,
)

TIME_FMT = history.TIME_FMT
history_line = history.history_line
get_time_string = history.get_time_string
from_time_string = history.from_time_string


class ApplicationDefinition(models.Model):
    """A registered executable: the command prefix jobs run, plus optional scripts."""

    name = models.TextField(unique=True)
    description = models.TextField(default="", blank=True)
    executable = models.TextField(default="")
    preprocess = models.TextField(default="", blank=True)
    envscript = models.TextField(default="", blank=True)
    postprocess = models.TextField(default="", blank=True)
    parameters = models.TextField(default="", blank=True)
    """A site app's parameters as JSON text ({name: default or null when required})."""
    source_hash = models.TextField(default="", blank=True)
    """SHA-256 of a site app's source file (empty: a classic app)."""

    class Meta:
        app_label = "core"
        db_table = schema.APP_TABLE

    @property
    def cute_id(self) -> str:
        return f"[{self.name} | {self.pk}]"

    def __repr__(self) -> str:
        fields = "\n".join(f"{k:>12}: {getattr(self, k)}" for k in schema.APP_DEFAULTS)
        return f"Application {self.pk}:\n{fields}\n"

    __str__ = __repr__


def check_new_jobs(rows: list[dict[str, Any]]) -> None:
    """The rules for creating jobs through the API (:func:`schema.check_new_jobs`: a name, a
    user state, checked values) and that their applications exist (:class:`NoApplication`);
    run before any row is written."""
    schema.check_new_jobs(rows)
    require_apps({d["application"] for d in rows} - {""})


def require_apps(names: set[str]) -> None:
    """:class:`NoApplication` naming the first of ``names`` that is not a registered app."""
    found = set(ApplicationDefinition.objects.filter(name__in=names).values_list("name", flat=True))
    missing = sorted(names - found)
    if missing:
        raise NoApplication(f"application {missing[0]!r} does not exist (add it with dag.add_app "
                            "or `balsam app`)")


class QueuedLaunch(models.Model):
    """A batch job submitted (or found) in the scheduler's queue."""

    scheduler_id = models.TextField(default="", blank=True, db_index=True)
    project = models.TextField(default="", blank=True)
    queue = models.TextField(default="", blank=True)
    nodes = models.IntegerField(default=0)
    wall_minutes = models.IntegerField(default=0)
    job_mode = models.TextField(default="", blank=True)
    wf_filter = models.TextField(default="", blank=True)
    filter_tags = models.JSONField(default=dict, blank=True)
    """Its launcher runs only jobs whose ``tags`` hold all of these ({}: any)."""
    sched_flags = models.TextField(default="", blank=True)
    command = models.TextField(default="", blank=True)
    state = models.TextField(default=batchstates.PENDING)
    prescheduled_only = models.BooleanField(default=True)
    from_balsam = models.BooleanField(default=True)
    raw_state = models.TextField(default="", blank=True)
    """The scheduler's own word for the state (``state`` holds the normalised one)."""
    message = models.TextField(default="", blank=True)
    """Why a submission failed (one line), or other notes of the service."""
    attempts = models.IntegerField(default=0)
    """Submission attempts made so far (bounded: see balsam.service.submitter)."""
    minutes_left = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    """When the last submission attempt started (then: when it was accepted)."""
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "core"
        db_table = schema.QLAUNCH_TABLE

    def __repr__(self) -> str:
        fields = ("scheduler_id", "project", "queue", "nodes", "wall_minutes", "job_mode",
                  "wf_filter", "filter_tags", "state", "command")
        body = "\n".join(f"{k:>14}: {getattr(self, k)}" for k in fields)
        return f"QueuedLaunch {self.pk}:\n{body}\n"

    __str__ = __repr__


class LauncherSession(models.Model):
    """A running launcher's lease: it holds the jobs whose ``session`` points at it while its
    heartbeat is fresh. An expired session's jobs are swept (:mod:`balsam.core.leases`)."""

    hostname = models.TextField(default="")
    pid = models.IntegerField(default=0)
    job_mode = models.TextField(default="")
    label = models.TextField(default="", blank=True)
    scheduler_id = models.TextField(default="", blank=True)
    num_nodes = models.IntegerField(default=0)
    started_at = models.DateTimeField()
    heartbeat = models.DateTimeField()
    lease_seconds = models.IntegerField()
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.TextField(default="", blank=True)

    class Meta:
        app_label = "core"
        db_table = schema.SESSION_TABLE
        indexes = [models.Index(fields=["heartbeat"], name="session_live",
                                condition=models.Q(ended_at__isnull=True))]


_CLAIMABLE = models.Q(state__in=RUNNABLE_STATES, session__isnull=True)


class _LazyModelState:
    """``job._state`` of a job made by ``BalsamJob``'s fast ``__init__``: Django's ``ModelState``,
    created on first use and stored in the instance (a non-data descriptor: Django's own
    ``self._state = ModelState()`` and ``from_db`` simply shadow it). A job saved by
    ``bulk_create`` before its first use (``_loaded_state`` set) gets one saved to ``_saved_db``."""

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        d = obj.__dict__
        state = d["_state"] = ModelState()
        if d.get("_loaded_state") is not None:
            state.adding = False
            state.db = d["_saved_db"]
        return state


class BalsamJob(JobAPI, models.Model):
    """One task: what to run, how many nodes and ranks, how it connects to other tasks."""

    job_id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workflow = models.TextField(default="")  # indexed with state (job_wf_state)
    name = models.TextField(default="")
    description = models.TextField(default="", blank=True)
    lock = models.TextField(default="", blank=True)
    tick = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)
    input_files = models.TextField(default="", blank=True)
    stage_in_url = models.TextField(default="", blank=True)
    stage_out_files = models.TextField(default="", blank=True)
    stage_out_url = models.TextField(default="", blank=True)
    wall_time_minutes = models.IntegerField(default=1)
    num_nodes = models.IntegerField(default=1)
    coschedule_num_nodes = models.IntegerField(default=0)
    ranks_per_node = models.IntegerField(default=1)
    cpu_affinity = models.TextField(default="none")
    threads_per_rank = models.IntegerField(default=1)
    threads_per_core = models.IntegerField(default=1)
    node_packing_count = models.IntegerField(default=1)
    environ_vars = models.TextField(default="", blank=True)
    mpi_flags = models.TextField(default="", blank=True)
    application = models.TextField(default="")
    args = models.TextField(default="", blank=True)
    user_workdir = models.TextField(default="", blank=True)
    wait_for_parents = models.BooleanField(default=True)
    post_error_handler = models.BooleanField(default=False)
    post_timeout_handler = models.BooleanField(default=False)
    auto_timeout_retry = models.BooleanField(default=True)
    state = models.TextField(default=State.CREATED.value)  # indexed by job_state (Meta)
    # When the job entered ``state`` (NULL: at ``created_at``); written only by lifecycle.transition.
    state_since = models.DateTimeField(null=True, blank=True)
    queued_launch = models.ForeignKey(QueuedLaunch, null=True, blank=True, on_delete=models.SET_NULL,
                                      db_index=False)  # indexed by job_queued_launch
    data = models.JSONField(default=dict, blank=True)
    session = models.ForeignKey(LauncherSession, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="+", db_index=False)  # indexed by job_held
    parameters = models.JSONField(default=dict, blank=True)
    """The values a site app's command template was rendered from (newer API)."""
    tags = models.JSONField(default=dict, blank=True)
    """Labels of the newer API (``Job.objects.filter(tags={...})``)."""
    max_retries = models.IntegerField(default=-1)
    """Failed runs retried at most (balsam.core.retries); -1: the DB's ``launcher.max_retries``."""
    priority = models.IntegerField(default=0)
    """Launchers claim and the service plans higher priorities first."""
    gpus_per_rank = models.IntegerField(default=0)
    """GPUs each rank needs (0: none asked; a launcher claims the job only if its nodes have
    enough: serial mode gives each task one GPU, MPI mode a job all of its nodes' GPUs)."""

    objects = BalsamJobQuerySet.as_manager()

    # What the JobAPI mixin and the queryset use of this module; they reach it through the model
    # class (``self.model`` in the queryset) and so never import this module.
    app_model = ApplicationDefinition
    _require_apps = staticmethod(require_apps)

    class Meta:
        app_label = "core"
        db_table = schema.JOB_TABLE
        # Every job-row update that changes ``state`` or ``session_id`` (each a launcher makes:
        # claim, RUNNING, a run's end) writes an entry in each index the new row is in, so the
        # list is kept short: ``state`` has no ``text_pattern_ops`` twin (Django's default for
        # an indexed text field; nothing matches states by prefix), and only jobs of a batch
        # job are indexed by it (migration 0016).
        indexes = [
            models.Index(fields=["state"], name="job_state"),
            models.Index(fields=["queued_launch"], name="job_queued_launch",
                         condition=models.Q(queued_launch__isnull=False)),
            models.Index(fields=["workflow", "state"], name="job_wf_state"),
            # Newest-first listings (the dashboard's jobs table, keyset paging) read this.
            models.Index(fields=["created_at", "job_id"], name="job_created"),
            # Only held jobs are indexed by holder, so inserting (unheld) jobs never touches it.
            models.Index(fields=["session"], name="job_held", condition=models.Q(session__isnull=False)),
            # Claims read runnable, unheld jobs in launch order straight from these partial
            # indexes: their cost does not grow with the jobs in other states.
            models.Index(fields=["-priority", "-num_nodes", "-wall_time_minutes"],
                         name="job_claim_mpi_pri", condition=_CLAIMABLE),
            models.Index(fields=["-priority", "node_packing_count", "-wall_time_minutes"],
                         name="job_claim_serial_pri",
                         condition=_CLAIMABLE & models.Q(num_nodes=1, ranks_per_node=1)),
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        parents = kwargs.pop("parents", None)
        if not args and _FAST_INIT_KEYS.issuperset(kwargs):
            # Django's generic __init__ costs ~30 us per job; building the instance dict directly
            # (field defaults, then the keywords; values are validated when saved) makes creating
            # 100,000 jobs for bulk_create over ten times cheaper. No pre_init/post_init signals
            # are sent: Balsam registers none.
            d = _NEW_JOB_DICT.copy()  # one allocation of the final size (~8% of constructing)
            self.__dict__ = d
            d["job_id"] = _new_job_id()
            d["created_at"] = d["tick"] = _utcnow()
            d["data"], d["parameters"], d["tags"] = {}, {}, {}
            d.update(kwargs)
            # The cyclic GC scanning 100,000 new jobs again and again was half the cost of
            # constructing them, so a new job is one tracked object instead of three: no
            # ModelState until one is used (the class attribute ``_state`` makes it), and the
            # instance dict is not tracked while it holds only atoms (str, int, None, datetime,
            # an untracked UUID, the empty JSON dicts). Storing a container in it tracks it
            # again (CPython does that), and so does saving it (``save``, ``bulk_create``).
            _untrack_atom_dict(d)
        else:
            super().__init__(*args, **kwargs)
            self._loaded_state: Optional[str] = None  # from_db() sets it for loaded jobs
            self._pending_parents: Optional[list[str]] = None
        if parents is not None:
            self.parents = parents

    _state = _LazyModelState()

    def __getstate__(self) -> dict[str, Any]:
        self._state  # noqa: B018  (Django's __getstate__ copies __dict__["_state"])
        return super().__getstate__()

    @classmethod
    def from_db(cls, db: Any, field_names: Any, values: Any) -> BalsamJob:
        obj = super().from_db(db, field_names, values)
        obj._loaded_state = obj.__dict__.get("state")
        return obj

    # ---- saving -----------------------------------------------------------------------------

    def _validated(self) -> None:
        d = self.__dict__
        if all(k in d for k in schema.JOB_DEFAULTS):
            schema.normalize_job_values(d)
            return
        # A partially loaded job (``.only()``/``.defer()``): check the fields it holds.
        values = dict(schema.JOB_DEFAULTS, data={}, parameters={}, tags={})
        values.update((k, d[k]) for k in schema.JOB_DEFAULTS if k in d)
        schema.normalize_job_values(values)
        d.update((k, values[k]) for k in schema.JOB_DEFAULTS if k in d)

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Insert, or update every field but ``state``; a changed ``state`` goes through the state
        writer (checked and recorded), so a stale object never overwrites a newer state."""
        if self._state.adding:
            self._validated()
            check_new_jobs([self.__dict__])
            track_dicts([self.__dict__])
            with transaction.atomic():
                super().save(*args, **kwargs)
                with connection.cursor() as cur:
                    lifecycle.record_created(cur, [(self.pk, self.state)])
                self._write_parents()
            self._loaded_state = self.state
            return
        fields = kwargs.pop("update_fields", None)
        if fields is None:
            deferred = self.get_deferred_fields()
            fields = [f.attname for f in self._meta.concrete_fields
                      if not f.primary_key and f.attname not in deferred]
        fields = [f for f in fields if f not in ("state", "state_since", "created_at")]
        self._validated()
        wanted = self.__dict__.get("state")  # not loading a deferred state just to compare it
        with transaction.atomic():
            if fields:
                super().save(*args, update_fields=fields, **kwargs)
            if wanted is not None and wanted != self._loaded_state:
                if self._loaded_state is not None or wanted != self._current_state():
                    self.update_state(wanted, "state set with save()")
                self._loaded_state = wanted
            self._write_parents()

    def _current_state(self) -> Optional[str]:
        return BalsamJob.objects.filter(pk=self.pk).values_list("state", flat=True).first()

    def _write_parents(self) -> None:
        """Write the parents given with ``parents=`` (checked; :class:`InvalidParentsError`)."""
        if self._pending_parents is None:
            return
        try:
            ids = [str(schema.parse_uuid(p)) for p in self._pending_parents]
            with transaction.atomic(), connection.cursor() as cur:
                lifecycle.set_parents(cur, self.pk, ids)
        except (BalsamError, schema.FieldError) as exc:
            raise InvalidParentsError(str(exc))
        self._pending_parents = None

    def refresh_from_db(self, *args: Any, **kwargs: Any) -> None:
        super().refresh_from_db(*args, **kwargs)
        if "state" in self.__dict__:
            self._loaded_state = self.state

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        return BalsamJob.objects.filter(pk=self.pk).delete()

    # ---- states -----------------------------------------------------------------------------

    def update_state(self, new_state: str, message: str = "", release: bool = False,
                     force: bool = False) -> None:
        """Set the state (user rules: any state but RUNNING; a USER_KILLED job only with
        ``force``), record the event, and refresh ``self.state``."""
        target = validate_state(new_state).value
        with transaction.atomic(), connection.cursor() as cur:
            lifecycle.transition_one(cur, self.pk, target, message, user=True, force=force)
            if release:
                _release(cur, [self.pk])
        self.state = self._loaded_state = target
        if release:
            self.lock = ""

    @classmethod
    def batch_update_state(cls, pk_list: Any, new_state: str, message: str = "",
                           release: bool = False) -> int:
        """Classic bulk state change (user rules; USER_KILLED jobs are skipped)."""
        if isinstance(pk_list, models.QuerySet):
            pk_list = list(pk_list.values_list("pk", flat=True))
        with transaction.atomic(), connection.cursor() as cur:
            moved = lifecycle.transition(cur, pk_list, new_state, message, user=True)
            if release:
                _release(cur, [job_id for job_id, _ in moved])
        return len(moved)

    @staticmethod
    def _write_states(objs: list[BalsamJob], message: str) -> None:
        """Move each job whose ``state`` attribute changed since loading (user rules, as
        :meth:`batch_update_state`: a job that may not move keeps its state in the DB)."""
        by_target: dict[str, list[BalsamJob]] = {}
        for obj in objs:
            if obj.state != obj._loaded_state:
                by_target.setdefault(validate_state(obj.state).value, []).append(obj)
        with connection.cursor() as cur:
            for target, group in by_target.items():
                moved = {j for j, _ in lifecycle.transition(cur, [o.pk for o in group], target,
                                                            message, user=True)}
                for obj in group:
                    if str(obj.pk) in moved:
                        obj._loaded_state = target

    @property
    def events(self) -> models.QuerySet:
        return JobEvent.objects.filter(job_id=self.pk).order_by("id")

    def _creation_note(self) -> str:
        """The CREATED entry's message: ``spawned by [name | id8]`` for a spawned job."""
        if not (isinstance(self.data, dict) and self.data.get("spawned_by")):
            return ""
        with connection.cursor() as cur:
            return history.creation_notes(cur, [self.pk]).get(str(self.pk), "")

    @property
    def state_history(self) -> str:
        """The classic text form: one ``[MM-DD-YYYY HH:MM:SS.ffffff STATE] message`` per change."""
        entries = [(self.created_at, State.CREATED.value, self._creation_note())]
        entries += [(e.timestamp, e.to_state, e.message) for e in self.events]
        return "".join(history.history_line(state, msg, ts) for ts, state, msg in entries)

    def get_recent_state_str(self) -> str:
        """The latest history entry, ``[MM-DD-YYYY HH:MM:SS.ffffff STATE] message``."""
        last = self.events.order_by("-id").first()
        when, state, message = ((last.timestamp, last.to_state, last.message) if last
                                else (self.created_at, State.CREATED.value, self._creation_note()))
        return history.history_line(state, message, when).lstrip(" \n")

    def get_state_times(self) -> dict[str, Any]:
        """{state: time} of the latest arrival in each state."""
        times: dict[str, Any] = {State.CREATED.value: self.created_at}
        for to_state, ts in self.events.values_list("to_state", "timestamp"):
            times[to_state] = ts
        return times

    @property
    def runtime_seconds(self) -> Optional[float]:
        times = self.get_state_times()
        run, done = State.RUNNING.value, State.RUN_DONE.value
        if run in times and done in times:
            return (times[done] - times[run]).total_seconds()
        return None

    # ---- dependencies -----------------------------------------------------------------------

    @property
    def parents(self) -> str:
        """JSON list of parent ids (classic text form; the edges live in their own table)."""
        return json.dumps(self.get_parents_by_id())

    @parents.setter
    def parents(self, value: Any) -> None:
        try:
            items = json.loads(value) if isinstance(value, str) else list(value)
        except (TypeError, ValueError):
            raise InvalidParentsError(f"parents must be a list of jobs or job ids, not {value!r}")
        self._pending_parents = [str(getattr(p, "pk", p)) for p in items]

    def get_parents_by_id(self) -> list[str]:
        if self._pending_parents is not None:
            return list(self._pending_parents)
        if self._state.adding:
            return []
        return [str(p) for p in JobDependency.objects.filter(child_id=self.pk)
                .order_by("id").values_list("parent_id", flat=True)]

    def get_parents(self) -> models.QuerySet:
        return BalsamJob.objects.filter(child_links__child_id=self.pk)

    def set_parents(self, parents: Iterable[Any]) -> None:
        """Replace this job's parents (checked: they exist, no cycle) and save the edges now."""
        self._pending_parents = [str(getattr(p, "pk", p)) for p in parents]
        try:
            self._write_parents()
        finally:
            self._pending_parents = None

    def get_children(self) -> models.QuerySet:
        return BalsamJob.objects.filter(parent_links__parent_id=self.pk)

    def get_children_by_id(self) -> list[str]:
        return [str(c) for c in JobDependency.objects.filter(parent_id=self.pk)
                .values_list("child_id", flat=True)]

    def get_child_by_name(self, name: str) -> BalsamJob:
        children = list(self.get_children().filter(name=name)[:2])
        if len(children) != 1:
            raise ValueError(f"{len(children) or 'no'} children named {name!r}")
        return children[0]

def _release(cursor: Cursor, job_ids: list[Any]) -> None:
    """Clear the lock of jobs (classic ``release=True``)."""
    if job_ids:
        cursor.execute(f"UPDATE {schema.JOB_TABLE} SET lock = '' WHERE job_id = ANY(%s::uuid[])",
                       [[str(j) for j in job_ids]])


_FAST_INIT_KEYS = frozenset(f.attname for f in BalsamJob._meta.concrete_fields)
_STATIC_DEFAULTS = {
    f.attname: f.default for f in BalsamJob._meta.concrete_fields
    if not callable(f.default) and f.default is not models.NOT_PROVIDED
}
_STATIC_DEFAULTS.update({f.attname: None for f in BalsamJob._meta.concrete_fields
                         if f.null and f.default is models.NOT_PROVIDED})  # queued_launch, session
_STATIC_DEFAULTS.update(_loaded_state=None, _pending_parents=None, _saved_db=None)
_NEW_JOB_DICT = dict(_STATIC_DEFAULTS, job_id=None, created_at=None, tick=None, data=None,
                     parameters=None, tags=None)
"""The instance dict a job made by the fast ``__init__`` starts from (every key it will hold)."""
_utcnow = functools.partial(datetime.datetime.now, datetime.timezone.utc)
"""``django.utils.timezone.now()`` without its settings lookup per call (Balsam sets USE_TZ)."""
from balsam.core.bulk import uuid4 as _new_job_id  # noqa: E402  (uuid.uuid4, twice as cheap)


class JobDependency(models.Model):
    """An edge of the task graph: ``child`` runs after ``parent`` finishes."""

    parent = models.ForeignKey(BalsamJob, on_delete=models.CASCADE, related_name="child_links")
    child = models.ForeignKey(BalsamJob, on_delete=models.CASCADE, related_name="parent_links")

    class Meta:
        app_label = "core"
        db_table = schema.DEP_TABLE
        constraints = [models.UniqueConstraint(fields=["parent", "child"], name="unique_edge")]


class JobWake(models.Model):
    """A waiting job one of whose parents reached a final state, or whose parents changed: the
    parent check (``balsam.processing.transitions``) re-examines exactly these jobs, so its cost
    follows the edges that changed, not the number of waiting jobs. Written by the state writer
    and the dependency functions of :mod:`balsam.core.lifecycle`."""

    job = models.OneToOneField(BalsamJob, on_delete=models.CASCADE, primary_key=True,
                               related_name="+")

    class Meta:
        app_label = "core"
        db_table = schema.WAKE_TABLE


class JobEvent(models.Model):
    """One state change of one job, written with the change in the same transaction."""

    job = models.ForeignKey(BalsamJob, on_delete=models.CASCADE, related_name="+", db_index=False)
    timestamp = models.DateTimeField(db_index=True)
    from_state = models.TextField()
    to_state = models.TextField()
    message = models.TextField(default="", blank=True)
    # When the job entered ``from_state``: [entered_at, timestamp) is the visit this event ends.
    entered_at = models.DateTimeField(null=True, blank=True)
    # On an event leaving RUNNING: the nodes the run occupied (1/packing for a serial job).
    nodes = models.FloatField(null=True, blank=True)

    class Meta:
        app_label = "core"
        db_table = schema.EVENT_TABLE
        indexes = [models.Index(fields=["job", "id"], name="event_job_id"),
                   # The events ending a run, by time: runtimes and utilization of a window.
                   models.Index(fields=["timestamp"], name="run_end",
                                condition=models.Q(from_state=State.RUNNING.value)),
                   # The failures, by time: error reports.
                   models.Index(fields=["timestamp"], name="error_event",
                                condition=models.Q(to_state__in=list(ERROR_STATES))),
                   # A user's resets (events leaving a final state): where a job's retry
                   # count starts (balsam.core.retries).
                   models.Index(fields=["job", "id"], name="event_reset",
                                condition=models.Q(from_state__in=END_STATES))]
