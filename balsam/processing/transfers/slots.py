"""Transfer slots of site apps (the newer API's ``transfers``, as in Balsam 0.6).

An app declares named slots (``{"input_file": {"direction": "in", "local_path": "input.nc",
"required": True, "recursive": False, "description": ...}}``); a job fills them with
``LOCATION:/path`` -- LOCATION an alias of ``transfers: locations:`` in settings.yml
(``{"laptop": "rsync://me@laptop"}``) -- or a URL of the classic syntax (``rsync:host:/path``,
``scp:...``, ``globus://UUID/path``, an absolute local path). :func:`resolve_url` checks a
value and returns its URL when the job is created, so a bad one is an error then.

A job's filled slots are rows of ``core_jobtransferslot`` (one per slot, deleted with the job:
migration 0014), written in the job's own transaction (:func:`store`). The transfer step makes
one item per row (:mod:`.items`) when the job reaches READY (``in``) or POSTPROCESSED
(``out``); its working-directory side is exactly ``workdir/local_path``, so a slot may rename
(the remote ``f7.dat`` arrives as ``input.nc``), and a stage-out's remote path is the file's
own path (a path ending in ``/`` is a directory the file goes into under its name).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from balsam.core import schema
from balsam.db.dbapi import Cursor
from balsam.processing.transfer import TransferError
from balsam.processing.transfers import locate

SLOT = schema.TRANSFER_SLOT_TABLE

HAS_IN = f"EXISTS (SELECT 1 FROM {SLOT} ts WHERE ts.job_id = j.job_id AND ts.direction = 'in')"
"""SQL over job j: it has a filled stage-in slot."""
HAS_OUT = f"EXISTS (SELECT 1 FROM {SLOT} ts WHERE ts.job_id = j.job_id AND ts.direction = 'out')"
"""SQL over job j: it has a filled stage-out slot."""


@dataclass(frozen=True)
class SlotValue:
    """One filled slot of a job: the value as given and the URL it names."""

    slot: str
    direction: str
    given: str
    url: str
    local_path: str
    recursive: bool = False


def resolve_url(value: Any, locations: Mapping[str, str]) -> str:
    """The transfer URL a slot value names; :class:`TransferError` saying what is wrong
    (not text, an unknown location alias, a relative path, an unsupported URL)."""
    if not isinstance(value, str) or not value.strip():
        raise TransferError(f"{value!r} is not a location: use LOCATION:/path, a URL or an "
                            "absolute path")
    text = value.strip()
    head, colon, rest = text.partition(":")
    if colon and head in locations:
        url = _join(head, locations[head], rest)
    elif text.startswith("/") or (colon and head in schema.TRANSFER_SCHEMES):
        url = text
    elif colon and "/" not in head:
        known = ", ".join(sorted(locations)) or "none"
        raise TransferError(f"{text!r}: unknown location {head!r} (settings.yml transfers: "
                            f"locations: defines {known})")
    else:
        raise TransferError(f"{text!r}: a relative path (use LOCATION:/path, a URL or an "
                            "absolute path)")
    where = locate(url)
    if where.protocol == "gsiftp":  # globus-url-copy places files by name: no exact path
        raise TransferError(f"{text!r}: legacy gsiftp:// cannot fill a slot (use globus://)")
    if where.protocol == "local" and not os.path.isabs(where.path):
        raise TransferError(f"{text!r}: a local path must be absolute")
    return url


def _join(alias: str, target: str, path: str) -> str:
    """``ALIAS:path`` as a URL, the alias standing for ``target`` (checked by the settings
    schema: globus://UUID, rsync://[user@]host, rsync:[user@]host, scp..., local)."""
    if not path:
        raise TransferError(f"{alias}: names no path ({alias}:/path)")
    if target == "local":
        return path
    scheme, _, host = target.partition(":")
    host = host.removeprefix("//").rstrip("/")
    if scheme == "globus":
        return f"globus://{host}/{path.lstrip('/')}"
    return f"{scheme}:{host}:{path}"


def store(cursor: Cursor, rows: Iterable[tuple[str, SlotValue]]) -> None:
    """Insert the filled slots of new jobs ((job id, slot) pairs) in the caller's transaction."""
    rows = list(rows)
    if rows:
        cols = list(zip(*[(job_id, s.slot, s.direction, s.given, s.url, s.local_path,
                           s.recursive) for job_id, s in rows]))
        cursor.execute(f"""
            INSERT INTO {SLOT} (job_id, slot, direction, given, url, local_path, recursive)
            SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[],
                                 %s::text[], %s::bool[])""", [list(c) for c in cols])


def of_job(cursor: Cursor, job_id: str) -> dict[str, str]:
    """A job's filled slots as given (``{slot: value}``)."""
    cursor.execute(f"SELECT slot, given FROM {SLOT} WHERE job_id = %s ORDER BY slot",
                   [str(job_id)])
    return {slot: given for slot, given in cursor.fetchall()}
