"""Globus Transfer backend: one Transfer task per batch of items, polled, with failures per item.

The transfer step (``balsam.processing.transfers``) groups pending items by endpoint pair and
calls :meth:`GlobusTransfer.submit` once per batch; it polls the task with
:meth:`GlobusTransfer.poll` until the task is final and routes each item's result to its job.

How per-item results are found (Globus keeps no caller ids per item): each submitted item's
destination path (unique within a task) is remembered with its ``item_id`` in
``<token_dir>/tasks/<task_id>.json``; when the task is final,

* ``SUCCEEDED``: every item is done except those whose paths appear in the task's *skipped
  errors* (the task is submitted with ``skip_source_errors``, so a missing or unreadable source
  is skipped and reported instead of stalling the whole task);
* ``FAILED`` (deadline, cancel, quota, a fatal error): an item is done only if its destination is
  listed in the task's *successful transfers* (files only: a directory item is never confirmed);
  a skipped item gets its skip error; an item named in an error event's ``File:`` line gets that
  event; every other item gets the task's failure message.

Only the HTTP layer differs between the real service and the tests (recorded responses).
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar
from urllib.parse import unquote

from balsam.processing.transfers.globus_auth import (
    GlobusError,
    api_error,
    authorizer,
    is_uuid,
    sdk,
    write_private,
)

__all__ = ["GlobusError", "GlobusItem", "GlobusTaskStatus", "GlobusTransfer", "parse_globus_url"]

log = logging.getLogger(__name__)
ACTIVE, SUCCEEDED, FAILED = "ACTIVE", "SUCCEEDED", "FAILED"
# Globus task status -> our state; INACTIVE is a paused task (e.g. a credential expired) that
# resumes once fixed, so it is still in flight.
STATE_OF = {"ACTIVE": ACTIVE, "INACTIVE": ACTIVE, "SUCCEEDED": SUCCEEDED, "FAILED": FAILED}
# checksum, not mtime: a batch re-sent after a crash may meet a half-written destination file
# newer than its source, which an mtime sync would wrongly keep.
SYNC_LEVEL = "checksum"
MAP_KEEP_SECONDS = 30 * 24 * 3600  # item maps of tasks older than this are pruned at submit
Record = dict[str, Any]
"""One JSON object of the Transfer API (a task, a skipped error, a successful transfer, an event)."""
_T = TypeVar("_T")
_LABEL_BAD = re.compile(r"[^A-Za-z0-9 _,.\-]")  # Transfer accepts a restricted label alphabet


@dataclass(frozen=True)
class GlobusItem:
    """One file or directory to copy: ``item_id`` is the caller's id (a transfer item row)."""

    item_id: int
    source_path: str
    destination_path: str
    recursive: bool


@dataclass(frozen=True)
class GlobusTaskStatus:
    """A task's state (``ACTIVE``, ``SUCCEEDED`` or ``FAILED``), the result of each finished
    item (``None`` = done, else a one-line error; items still in flight are absent), the bytes
    moved so far, and a one-line note on the task (why it is paused or failed), if any."""

    state: str
    per_item: dict[int, Optional[str]]
    bytes_transferred: int
    message: Optional[str] = None


def parse_globus_url(url: str) -> tuple[str, str]:
    """``globus://ENDPOINT_UUID/abs/path`` -> (endpoint UUID, ``/abs/path``); a bad URL is a
    :class:`GlobusError` naming what is wrong."""
    text = url.strip()
    if not text.startswith("globus://"):
        raise GlobusError(f"{url!r}: a Globus URL looks like globus://ENDPOINT_UUID/abs/path")
    endpoint, slash, path = text[len("globus://"):].partition("/")
    if not endpoint:
        raise GlobusError(f"{url!r}: the Globus URL names no endpoint (globus://ENDPOINT_UUID/path)")
    if not is_uuid(endpoint):
        raise GlobusError(f"{url!r}: {endpoint!r} is not an endpoint/collection UUID")
    if not path.strip("/") and not slash:
        raise GlobusError(f"{url!r}: the Globus URL names no path (globus://{endpoint}/abs/path)")
    if any(ord(c) < 32 for c in path):
        raise GlobusError(f"{url!r}: the path holds a control character")
    return str(uuid.UUID(endpoint)), "/" + path


