"""Django models: BalsamJob here; the tables around it in :mod:`balsam.core.run_models`
(ApplicationDefinition, QueuedLaunch, LauncherSession), :mod:`balsam.core.job_tables`
(JobDependency, JobWake, JobEvent) and :mod:`balsam.core.transfer_models`, all importable from
here (where Django finds them and classic scripts import them).

Importing this module configures Django in-process (no database connection, no environment
lookup); the server is found when the first query runs. Job states are written only through
:mod:`balsam.core.lifecycle`: ``save()`` never overwrites ``state`` behind another process's back.
"""
from __future__ import annotations

import datetime
import functools
import uuid
from typing import Any, Optional

from balsam.db.django_setup import ensure_django

ensure_django()

from django.contrib.postgres.indexes import GinIndex  # noqa: E402
from django.db import connection, models, transaction  # noqa: E402
from django.db.models.base import ModelState  # noqa: E402
from django.utils import timezone  # noqa: E402

from balsam.core import history, job_tables, lifecycle, run_models, schema  # noqa: E402
from balsam.core.analytics_classic import (  # noqa: E402,F401  (classic scripts import these here)
    error_report,
    process_job_times,
    throughput_report,
    utilization_report,
)
from balsam.core.analytics_errors import ERROR_STATES  # noqa: E402,F401  (importable as ever)
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

# The other tables' models, importable from here as they always were.
ApplicationDefinition = run_models.ApplicationDefinition
QueuedLaunch = run_models.QueuedLaunch
LauncherSession = run_models.LauncherSession
JobDependency = job_tables.JobDependency
JobWake = job_tables.JobWake
JobEvent = job_tables.JobEvent
check_new_jobs = run_models.check_new_jobs
require_apps = run_models.require_apps

TIME_FMT = history.TIME_FMT
history_line = history.history_line
get_time_string = history.get_time_string
from_time_string = history.from_time_string


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


class BalsamJob(job_tables.JobRelations, JobAPI, models.Model):
    """One task: what to run, how many nodes and ranks, how it connects to other tasks."""

    job_id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workflow = models.TextField(default="")  # indexed after state (job_state_wf)
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
    state = models.TextField(default=State.CREATED.value)  # indexed by job_state_wf (Meta)
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
        # an indexed text field; nothing matches states by prefix), only jobs of a batch job
        # are indexed by it (migration 0016), and one index on (state, workflow) serves state
        # look-ups, state-and-workflow ones and, by a skip scan over the few states, workflow
        # ones (migration 0019: it replaced `job_state` and `job_wf_state`).
        indexes = [
            models.Index(fields=["state", "workflow"], name="job_state_wf"),
            models.Index(fields=["queued_launch"], name="job_queued_launch",
                         condition=models.Q(queued_launch__isnull=False)),
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
            # The same per workflow, for a launcher's workflow filter (migration 0020).
            models.Index(fields=["workflow", "-priority", "-num_nodes", "-wall_time_minutes"],
                         name="job_claim_wf_mpi", condition=_CLAIMABLE),
            models.Index(fields=["workflow", "-priority", "node_packing_count",
                                 "-wall_time_minutes"], name="job_claim_wf_serial",
                         condition=_CLAIMABLE & models.Q(num_nodes=1, ranks_per_node=1)),
            # A tag filter's claim (custom plan) reads a rare tag's jobs from here.
            GinIndex(fields=["tags"], opclasses=["jsonb_path_ops"], name="job_claim_tags",
                     condition=_CLAIMABLE),
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
