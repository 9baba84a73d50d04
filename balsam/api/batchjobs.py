"""``balsam.api.BatchJob``: a batch job the user asks for, as a classic ``core_queuedlaunch`` row.

Creating a BatchJob inserts a ``pending-submission`` row of the service's own kind
(``from_balsam``): the service's submitter submits it exactly as given (nodes, minutes, queue,
project, job mode, ``optional_params`` as extra scheduler flags), its sync keeps the row's state
following the scheduler, and the elastic planner counts it as capacity already queued (so it
does not plan a second batch job for the same work). ``filter_tags={"k": "v"}``: its launcher
runs only jobs whose tags hold every one of those (``balsam launcher --tag k=v``).

States are read through :data:`balsam.api.names.BATCH_STATES` and written by the service, but
for one request of the user's: ``pending_deletion`` (``batch_job.state = "pending_deletion";
batch_job.save()``, ``BatchJob.objects.filter(...).update(state="pending_deletion")``, or
``delete()`` of an unfinished batch job). The service then cancels it with the scheduler (one
never submitted is just cancelled) and the row follows the scheduler to ``finished``.
``delete()`` of a finished batch job removes its row.
"""
from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, Optional

from django.db import connection, transaction

from balsam.api import names
from balsam.api.sites import Site, site_for
from balsam.core import batchrows, batchstates
from balsam.core.models import QueuedLaunch
from balsam.db import dbsettings
from balsam.errors import Ambiguous, NotFound

_CREATE = ("num_nodes", "wall_time_min", "job_mode", "project", "queue", "filter_tags",
           "optional_params")
DELETION = "pending_deletion"
"""The one BatchJob state a user may write (a cancel request)."""
_DELETION_ROW = names.batch_row_states(DELETION)[0]
_ENDED_ROWS = names.batch_row_states("finished") + names.batch_row_states("submit_failed")