class GlobusTransfer:
    """Submit, poll and cancel Globus Transfer tasks for batches of :class:`GlobusItem`.

    ``token_dir`` holds the login (``balsam globus login``) and the task item maps;
    ``client_id`` is the native app the tokens were issued to; ``transfer_client`` replaces the
    ``globus_sdk.TransferClient`` built from the stored tokens (tests pass one over recorded
    HTTP responses, or any authorizer)."""

    def __init__(self, token_dir: str, client_id: str, transfer_client: Any = None) -> None:
        self.token_dir = token_dir
        self.client_id = client_id
        self._tc = transfer_client

    # -- the three operations -------------------------------------------------------------

    def new_submission_id(self) -> str:
        """A submission id from Globus: store it with the batch before :meth:`submit`, so a
        batch re-sent after a crash is recognised by Globus as the same task, not a second one."""
        return str(self._call("get a submission id", lambda: self._client().get_submission_id())["value"])

    def submit(self, source_endpoint: str, destination_endpoint: str, items: Sequence[GlobusItem],
               label: str, submission_id: Optional[str] = None) -> str:
        """Submit one Transfer task copying every item; returns its task id."""
        _check_items(items)
        g = sdk()
        data = g.TransferData(source_endpoint=source_endpoint, destination_endpoint=destination_endpoint,
                              label=_LABEL_BAD.sub("_", label)[:128] or "balsam",
                              sync_level=SYNC_LEVEL, verify_checksum=True, preserve_timestamp=True,
                              skip_source_errors=True, fail_on_quota_errors=True,
                              notify_on_succeeded=False, notify_on_failed=False)
        if submission_id:
            data["submission_id"] = submission_id
        for item in items:
            data.add_item(item.source_path, item.destination_path, recursive=item.recursive)
        result = self._call(f"submit a transfer of {len(items)} items",
                            lambda: self._client().submit_transfer(data))
        task_id = str(result["task_id"])
        try:
            self._save_map(task_id, items)
        except GlobusError as exc:  # the task exists: its id must reach the caller regardless
            log.warning("Globus task %s: the item map was not saved (poll it with its items): %s",
                        task_id, exc)
        return task_id

    def poll(self, task_id: str, items: Optional[Sequence[GlobusItem]] = None) -> GlobusTaskStatus:
        """The task's state and, once it is final, each item's result. ``items`` defaults to the
        ones :meth:`submit` remembered for this task (pass them after the map was lost)."""
        _check_task_id(task_id)
        tc = self._client()
        task = self._call(f"get task {task_id}", lambda: tc.get_task(task_id))
        state = STATE_OF.get(str(task["status"]), ACTIVE)
        moved = int(task.get("bytes_transferred") or 0)
        if state == ACTIVE:
            return GlobusTaskStatus(ACTIVE, {}, moved, _line(_active_note(task)))
        known = list(items) if items is not None else self._load_map(task_id)
        skipped = self._pages(f"list the skipped errors of task {task_id}",
                              lambda: tc.paginated.task_skipped_errors(task_id).items())
        per_item: dict[int, Optional[str]] = {i.item_id: None for i in known}
        if state == SUCCEEDED:
            _apply(per_item, known, skipped, _skip_message)
            return GlobusTaskStatus(SUCCEEDED, {k: _line(m) for k, m in per_item.items()}, moved, None)
        done = {_norm(t["destination_path"]) for t in self._pages(
            f"list the successful transfers of task {task_id}",
            lambda: tc.paginated.task_successful_transfers(task_id).items())}
        events = [e for e in self._pages(f"list the events of task {task_id}",
                                         lambda: tc.paginated.task_event_list(task_id).items())
                  if e.get("is_error")]
        failure = _failure_message(task, events)
        unconfirmed = [i for i in known if i.recursive or _norm(i.destination_path) not in done]
        for item in unconfirmed:  # an event about a file copied later (a retried fault) is moot
            per_item[item.item_id] = failure
        _apply(per_item, unconfirmed, [e for e in events if _event_file(e)], _event_message,
               path_of=_event_file, newest_first=True)
        _apply(per_item, known, skipped, _skip_message)
        return GlobusTaskStatus(FAILED, {k: _line(m) for k, m in per_item.items()}, moved, _line(failure))

    def cancel(self, task_id: str) -> None:
        """Ask Globus to cancel the task (Globus leaves a task already finished as it is)."""
        _check_task_id(task_id)
        self._call(f"cancel task {task_id}", lambda: self._client().cancel_task(task_id))

    # -- plumbing ---------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._tc is None:
            g = sdk()
            self._tc = g.TransferClient(authorizer=authorizer(self.token_dir, self.client_id),
                                        app_name="balsam")
        return self._tc

    def _call(self, doing: str, fn: Callable[[], _T]) -> _T:
        g = sdk()
        try:
            return fn()
        except (g.GlobusAPIError, g.NetworkError) as exc:
            raise api_error(exc, doing) from None

    def _pages(self, doing: str, fn: Callable[[], Iterable[Any]]) -> list[dict[str, Any]]:
        return self._call(doing, lambda: [dict(x) for x in fn()])

    def _map_path(self, task_id: str) -> str:
        _check_task_id(task_id)
        return os.path.join(self.token_dir, "tasks", f"{task_id}.json")

    def _save_map(self, task_id: str, items: Sequence[GlobusItem]) -> None:
        folder = os.path.join(self.token_dir, "tasks")
        if os.path.isdir(folder):
            cutoff = time.time() - MAP_KEEP_SECONDS
            for name in os.listdir(folder):
                path = os.path.join(folder, name)
                if name.endswith(".json") and os.path.getmtime(path) < cutoff:
                    os.unlink(path)
        rows = [[i.item_id, i.source_path, i.destination_path, i.recursive] for i in items]
        write_private(self._map_path(task_id), json.dumps({"task_id": task_id, "items": rows}) + "\n")

    def _load_map(self, task_id: str) -> list[GlobusItem]:
        path = self._map_path(task_id)
        try:
            with open(path) as fh:
                rows = json.load(fh)["items"]
            return [GlobusItem(int(r[0]), str(r[1]), str(r[2]), bool(r[3])) for r in rows]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            raise GlobusError(f"no item map for Globus task {task_id} in {path}: "
                              "pass the task's items to poll()") from None


