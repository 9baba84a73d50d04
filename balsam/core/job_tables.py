"""The tables keyed by a job, beside the job table itself: the task graph's edges
(:class:`JobDependency`), the waiting jobs the parent check must look at again
(:class:`JobWake`) and every state change (:class:`JobEvent`); and :class:`JobRelations`, the
classic job methods over them (state history and times; parents and children).

Imported by :mod:`balsam.core.models` (Django finds the models there, and classic scripts
import them from there), after Django is configured. The tables name the job model as
``"core.BalsamJob"`` and the mixin reaches it as ``type(self)``, so this module never imports
the job model's. The rows are written in plain SQL by :mod:`balsam.core.lifecycle`.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Optional, TypeVar

from django.db import connection, models, transaction

from balsam.core import history, lifecycle, schema
from balsam.core.analytics_errors import ERROR_STATES
from balsam.core.states import END_STATES, State
from balsam.errors import BalsamError, InvalidParentsError


class JobDependency(models.Model):
    """An edge of the task graph: ``child`` runs after ``parent`` finishes."""

    parent = models.ForeignKey("core.BalsamJob", on_delete=models.CASCADE, related_name="child_links")
    child = models.ForeignKey("core.BalsamJob", on_delete=models.CASCADE, related_name="parent_links")

    class Meta:
        app_label = "core"
        db_table = schema.DEP_TABLE
        constraints = [models.UniqueConstraint(fields=["parent", "child"], name="unique_edge")]


class JobWake(models.Model):
    """A waiting job one of whose parents reached a final state, or whose parents changed: the
    parent check (``balsam.processing.transitions``) re-examines exactly these jobs, so its cost
    follows the edges that changed, not the number of waiting jobs. Written by the state writer
    and the dependency functions of :mod:`balsam.core.lifecycle`."""

    job = models.OneToOneField("core.BalsamJob", on_delete=models.CASCADE, primary_key=True,
                               related_name="+")

    class Meta:
        app_label = "core"
        db_table = schema.WAKE_TABLE


class JobEvent(models.Model):
    """One state change of one job, written with the change in the same transaction."""

    # No constraint in the database: its per-row check at commit was ~11-14% of the server's
    # CPU per task, and every writer inserts an event with its job's row locked; a statement
    # trigger deletes a job's events with it (migration 0018).
    job = models.ForeignKey("core.BalsamJob", on_delete=models.CASCADE, related_name="+",
                            db_index=False, db_constraint=False)
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


JobT = TypeVar("JobT", bound="JobRelations")


class JobRelations:
    """Mixin of :class:`balsam.core.models.BalsamJob`: its classic methods over the tables
    keyed by a job (events: ``state_history``, ``get_state_times``, ``runtime_seconds``;
    edges: ``parents``, ``get_parents``, ``set_parents``, ``get_children``, ...)."""

    # What the mixin uses of the model (declared for type checkers).
    if TYPE_CHECKING:
        objects: ClassVar[Any]
        pk: Any
        data: Any
        created_at: Any
        _state: Any
        _pending_parents: Optional[list[str]]

    # ---- state events -------------------------------------------------------------------------

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

    # ---- the task graph -----------------------------------------------------------------------

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
        return type(self).objects.filter(child_links__child_id=self.pk)

    def set_parents(self, parents: Iterable[Any]) -> None:
        """Replace this job's parents (checked: they exist, no cycle) and save the edges now."""
        self._pending_parents = [str(getattr(p, "pk", p)) for p in parents]
        try:
            self._write_parents()
        finally:
            self._pending_parents = None

    def get_children(self) -> models.QuerySet:
        return type(self).objects.filter(parent_links__parent_id=self.pk)

    def get_children_by_id(self) -> list[str]:
        return [str(c) for c in JobDependency.objects.filter(parent_id=self.pk)
                .values_list("child_id", flat=True)]

    def get_child_by_name(self: JobT, name: str) -> JobT:
        children = list(self.get_children().filter(name=name)[:2])
        if len(children) != 1:
            raise ValueError(f"{len(children) or 'no'} children named {name!r}")
        return children[0]

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
