"""The transfer step: one pass recovers lost batches, creates items, records finished batches,
claims and starts new ones, polls asynchronous ones and moves the jobs whose items ended.

Synchronous batches (local, rsync, scp, gsiftp) run in a thread pool, so a pass never waits for
a transfer: their results are recorded by the first pass after they end. Asynchronous batches
(Globus) are submitted in the pass that claims them and polled every ``poll_seconds`` by
whichever process runs the step; a task whose items no job waits for any more (their jobs were
killed or failed) is cancelled (the plug-in's ``cancel``) and its items fail.
:class:`TransferWorker` runs passes in a thread; the transition pool of the service and of
launchers starts one (:mod:`balsam.processing.worker`); it wakes on its own notification
channel (jobs left in READY or POSTPROCESSED) or its timer, and runs a pass only when one
cheap check (:func:`.items.may_have_work`) finds something a pass could do.

A process killed mid-batch leaves its batch ``active`` with its ``host:pid``: the next pass on
that host (or any pass after the batch's lease, the transfer timeout plus a minute) marks it
``lost`` and its items are sent again; the jobs never moved, so none ran without its files.
"""
from __future__ import annotations

import concurrent.futures as cf
import importlib
import logging
import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any, Optional

from balsam import defaults
from balsam.core.tunables import Tunables
from balsam.db.database import Database
from balsam.db.dbapi import Cursor
from balsam.db.idle_poll import IdlePoll
from balsam.errors import BalsamError, DatabaseUnavailable
from balsam.processing.transfers import PROTOCOLS, Context, Item, Result, items
from balsam.processing.transfers.completion import complete_jobs, retry_in

LEASE_MARGIN_SECONDS = 60.0
SAFETY_PASS_SECONDS = 60.0
"""A worker runs a pass at least this often even when :func:`.items.may_have_work` says there
is nothing to do (a safety net: that check is meant to be a superset of what a pass does)."""
RETRY_LOOK_SECONDS = 1.0
"""An item's retry back-off running out brings a look, at most once in this many seconds after
the last pass (items failing one batch after another fall due a few milliseconds apart: one
look for them all, not a pass of four transactions or more each)."""
ASYNC = [p for p, (_, kind) in PROTOCOLS.items() if kind == "async"]


