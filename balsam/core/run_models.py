"""The tables a job's run refers to: its application (:class:`ApplicationDefinition`, named by
the job), the batch job it runs in (:class:`QueuedLaunch`) and the launcher holding it
(:class:`LauncherSession`); and the check that a job's application exists.

Imported by :mod:`balsam.core.models` (Django finds the models there, and classic scripts
import them from there), after Django is configured.
"""
from __future__ import annotations

from typing import Any

from django.db import models

from balsam.core import batchstates, schema
from balsam.errors import NoApplication


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
    idle_slots = models.IntegerField(default=0, db_default=0)
    """Slots of this serial launcher that idle while its claims find nothing (0: none), for
    launchers holding queued work to give back (:mod:`balsam.core.idle_slots`)."""

    class Meta:
        app_label = "core"
        db_table = schema.SESSION_TABLE
        indexes = [models.Index(fields=["heartbeat"], name="session_live",
                                condition=models.Q(ended_at__isnull=True))]
