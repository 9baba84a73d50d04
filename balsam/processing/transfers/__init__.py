"""Stage-in and stage-out as transfer items sent in batches (no database access here).

A job's data needs become rows of ``core_transferitem`` (:mod:`.items`): its ``stage_in_url``
one ``in`` item when the job reaches READY, each file its ``stage_out_files`` patterns match one
``out`` item when it reaches POSTPROCESSED (the files exist only then). The transfer step
(:mod:`.step`, run by the transition pool of the service and of launchers) groups pending items
by (protocol, endpoint, direction), sends each group in batches through the protocol's plug-in,
and moves the jobs whose items are all done (READY -> STAGED_IN, POSTPROCESSED -> JOB_FINISHED)
or fails the job of an item that failed, with the transfer's message.

A plug-in is one small module named in :data:`PROTOCOLS`. A **synchronous** one (local, rsync,
scp, gsiftp) exposes ``send(items, ctx) -> {item_id: Result}`` and returns when the batch has
moved; an **asynchronous** one (Globus Transfer) exposes ``submit(items, ctx) -> task_id`` and
``poll(task_id, ctx) -> Poll``, and the step polls its task on later passes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from balsam.processing import transfer

PROTOCOLS: dict[str, tuple[str, str]] = {
    # protocol: (plug-in module, kind)
    "local": ("balsam.processing.transfers.local", "sync"),
    "rsync": ("balsam.processing.transfers.ssh", "sync"),
    "scp": ("balsam.processing.transfers.ssh", "sync"),
    "gsiftp": ("balsam.processing.transfers.gsiftp", "sync"),
    "globus": ("balsam.processing.transfers.globus_task", "async"),
}
"""Every protocol, its plug-in and whether a batch is sent at once or submitted and polled."""

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class Location:
    """Where one side of a transfer is: ``protocol``, ``endpoint`` (``[user@]host``, a Globus
    collection UUID, or "" for this machine) and ``path`` on it."""

    protocol: str
    endpoint: str
    path: str


def locate(url: str) -> Location:
    """The :class:`Location` of a stage-in/out URL (the schemes of
    :func:`balsam.processing.transfer.parse_url`, plus ``globus://UUID/abs/path`` for Globus
    Transfer); :class:`~balsam.processing.transfer.TransferError` if unsupported."""
    text = url.strip()
    if text.startswith("globus://"):
        endpoint, slash, path = text[len("globus://"):].partition("/")
        if not _UUID.match(endpoint) or not slash:
            raise transfer.TransferError(f"{url}: a Globus URL is globus://COLLECTION_UUID/path")
        return Location("globus", endpoint.lower(), "/" + path)
    protocol, spec = transfer.parse_url(text)
    if protocol == transfer.GLOBUS:  # gsiftp://host/path through globus-url-copy
        host = spec.split("://", 1)[-1].split("/", 1)[0]
        return Location("gsiftp", host, spec)
    if protocol in (transfer.RSYNC, transfer.SCP):
        host, colon, path = spec.partition(":")
        if colon and "/" not in host:
            return Location(protocol, host, path)
        return Location(protocol, "", spec)
    return Location("local", "", spec)


@dataclass(frozen=True)
class Item:
    """One item of a batch as a plug-in sees it (paths are paths on their own side)."""

    id: int
    job_id: str
    direction: str
    """``in``: ``source`` is on ``endpoint``, ``destination`` is the job's working directory;
    ``out``: ``source`` is a file in the working directory, ``destination`` a directory there."""
    source: str
    destination: str
    endpoint: str
    slot: str = ""
    """The site app's transfer slot it fills: then ``destination`` is the exact path the
    source arrives as (``in``: ``workdir/local_path``; ``out``: the remote file), not a
    directory it goes into."""


@dataclass
class Result:
    """How one item went: ``error`` None when it arrived; ``final`` when retrying cannot help
    (the source does not exist)."""

    error: Optional[str] = None
    final: bool = False
    files: int = 1
    size: int = 0


@dataclass
class Poll:
    """An asynchronous batch's state: ``ACTIVE``, ``SUCCEEDED`` or ``FAILED``; per item None
    (arrived) or an error; bytes moved so far."""

    state: str
    per_item: dict[int, Optional[str]] = field(default_factory=dict)
    bytes: int = 0


@dataclass(frozen=True)
class Context:
    """What a plug-in may use: a private scratch directory for the batch, time limit, threads
    for local copies, the ssh_config file, the Globus settings and the DB directory."""

    staging: str
    timeout: float
    threads: int
    ssh_config_file: str = ""
    globus_endpoint_id: str = ""
    globus_client_id: str = ""
    db_path: str = ""
    protocol: str = ""