def owner_alive(owner: str) -> bool:
    """Whether the ``host:pid`` that sends a batch may still be running (another host's
    process cannot be checked from here: its lease decides)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TransferStep:
    """Runs transfer passes against one DB with ``settings`` (the whole settings.yml)."""

    def __init__(self, db_path: str, settings: Mapping[str, Any], *,
                 wf_filter: Optional[str] = None, log: Optional[logging.Logger] = None) -> None:
        self.db_path = db_path
        self.t = dict(settings["transfers"])
        tunables = Tunables.from_settings(settings["launcher"])
        self.timeout = tunables.transfer_timeout_seconds
        self.limit = tunables.processing_batch
        self.wf_filter = wf_filter
        self.log = log or logging.getLogger("balsam.transfers")
        workers = max(2, 4 * int(self.t["batches_per_endpoint"]))
        self.pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="balsam-xfer")
        self.inflight: dict[cf.Future[Any], int] = {}
        self._next_poll = 0.0
        self.retry_due: Optional[float] = None
        """When (``time.monotonic()``) the first item the last pass left waiting out its
        back-off may be sent (None: none waits): no statement announces that moment."""

    def context(self, batch_id: int, protocol: str) -> Context:
        staging = os.path.join(self.db_path, "transfers", f"batch-{batch_id}")
        return Context(staging=staging, timeout=self.timeout, threads=int(self.t["local_threads"]),
                       ssh_config_file=self.t["ssh_config_file"],
                       globus_endpoint_id=self.t["globus_endpoint_id"],
                       globus_client_id=self.t["globus_client_id"], db_path=self.db_path,
                       protocol=protocol)

    def run_pass(self, db: Database) -> dict[str, int]:
        """One pass (see the module docstring); what it did, by kind."""
        counts = {"lost": len(db.run(items.recover_lost, owner_alive))}
        counts["recorded"] = self._record_finished(db)
        counts["created"] = db.run(items.create_items, self.db_path, self.wf_filter, self.limit)
        claimed = db.run(items.claim_batches, batch_items=int(self.t["batch_items"]),
                         per_endpoint=int(self.t["batches_per_endpoint"]),
                         lease_seconds=self.timeout + LEASE_MARGIN_SECONDS,
                         async_protocols=ASYNC, wf_filter=self.wf_filter)
        for batch_id, protocol, batch in claimed:
            self.log.info(f"transfer batch {batch_id}: {len(batch)} {protocol} item(s) "
                          f"{batch[0].direction} {batch[0].endpoint or '(local)'}")
            if protocol in ASYNC:
                self._submit(db, batch_id, protocol, batch)
            else:
                self.inflight[self.pool.submit(self._send, batch_id, protocol, batch)] = batch_id
        counts["started"] = len(claimed)
        counts["polled"] = self._poll(db)
        completed, wait = db.run(_complete, self.wf_filter, self.limit)
        counts.update(completed)
        self.retry_due = None if wait is None else time.monotonic() + wait
        return counts

    def busy(self) -> bool:
        return bool(self.inflight)

    def wait(self, timeout: float) -> None:
        """Until an in-flight batch ends or ``timeout`` seconds pass."""
        if self.inflight:
            cf.wait(list(self.inflight), timeout=timeout, return_when=cf.FIRST_COMPLETED)

    def close(self) -> None:
        """Stop starting batches; running ones are left to finish or to be recovered."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    # ---- synchronous batches ------------------------------------------------------------------
    def _send(self, batch_id: int, protocol: str, batch: list[Item]) -> dict[int, Result]:
        ctx = self.context(batch_id, protocol)
        try:
            os.makedirs(ctx.staging, exist_ok=True)
            module = importlib.import_module(PROTOCOLS[protocol][0])
            results = module.send(batch, ctx)
        except Exception as exc:  # noqa: BLE001 - a plug-in failure fails its batch, not the step
            self.log.exception(f"transfer batch {batch_id} failed")
            results = {i.id: Result(f"{protocol} batch {batch_id} failed: {exc}") for i in batch}
        finally:
            shutil.rmtree(ctx.staging, ignore_errors=True)
        return {i.id: results.get(i.id, Result(f"{protocol} gave no result")) for i in batch}

    def _record_finished(self, db: Database) -> int:
        done = [f for f in self.inflight if f.done()]
        for future in done:
            batch_id = self.inflight.pop(future)
            results = future.result()
            if not db.run(items.record, batch_id, results, **self._retry()):
                self.log.warning(f"transfer batch {batch_id} was recovered meanwhile: its "
                                 "results are not recorded (its items were sent again)")
            failed = sum(r.error is not None for r in results.values())
            self.log.info(f"transfer batch {batch_id}: {len(results) - failed} done, "
                          f"{failed} failed")
        return len(done)

    def _retry(self) -> dict[str, Any]:
        return {"max_attempts": int(self.t["max_attempts"]),
                "backoff_seconds": float(self.t["retry_backoff_seconds"])}

    # ---- asynchronous batches -----------------------------------------------------------------
    def _submit(self, db: Database, batch_id: int, protocol: str, batch: list[Item]) -> None:
        module = importlib.import_module(PROTOCOLS[protocol][0])
        try:
            task_id = module.submit(batch, self.context(batch_id, protocol))
        except BalsamError as exc:
            db.run(items.fail_batch, batch_id, str(exc), **self._retry())
            return
        db.run(items.set_task, batch_id, task_id)

    def _poll(self, db: Database) -> int:
        now = time.monotonic()
        if now < self._next_poll:
            return 0
        self._next_poll = now + float(self.t["poll_seconds"])
        for batch_id, protocol, task_id in db.run(items.abandoned_async, ASYNC):
            self._cancel(db, batch_id, protocol, task_id)
        polled = 0
        for batch_id, protocol, task_id in db.run(items.active_async, ASYNC):
            module = importlib.import_module(PROTOCOLS[protocol][0])
            try:
                status = module.poll(task_id, self.context(batch_id, protocol))
            except BalsamError as exc:
                self.log.warning(f"transfer batch {batch_id}: {exc}")
                continue
            polled += 1
            if status.state == "ACTIVE":
                continue
            # An item the task does not report arrived if the task SUCCEEDED, else not.
            missing = (None if status.state == "SUCCEEDED"
                       else f"{protocol} task {task_id} ended {status.state} without it")
            results = {i: Result(status.per_item.get(i, missing))
                       for i in db.run(items.active_ids, batch_id)}
            db.run(items.record, batch_id, results, **self._retry())
        return polled


    def _cancel(self, db: Database, batch_id: int, protocol: str, task_id: str) -> None:
        """Cancel a task no job waits for (killed or failed jobs); if that fails, the task is
        polled as before and its results are recorded for jobs that no longer need them."""
        module = importlib.import_module(PROTOCOLS[protocol][0])
        try:
            module.cancel(task_id, self.context(batch_id, protocol))
        except BalsamError as exc:
            self.log.warning(f"transfer batch {batch_id}: {exc}")
            return
        db.run(items.cancelled, batch_id, f"{protocol} task {task_id} cancelled: no job waits "
                                          "for its items (killed, failed or reset)")
        self.log.info(f"transfer batch {batch_id}: {protocol} task {task_id} cancelled "
                      "(no job waits for it)")


