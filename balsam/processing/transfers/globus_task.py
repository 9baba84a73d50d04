"""Globus Transfer (``globus://COLLECTION_UUID/abs/path``): one Transfer task per batch.

An asynchronous plug-in: :func:`submit` hands the batch to Globus and returns the task id the
step records on the batch row; :func:`poll` (on later passes, by any process: the task id is in
the database, so a restarted service resumes polling) maps the task's per-item outcome back to
the items. The Globus client itself lives in :mod:`balsam.processing.transfers.globus`
(``GlobusTransfer``, ``GlobusItem``, ``GlobusError``), imported by name when the first Globus
batch runs, so nothing here needs globus-sdk until a ``globus://`` URL is used.

This site's side of every item is ``transfers.globus_endpoint_id`` (a collection UUID): a
stage-in goes from the item's endpoint to it, a stage-out from it to the item's endpoint. An
item's destination is a directory the source goes into under its name, or, for a transfer
slot's item, exactly the path it arrives as. :func:`cancel` stops a task nobody waits for.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from typing import Any

from balsam.processing.transfer import TransferError
from balsam.processing.transfers import Context, Item, Poll

BACKEND = "balsam.processing.transfers.globus"


def _backend() -> Any:
    try:
        return importlib.import_module(BACKEND)
    except ImportError as exc:
        raise TransferError(f"Globus Transfer is not available ({exc})")


def _client(ctx: Context) -> Any:
    if not ctx.globus_endpoint_id or not ctx.globus_client_id:
        raise TransferError("globus:// transfers need transfers.globus_endpoint_id and "
                            "transfers.globus_client_id in settings.yml")
    return _backend().GlobusTransfer(ctx.db_path, ctx.globus_client_id)


def submit(items: Sequence[Item], ctx: Context) -> str:
    """Submit one Transfer task for ``items`` (one endpoint, one direction); its task id."""
    backend = _backend()
    client = _client(ctx)
    local, remote = ctx.globus_endpoint_id, items[0].endpoint
    inbound = items[0].direction == "in"
    entries = []
    for item in items:
        name = os.path.basename(item.source.rstrip("/"))
        dest = item.destination if item.slot else os.path.join(item.destination, name)
        recursive = item.source.endswith("/") if inbound else os.path.isdir(item.source)
        entries.append(backend.GlobusItem(item.id, item.source, dest, recursive))
    source, destination = (remote, local) if inbound else (local, remote)
    try:
        return str(client.submit(source, destination, entries,
                                 f"balsam {'stage-in' if inbound else 'stage-out'} "
                                 f"{len(entries)} item(s)"))
    except backend.GlobusError as exc:
        raise TransferError(f"Globus submit failed: {exc}")


def cancel(task_id: str, ctx: Context) -> None:
    """Ask Globus to cancel the task (its items' jobs were killed or failed)."""
    backend = _backend()
    try:
        _client(ctx).cancel(task_id)
    except backend.GlobusError as exc:
        raise TransferError(f"Globus task {task_id}: cancel failed: {exc}")


def poll(task_id: str, ctx: Context) -> Poll:
    """The task's state, per-item outcome and bytes moved."""
    backend = _backend()
    try:
        status = _client(ctx).poll(task_id)
    except backend.GlobusError as exc:
        raise TransferError(f"Globus task {task_id}: {exc}")
    return Poll(status.state, dict(status.per_item), int(status.bytes_transferred))