def _check_task_id(task_id: str) -> None:
    if not is_uuid(task_id):  # it also names a file: never a path
        raise GlobusError(f"{task_id!r} is not a Globus task id")


def _check_items(items: Sequence[GlobusItem]) -> None:
    if not items:
        raise GlobusError("a Globus transfer needs at least one item")
    ids, dests = set(), set()
    for item in items:
        for path in (item.source_path, item.destination_path):
            if not path.startswith(("/", "~")) or any(ord(c) < 32 for c in path):
                raise GlobusError(f"item {item.item_id}: Globus paths must be absolute (or start "
                                  f"with ~) without control characters: {path!r}")
        dest = _norm(item.destination_path)
        if item.item_id in ids or dest in dests:
            raise GlobusError(f"item {item.item_id}: two items of one Globus task share an id "
                              f"or the destination {dest!r}")
        ids.add(item.item_id)
        dests.add(dest)


def _norm(path: str) -> str:
    text = posixpath.normpath(path.replace("/~/", "~/", 1) if path.startswith("/~/") else path)
    return "/" if text in ("", ".") else text


def _owners(items: Sequence[GlobusItem], path: str) -> list[GlobusItem]:
    """The items a reported path belongs to: the item with that destination, or the recursive
    item whose destination holds it, or (a directory that could not be made) every item under
    it; else the same by source path, which may be shared by several items."""
    reported = _norm(path)
    for attr in ("destination_path", "source_path"):
        table: dict[str, list[GlobusItem]] = {}
        for item in items:
            table.setdefault(_norm(getattr(item, attr)), []).append(item)
        here = reported
        while True:
            found = [i for i in table.get(here, []) if here == reported or i.recursive]
            if found:
                return found
            parent = posixpath.dirname(here)
            if parent == here or not parent:
                break
            here = parent
        under = [i for p, group in table.items() if p.startswith(reported.rstrip("/") + "/") for i in group]
        if under:
            return under
    return []


def _apply(per_item: dict[int, Optional[str]], items: Sequence[GlobusItem], records: list[Record],
           message: Callable[[Record], str], path_of: Optional[Callable[[Record], str]] = None,
           newest_first: bool = False) -> None:
    """Set the message of each item a record's path belongs to (for newest-first records,
    the newest record of an item wins)."""
    seen: set[int] = set()
    for record in records:
        paths = [path_of(record)] if path_of else [record.get("destination_path") or "",
                                                   record.get("source_path") or ""]
        for item in next((o for o in (_owners(items, p) for p in paths if p) if o), []):
            if not (newest_first and item.item_id in seen):
                per_item[item.item_id] = message(record)
                seen.add(item.item_id)


def _detail(text: str) -> str:
    """The telling part of a GridFTP/GCS error detail (URL-encoded CRLFs, ``550-`` prefixes)."""
    lines = unquote(text or "").replace("\\r\\n", "\n").splitlines()
    for key in ("Error-String:", "System error in", "GridFTP-Error:"):
        for line in lines:
            if key in line:
                tail = line[line.index(key):]
                return (tail.split(":", 1)[1] if key.endswith(":") else tail).strip()
    return ""


def _skip_message(record: Record) -> str:
    detail = _detail(record.get("error_details", ""))
    return (f"Globus skipped {record.get('source_path')}: {record.get('error_code', 'ERROR')}"
            + (f" ({detail})" if detail else ""))


def _event_file(event: Record) -> str:
    match = re.search(r"^File: (.+)$", event.get("details") or "", re.M)
    return match.group(1).strip() if match else ""


def _event_message(event: Record) -> str:
    detail = _detail(event.get("details", ""))
    return (f"Globus error on {_event_file(event)}: {event.get('code')} "
            f"({event.get('description')})" + (f": {detail}" if detail else ""))


def _failure_message(task: Record, error_events: list[Record]) -> str:
    fatal = task.get("fatal_error") or {}
    if fatal:
        return f"Globus task failed: {fatal.get('code')}: {fatal.get('description')}"
    if error_events:
        e = error_events[0]  # the event list is newest first
        return f"Globus task failed: {e.get('code')} ({e.get('description')})"
    return f"Globus task failed: {task.get('nice_status') or 'no reason given'}"


def _line(message: Optional[str], limit: int = 1000) -> Optional[str]:
    """``message`` on one line (whitespace runs collapsed), at most ``limit`` characters."""
    if message is None:
        return None
    text = " ".join(message.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _active_note(task: Record) -> Optional[str]:
    nice = task.get("nice_status")
    if task.get("status") == "INACTIVE":
        return f"Globus task paused: {task.get('nice_status_short_description') or nice or 'inactive'}"
    if nice and nice not in ("OK", "Queued"):
        return f"Globus is retrying: {nice} ({task.get('faults', 0)} faults so far)"
    return None
