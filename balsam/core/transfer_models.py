"""The transfer tables: one row per file or directory a job moves (an item) and one per batch
of items sent together (see :mod:`balsam.processing.transfers`).

Imported by :mod:`balsam.core.models` (Django finds the models there); written in plain SQL by
the transfer step, read by ``balsam ls transfers``, ``top``, ``report`` and the dashboard.
"""
from __future__ import annotations

from django.db import models

from balsam.core import schema

ITEM_STATES, BATCH_STATES = schema.TRANSFER_ITEM_STATES, schema.TRANSFER_BATCH_STATES


class TransferBatch(models.Model):
    """Items of one (protocol, endpoint, direction) sent together: one rsync/scp connection,
    one Globus task, or one round of local copies."""

    protocol = models.TextField()
    endpoint = models.TextField(default="", blank=True)
    direction = models.TextField()
    state = models.TextField(default="active")
    task_id = models.TextField(default="", blank=True)
    """The external task id of an asynchronous protocol (Globus); empty otherwise."""
    owner = models.TextField(default="", blank=True)
    """``host:pid`` of the process sending a synchronous batch (a dead owner's batch is re-sent)."""
    lease_until = models.DateTimeField(null=True, blank=True)
    """After this a synchronous batch whose owner cannot be checked is taken for lost."""
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    item_count = models.IntegerField(default=0)
    bytes = models.BigIntegerField(default=0)
    message = models.TextField(default="", blank=True)

    class Meta:
        app_label = "core"
        db_table = schema.TRANSFER_BATCH_TABLE
        indexes = [models.Index(fields=["started_at"], name="tbatch_active",
                                condition=models.Q(state="active"))]


class TransferItem(models.Model):
    """One source -> destination a job needs moved before it runs (``in``) or after (``out``)."""

    job = models.ForeignKey("core.BalsamJob", on_delete=models.CASCADE, related_name="+",
                            db_index=False)
    direction = models.TextField()
    source = models.TextField()
    destination = models.TextField()
    protocol = models.TextField()
    endpoint = models.TextField(default="", blank=True)
    """The remote side: ``[user@]host`` for rsync/scp, a collection UUID for Globus, "" local."""
    size = models.BigIntegerField(null=True, blank=True)
    state = models.TextField(default="pending")
    attempts = models.IntegerField(default=0)
    error = models.TextField(default="", blank=True)
    batch = models.ForeignKey(TransferBatch, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+", db_index=False)
    not_before = models.DateTimeField(null=True, blank=True)
    """A failed attempt's back-off: the item is not batched again before this."""
    files = models.IntegerField(default=0)
    """How many top-level entries arrived (a directory or a glob may bring several)."""
    slot = models.TextField(default="", blank=True)
    """The site app's transfer slot it fills ("" for the classic URLs); a slot item's
    destination (stage-in) or source (stage-out) is exactly ``workdir/local_path``."""
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "core"
        db_table = schema.TRANSFER_ITEM_TABLE
        indexes = [models.Index(fields=["job", "direction"], name="titem_job"),
                   models.Index(fields=["protocol", "endpoint", "direction", "id"],
                                name="titem_pending", condition=models.Q(state="pending")),
                   models.Index(fields=["batch"], name="titem_batch",
                                condition=models.Q(state="active"))]