def _complete(cursor: Cursor, wf_filter: Optional[str], limit: int
              ) -> tuple[dict[str, int], Optional[float]]:
    """The pass's last transaction: the jobs whose items ended move on; and seconds until
    the first item waiting out its back-off may be sent (:mod:`.completion`)."""
    return complete_jobs(cursor, wf_filter, limit), retry_in(cursor, wf_filter)


class TransferWorker(threading.Thread):
    """A thread running transfer passes until ``stop`` is set (settings read from the DB).

    It wakes when a statement leaves jobs in READY or POSTPROCESSED (its own channel,
    :data:`balsam.defaults.TRANSFER_NOTIFY_CHANNEL`, not every job change: an MPI-mode run of
    short tasks commits hundreds of changes a second, each of which cost the server a
    transaction per listener) and on a fallback look (asynchronous tasks, senders that died):
    ``idle_wait_seconds`` after a look that found nothing, backing off to
    ``idle_poll_max_seconds`` while nothing comes (:class:`balsam.db.idle_poll.IdlePoll`,
    session 20: it looked every second). It also looks when an item's retry back-off ends
    (:attr:`TransferStep.retry_due`) and at once after its connection was re-established
    (session 21). It then runs a pass (four transactions or more) only when a batch of its own
    is in flight or :func:`.items.may_have_work` (one statement) finds something, and at least
    every :data:`SAFETY_PASS_SECONDS`."""

    def __init__(self, db_path: str, *, stop: threading.Event, log: logging.Logger,
                 wf_filter: Optional[str] = None, idle_wait_seconds: float = 1.0,
                 reconnect_max_seconds: float = 30.0,
                 idle_poll_max_seconds: float = defaults.IDLE_POLL_MAX_SECONDS) -> None:
        super().__init__(name="balsam-transfers", daemon=True)
        self.db_path, self.stop, self.log = db_path, stop, log
        self.wf_filter, self.idle_wait_seconds = wf_filter, idle_wait_seconds
        self.poll = IdlePoll(idle_wait_seconds, idle_poll_max_seconds)
        self.db = Database(db_path, "balsam-transfers", stop=stop,
                           reconnect_max_seconds=reconnect_max_seconds, log=log.warning)

    def run(self) -> None:
        from balsam.db import dbsettings

        step: Optional[TransferStep] = None
        try:
            step = TransferStep(self.db_path, dbsettings.load(self.db_path),
                                wf_filter=self.wf_filter, log=self.log)
            self.db.listen(defaults.TRANSFER_NOTIFY_CHANNEL)
            self._loop(step)
        except DatabaseUnavailable:
            pass  # stopping while the database is away: lost batches are recovered later
        except Exception:  # a worker must not die silently
            self.log.exception("the transfer worker failed")
        finally:
            if step is not None:
                step.close()
            self.db.close()

    @staticmethod
    def _retry_at(step: TransferStep, passed: float) -> float:
        """When an item's retry back-off running out brings a look (``time.monotonic()``; inf:
        none waits): at ``step.retry_due``, but not sooner than :data:`RETRY_LOOK_SECONDS`
        after the last pass (``passed``)."""
        if step.retry_due is None:
            return math.inf
        return max(step.retry_due, passed + RETRY_LOOK_SECONDS)

    def _loop(self, step: TransferStep) -> None:
        """Passes until stopped: at once while they do something, on a notification, on the
        fallback look (:attr:`poll`), when an item's retry back-off ends
        (:attr:`TransferStep.retry_due`; at most every :data:`RETRY_LOOK_SECONDS`), at once
        after the connection was lost (the notifications sent meanwhile are lost: the look
        reconnects), or every :data:`SAFETY_PASS_SECONDS`."""
        next_full = next_look = passed = 0.0
        reconnects = self.db.reconnects
        while not self.stop.is_set():
            if self.db.reconnects != reconnects or not self.db.connected:
                reconnects, next_look = self.db.reconnects, 0.0
                self.poll.reset()
            now = time.monotonic()
            due = now >= self._retry_at(step, passed)
            if due:
                step.retry_due = None  # (a pass sets the next one)
            look = now >= next_look or due
            if step.busy() or now >= next_full or (look and self.db.run(items.may_have_work)):
                if now >= next_full:
                    next_full = now + SAFETY_PASS_SECONDS
                passed = now
                if any(step.run_pass(self.db).values()):
                    self.poll.reset()
                    next_look = 0.0
                    continue
            if look:
                next_look = now + self.poll.empty()
            gap = min(self.idle_wait_seconds, float(step.t["poll_seconds"]))
            wake = min(next_look, next_full, self._retry_at(step, passed))
            if step.busy():
                step.wait(gap)
            elif self.db.wait(max(0.0, wake - time.monotonic())):
                self.poll.reset()
                next_look = 0.0