class BatchJob:
    """One batch job (see the module docstring)."""

    objects: BatchJobManager

    def __init__(self, site: Site, row: QueuedLaunch) -> None:
        self.__dict__.update(_site=site, _row=row, _delete=False)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in names.BATCH_COLUMNS:
            raise AttributeError(f"BatchJob has no field {name!r}")
        value = getattr(self._row, names.BATCH_COLUMNS[name])
        if name == "state":
            return DELETION if self._delete else names.batch_state(value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "state" or value != DELETION:
            raise names.TranslationError(f"a BatchJob's fields are fixed once created; only "
                                         f"state = {DELETION!r} may be set (to cancel it)")
        self.__dict__["_delete"] = True

    @property
    def site_id(self) -> str:
        return self._site.site_id

    def save(self) -> None:
        """Write a cancel request (``state = "pending_deletion"``), if one was made."""
        if self._delete:
            self._site.activate()
            request_deletion([self._row.pk])
            self.refresh_from_db()

    def delete(self) -> None:
        """Cancel an unfinished batch job (the service cancels it with the scheduler; the row
        stays as its record); remove the row of one that has ended."""
        self._site.activate()
        if not request_deletion([self._row.pk]):
            QueuedLaunch.objects.filter(pk=self._row.pk, state__in=_ENDED_ROWS).delete()

    @property
    def classic(self) -> QueuedLaunch:
        """The classic row this BatchJob translates."""
        return self._row

    def refresh_from_db(self) -> None:
        self._site.activate()
        self._row.refresh_from_db()
        self.__dict__["_delete"] = False

    def __repr__(self) -> str:
        return (f"BatchJob(id={self._row.pk}, queue={self._row.queue!r}, "
                f"num_nodes={self._row.nodes}, state={self.state!r})")


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise names.TranslationError(f"BatchJob {name} must be a whole number >= 1, not {value!r}")
    return value


def _sched_flags(params: Any) -> str:
    """``optional_params`` as the classic extra scheduler flags text."""
    if params is None or params == "":
        return ""
    if isinstance(params, str):
        return params
    if isinstance(params, Mapping):
        return " ".join(f"{k} {v}" if v not in (None, "") else str(k) for k, v in params.items())
    raise names.TranslationError("optional_params must be a string of scheduler flags or a dict "
                                 "{flag: value}")


def _filter_tags(tags: Any) -> dict[str, str]:
    """``filter_tags``: a dict of text keys (no ``=``) to text values."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise names.TranslationError(f"filter_tags must be a dict {{key: value}}, not "
                                     f"{type(tags).__name__}")
    for key, value in tags.items():
        if not isinstance(key, str) or not key.strip() or "=" in key:
            raise names.TranslationError(f"filter_tags key {key!r} must be non-empty text "
                                         "without '='")
        if not isinstance(value, str):
            raise names.TranslationError(f"filter_tags value of {key!r} must be text (as job "
                                         f"tags are), not {value!r}")
    return dict(tags)


def request_deletion(ids: list[int]) -> int:
    """Mark the unfinished batch jobs of ``ids`` ``pending-deletion``; how many were marked
    (ended ones and those already marked are left as they are: the moves
    :data:`balsam.core.batchstates.ROW_TRANSITIONS` allows)."""
    with transaction.atomic(), connection.cursor() as cursor:
        return batchrows.move_allowed(cursor, ids, _DELETION_ROW)


class BatchJobList(list[BatchJob]):
    """What ``BatchJob.objects.filter`` returns: a list with ``update`` and ``delete``."""

    def update(self, **values: Any) -> int:
        """``update(state="pending_deletion")``: cancel every batch job of the list that has
        not ended; returns how many were marked."""
        if values != {"state": DELETION}:
            raise names.TranslationError(f"BatchJobs can only be updated with state={DELETION!r} "
                                         f"(to cancel them), not {values}")
        if not self:
            return 0
        self[0]._site.activate()
        return request_deletion([b.id for b in self])

    def delete(self) -> int:
        """``delete()`` each batch job (see :meth:`BatchJob.delete`); returns how many."""
        for batch in self:
            batch.delete()
        return len(self)


def _row_values(site: Site, fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(_CREATE))
    if unknown:
        raise names.TranslationError(f"unknown BatchJob field(s) {', '.join(unknown)} (fields: "
                                     f"{', '.join(_CREATE)})")
    mode = fields.get("job_mode", "mpi")
    if mode not in names.JOB_MODES:
        raise names.TranslationError(f"job_mode must be one of {', '.join(names.JOB_MODES)}, "
                                     f"not {mode!r}")
    settings = dbsettings.load(site.site_path)
    queues = settings.get("queues") or {}
    queue = str(fields.get("queue") or "")
    if queues and queue not in queues:
        raise names.TranslationError(f"queue {queue!r} is not in {site.site_path}/settings.yml "
                                     f"(queues: {', '.join(queues)})")
    return {
        "nodes": _int("num_nodes", fields.get("num_nodes", 1)),
        "wall_minutes": _int("wall_time_min", fields.get("wall_time_min", 1)),
        "job_mode": mode, "queue": queue,
        "project": str(fields.get("project") or settings.get("project") or ""),
        "sched_flags": _sched_flags(fields.get("optional_params")),
        "filter_tags": _filter_tags(fields.get("filter_tags")),
        "state": batchstates.PENDING, "from_balsam": True, "prescheduled_only": False,
        "created_at": datetime.datetime.now(datetime.timezone.utc),
    }


class BatchJobManager:
    """``BatchJob.objects``: ``create``, ``filter``, ``get``, ``count``."""

    def create(self, site_path: Optional[str] = None, site_id: Optional[Any] = None,
               **fields: Any) -> BatchJob:
        """Insert a batch job for the service to submit (every value checked first)."""
        site = site_for(site_path, site_id)
        row = QueuedLaunch(**_row_values(site, fields))
        row.save()
        return BatchJob(site, row)

    def filter(self, site_path: Optional[str] = None, site_id: Optional[Any] = None,
               **filters: Any) -> BatchJobList:
        site = site_for(site_path, site_id)
        lookups: dict[str, Any] = {}
        for key, value in filters.items():
            if key == "state":
                lookups["state__in"] = names.batch_row_states(value)
            elif key in names.BATCH_COLUMNS:
                lookups[names.BATCH_COLUMNS[key]] = value
            else:
                raise names.TranslationError(f"cannot filter BatchJobs by {key!r} (fields: "
                                             f"{', '.join(names.BATCH_COLUMNS)})")
        return BatchJobList(BatchJob(site, r)
                            for r in QueuedLaunch.objects.filter(**lookups).order_by("id"))

    def get(self, site_path: Optional[str] = None, site_id: Optional[Any] = None,
            **filters: Any) -> BatchJob:
        found = self.filter(site_path, site_id, **filters)
        if len(found) != 1:
            raise (NotFound if not found else Ambiguous)(
                f"{'no' if not found else 'more than one'} batch job matches {filters}")
        return found[0]

    def count(self, site_path: Optional[str] = None, site_id: Optional[Any] = None,
              **filters: Any) -> int:
        return len(self.filter(site_path, site_id, **filters))


BatchJob.objects = BatchJobManager()
