"""A failed ensemble's claims, kept while a rank's watchdog has not reported, settled later.

When a serial-mode ensemble fails and a worker rank's watchdog has not reported by the time
the launcher stops waiting (:func:`balsam.launcher.ensemble_watch.settle`: the rank's node is
gone, or its watchdog is slow or stopped), a task that rank started and the dead master never
recorded is known only to that watchdog. Released, its job could run again beside the task, and
its run would never be recorded (the reports were removed). So
:func:`balsam.launcher.ensemble_restart.run_serial` keeps every claim of the failed ensemble
held (the jobs RUNNING on such ranks stay RUNNING and held, as before) and the ranks' reports in
place, and :class:`KeptClaims` -- a thread of the launcher with a connection of its own --
settles them as the lease sweep would have: once no report of that ensemble says "running", or
a lease after the failure at the latest (the sweep's own rule: a rank's watchdog stops its tasks
within the kill grace, well within the lease), it records the starts the reports name that the
history lacks (:func:`balsam.core.leases.record_lost_starts`, counting from that ensemble's
``since``), releases the other kept claims and removes the reports. Meanwhile the next ensemble
runs other work; the kept claims count as the launcher's, so it does not exit idle before.

If the launcher ends first (:meth:`KeptClaims.close`), the claims, the reports and the mark
(with that ensemble's ``since``) stay for the lease sweep (:mod:`balsam.core.serial_reports`).
"""
from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from balsam.core import leases, serial_reports
from balsam.db.database import Database
from balsam.db.dbapi import Cursor
from balsam.errors import DatabaseUnavailable
from balsam.launcher import ensemble_watch

if TYPE_CHECKING:
    from balsam.launcher.context import Context

POLL_SECONDS = 0.5
"""How often the kept ensemble's reports are read (a few small files)."""
RECORD_SECONDS = 5.0
"""Longest the settle tries to reach the database (the sweep does it otherwise)."""


class KeptClaims:
    """Settles the claims ``job_ids`` kept after the ensemble reporting in ``directory`` (which
    began after job event ``since``) failed (see the module docstring); starts at once."""

    def __init__(self, ctx: Context, directory: str, since: int, job_ids: list[str]) -> None:
        self.ctx, self.directory, self.since, self.job_ids = ctx, directory, since, job_ids
        self.deadline = time.monotonic() + ctx.tunables.lease_seconds
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._run, name="balsam-kept-claims", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """The launcher ends: stop waiting (a settle under way finishes first)."""
        self.closing.set()
        self.thread.join(RECORD_SECONDS + 1.0)

    def _run(self) -> None:
        while not self.closing.is_set():
            reports = ensemble_watch.read_reports(self.directory)
            if not reports.running or time.monotonic() >= self.deadline:
                self._settle(reports)
                return
            self.closing.wait(POLL_SECONDS)

    def _settle(self, reports: ensemble_watch.Reports) -> None:
        ctx = self.ctx
        db = Database(ctx.db_path, "balsam-launcher-kept", stop=self.closing,
                      reconnect_max_seconds=ctx.tunables.reconnect_max_seconds,
                      log=ctx.log.warning)
        try:
            lost, released = db.run_before(
                time.monotonic() + RECORD_SECONDS, settle_in, ctx.session_id,
                dict(reports.started), dict(reports.started_alive), self.since, self.job_ids)
        except DatabaseUnavailable as exc:
            ctx.log.error(f"could not settle the claims kept after the failed ensemble ({exc}): "
                          "they are left to the lease sweep")
            return
        finally:
            db.close()
        unknown = (f"; worker ranks {', '.join(reports.running)} never reported (their starts "
                   "are not known)" if reports.running else "")
        ctx.log.warning(f"the claims kept after the failed ensemble are settled: {len(lost)} "
                        f"unrecorded start(s) recorded, {released} claim(s) released{unknown}")
        shutil.rmtree(self.directory, ignore_errors=True)


def settle_in(cursor: Cursor, session_id: int, dead: Mapping[str, int],
              alive: Mapping[str, int], since: int, job_ids: list[str]) -> tuple[list[str], int]:
    """Record the starts a failed ensemble's final reports name that the history lacks
    (``dead``: tasks known dead, RUN_TIMEOUT; ``alive``: a task outlived SIGKILL, left RUNNING
    and held), then release the kept claims ``job_ids`` not RUNNING; (ids recorded, released)."""
    message = serial_reports.start_message(session_id)
    lost = leases.record_lost_starts(
        cursor, session_id, dead, message, "started by the serial-mode ensemble, which died "
        "before the start was recorded: outcome unknown", since=since)
    lost += leases.record_lost_starts(cursor, session_id, alive, message, None, since=since)
    return lost, leases.release(cursor, session_id, job_ids)
