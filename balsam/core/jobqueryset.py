"""The BalsamJob queryset: every bulk write keeps states, events and the task graph consistent.

Deletes go through :func:`lifecycle.delete_jobs` (waiting children of removed jobs fail, never
strand), ``update``/``bulk_update`` check values and route state changes through the state
writer, and ``bulk_create`` streams validated rows through PostgreSQL COPY.
"""
from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter, itemgetter, methodcaller
from typing import Any, Optional, Protocol, TypeVar

from django.db import connection, models, transaction

from balsam.core import bulk, copyfmt, lifecycle, schema
from balsam.core.states import USER_TARGETS, InvalidStateError, validate_state
from balsam.errors import BalsamError, InvalidParentsError


class Job(Protocol):
    """What the bulk writes use of a job (a :class:`balsam.core.models.BalsamJob`; the queryset
    reaches the model class itself as ``self.model``, given by Django's manager)."""

    pk: Any
    state: str
    _state: Any  # Django's ModelState

    def _validated(self) -> None: ...


JobT = TypeVar("JobT", bound=Job)
_ADDING = attrgetter("adding")
_STATE = methodcaller("get", "_state")
_LOADED = itemgetter("_loaded_state")
_DICT = attrgetter("__dict__")
_APPLICATION = itemgetter("application")
_PARENTS = itemgetter("_pending_parents")


class BalsamJobQuerySet(models.QuerySet):
    """Querysets whose writes keep the dependency graph and event log consistent."""

    def delete(self) -> tuple[int, dict[str, int]]:
        """Delete the jobs; children still waiting on them become FAILED (never stranded)."""
        ids = list(self.values_list("pk", flat=True))
        with transaction.atomic(using=self.db), connection.cursor() as cur:
            count = lifecycle.delete_jobs(cur, ids)
        return count, {"core.BalsamJob": count}

    def update(self, **kwargs: Any) -> int:
        """Django's ``update()``, except that values are checked as ``save()`` checks them and a
        ``state`` goes through the state writer (user rules: a USER_KILLED job is skipped, RUNNING
        is refused); returns the rows matched."""
        for key, value in kwargs.items():
            if key in schema.JOB_DEFAULTS and key != "state" \
                    and not hasattr(value, "resolve_expression"):
                kwargs[key] = schema.check_field(key, value)
        if isinstance(kwargs.get("application"), str):
            self.model._require_apps({kwargs["application"]})
        if "state" not in kwargs:
            return super().update(**kwargs)
        state = validate_state(kwargs.pop("state"))
        if state not in USER_TARGETS:
            raise InvalidStateError(f"update(state={state.value!r}) is refused: only a launcher "
                                    "that runs a job makes it RUNNING")
        with transaction.atomic(using=self.db):
            ids = list(self.values_list("pk", flat=True))
            if kwargs:
                super().update(**kwargs)
            with connection.cursor() as cur:
                lifecycle.transition(cur, ids, state, "state set with update()", user=True)
        return len(ids)

    def bulk_update(self, objs: Iterable[Job], fields: Iterable[str],
                    batch_size: Optional[int] = None) -> int:
        """Django's ``bulk_update()``, except that values are checked as ``save()`` checks them
        and changed states go through the state writer (user rules, as :meth:`update`)."""
        objs, fields = list(objs), list(fields)
        for obj in objs:
            obj._validated()
        others = [f for f in fields if f != "state"]
        with transaction.atomic(using=self.db):
            rows = super().bulk_update(objs, others, batch_size=batch_size) if others else 0
            if "state" in fields:
                self.model._write_states(objs, "state set with bulk_update()")
        return rows

    def bulk_create(self, objs: Iterable[JobT], batch_size: Optional[int] = None,
                    **kwargs: Any) -> list[JobT]:
        """Insert many jobs at once through PostgreSQL COPY (several times faster than INSERT).

        Every field is validated and converted as ``save()`` does, in a Cython pass; one bad
        value raises and nothing is written (one transaction). ``batch_size`` is ignored: rows
        are streamed to the server in chunks of ``bulk.CHUNK_ROWS``. Other keyword arguments
        (``ignore_conflicts`` ...), or objects already saved, take Django's ordinary path.
        """
        if kwargs:
            # Django's own path would skip validation, state events and dependency edges.
            raise TypeError(f"BalsamJob.objects.bulk_create() does not support {', '.join(kwargs)}")
        objs = objs if type(objs) is list else list(objs)
        # Whole-list passes run as C loops (map, attrgetter): bulk_create is timed against a
        # raw COPY of the same rows (benchmarks/bench_bulk_insert.py).
        rows = list(map(_DICT, objs))  # validated in copy_jobs, as save() validates
        # Saved: a job loaded or saved (its ModelState says so) or bulk-created (``_loaded_state``
        # set; a fast-constructed job has no ModelState until it is used, see models.py).
        if any(map(_LOADED, rows)) or not all(map(_ADDING, filter(None, map(_STATE, rows)))):
            raise ValueError("bulk_create() got jobs that are already saved")
        self.model._require_apps(set(map(_APPLICATION, rows)) - {""})
        with transaction.atomic(using=self.db), connection.cursor() as cur:
            edges = [(p, d["job_id"]) for d in rows if d["_pending_parents"]
                     for p in d["_pending_parents"]] if any(map(_PARENTS, rows)) else []
            checked = bool(edges)
            if checked:
                schema.check_new_jobs(rows)
                bulk.normalize_rows(rows)  # the edge check needs valid states
                try:
                    edges = lifecycle.check_new_edges(
                        cur, edges, {str(r["job_id"]): r["state"] for r in rows})
                except (BalsamError, schema.FieldError) as exc:
                    raise InvalidParentsError(str(exc))
            # Without edges, the creation rules are checked chunk by chunk in the COPY stream,
            # while the server stores the previous chunk; a refused row aborts the COPY, and
            # this transaction leaves nothing behind.
            bulk.copy_jobs(cur, rows, normalized=checked,
                           check=None if checked else schema.check_new_jobs)
            bulk.insert_edges(cur, edges)
        db = self.db
        for d in rows:
            st = d.get("_state")
            if st is not None:
                st.adding = False
                st.db = db
            d["_saved_db"] = db  # for a ModelState made later (models._LazyModelState)
            d["_loaded_state"] = d["state"]
            d["_pending_parents"] = None
        copyfmt.track_dicts(rows)  # saved: tracked by the GC again (see BalsamJob.__init__)
        return objs
