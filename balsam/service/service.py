"""``balsam service --foreground``: the service's composition root and its loop.

:func:`run` takes the database's service lock (:mod:`balsam.service.control`; a second service
is refused), writes the PID file and the log ``<db>/log/service_<timestamp>_<pid>.log``, starts a
:class:`~balsam.processing.worker.TransitionPool` of ``service.transition_threads`` workers
(stage-in/out, pre/postprocess scripts, handlers; built by
:func:`balsam.processing.pools.start_transition_pool`, as a launcher's) and then runs a cycle
every ``service.cycle_seconds``:

1. **cancel** the batch jobs users asked to cancel (:func:`balsam.service.sync.cancel_requested`);
   **sync** batch-job states from the scheduler (:func:`balsam.service.sync.sync`; its time
   goes to ``<db>/last-sync`` for the views, :mod:`balsam.service.live`);
2. **sweep** launcher sessions whose lease expired (:func:`balsam.core.leases.sweep`);
3. **advance** jobs through the steps that run nothing (:func:`balsam.processing.transitions.advance`);
4. **plan** batch jobs for the runnable backlog (:func:`balsam.service.planner.plan`);
5. **submit** the planned ones (:func:`balsam.service.submitter.submit_pending`).

Every step is guarded: an exception (a failing or hanging scheduler command, a database
outage, a bug) is logged and the step is retried in a later cycle -- scheduler steps with
back-off -- and the service carries on. Planning and submitting run only while the lock is
held: after a lost connection the lock is taken again first (if another service took it
meanwhile, this one exits 1). ``settings.yml`` is re-read every cycle (a bad edit is logged and
the previous settings are kept). SIGTERM/SIGINT end the loop after the current step; then the
pool stops, the lock is released and the PID file removed: exit 0.
"""
from __future__ import annotations

import datetime
import logging
import os
import pwd
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from balsam.core import leases
from balsam.core.tunables import Tunables
from balsam.db import dbsettings
from balsam.db.database import Database
from balsam.errors import BalsamError
from balsam.logfile import open_log
from balsam.platform.process import start_time
from balsam.platform.schedulers import command
from balsam.processing import transitions
from balsam.service import control
from balsam.service.live import record_sync

if TYPE_CHECKING:
    from balsam.processing.worker import TransitionPool

DB_STEP_SECONDS = 10.0
"""Longest one database step waits for an unreachable server before the cycle moves on."""
ADVANCE_ROUNDS = 10
"""Processing passes per cycle at most (another only when a pass moved a whole batch)."""


class SchedulerStepError(BalsamError):
    """A scheduler step reported a failure without raising (to back off like an exception)."""


class Service:
    """The loop's state: settings, the lock connection, the pool, per-step back-off, counts."""

    def __init__(self, db_path: str, log: logging.Logger, log_path: str, lock: Any) -> None:
        self.db_path = db_path
        self.log = log
        self.log_path = log_path
        self.lock = lock
        self.stop = threading.Event()
        self.settings = dbsettings.load(db_path)
        self.db = Database(db_path, "balsam-service", stop=self.stop, log=log.warning)
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.started = time.time()
        self.proc_start = start_time(os.getpid())  # with the pid, names this process (PID file)
        self.cycles = 0
        self.totals: dict[str, int] = {}
        self.backoff: dict[str, command.Backoff] = {}
        self.pool: Optional[TransitionPool] = None
        self.exit_status = 0

    @property
    def cycle_seconds(self) -> float:
        return float(self.settings["service"]["cycle_seconds"])

    # ---- one cycle ----------------------------------------------------------------------------
    def cycle(self) -> dict[str, int]:
        """Run every step once (each guarded); returns the counts of this cycle."""
        self._reload_settings()
        counts: dict[str, int] = {}
        scheduler = self._step("scheduler", self._scheduler, counts)
        if scheduler is not None:
            self._step("cancel", lambda: self._cancel(scheduler), counts, backoff=True)
            self._step("sync", lambda: self._sync(scheduler), counts, backoff=True)
        self._step("sweep", self._sweep, counts)
        self._step("advance", self._advance, counts)
        if self._hold_lock():
            self._step("plan", self._plan, counts)
            if scheduler is not None:
                self._step("submit", lambda: self._submit(scheduler), counts, backoff=True)
        self.cycles += 1
        for key, value in counts.items():
            self.totals[key] = self.totals.get(key, 0) + value
        return counts

    def _step(self, name: str, fn: Callable[[], Any], counts: dict[str, int],
              backoff: bool = False) -> Any:
        if self.stop.is_set():
            return None
        now = time.monotonic()
        delay = self.backoff.setdefault(name, command.Backoff(self.cycle_seconds, 2.0, 300.0))
        if backoff and not delay.ready(now):
            return None
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - a step never kills the service
            wait = delay.failed(time.monotonic())
            first = (str(exc).strip().splitlines() or [""])[0]
            when = f"retrying in {wait:.0f} s" if backoff else "retrying next cycle"
            self.log.error(f"{name} failed ({type(exc).__name__}: {first}); {when}")
            if not isinstance(exc, BalsamError):
                self.log.debug(f"{name} traceback", exc_info=True)
            return None
        if delay.failures:
            self.log.info(f"{name} works again after {delay.failures} failure(s)")
        delay.succeeded()
        if isinstance(result, int) and not isinstance(result, bool):
            counts[name] = result
        return result

    def _reload_settings(self) -> None:
        try:
            self.settings = dbsettings.load(self.db_path)
        except BalsamError as exc:
            self.log.error(f"{exc}; keeping the previous settings")

    def _scheduler(self) -> Any:
        from balsam.platform import schedulers

        return schedulers.get(str(self.settings["scheduler"]),
                              state_dir=os.path.join(self.db_path, "qsubmit"))

    def _sync(self, scheduler: Any) -> int:
        from balsam.service.sync import sync

        result = sync(self.db, scheduler, self.user, self.log) or {}
        if result.get("ok") is False:  # sync logs and swallows it: back off here
            raise SchedulerStepError(str(result.get("error") or "scheduler status failed"))
        record_sync(self.db_path)  # the views mark recorded states older than this as stale
        return int(result.get("ended") or 0)  # sync logs each batch job that ended

    def _cancel(self, scheduler: Any) -> int:
        from balsam.service.sync import cancel_requested

        return cancel_requested(self.db, scheduler, self.log)

    def _sweep(self) -> int:
        swept = self.db.run_before(time.monotonic() + DB_STEP_SECONDS, leases.sweep_sessions,
                                   self.db_path)
        for line in leases.after_sweep(self.db_path, swept):
            self.log.warning(line)
        return len(swept)

    def _advance(self) -> int:
        tunables = self.tunables
        batch = tunables.processing_batch
        moved = 0
        for _ in range(ADVANCE_ROUNDS):
            counts = self.db.run_before(time.monotonic() + DB_STEP_SECONDS,
                                        transitions.advance, None, batch,
                                        tunables.retry_policy())
            moved += sum(counts.values())
            if max(counts.values(), default=0) < batch or self.stop.is_set():
                break
        if moved:
            self.log.info(f"processing: {moved} job(s) moved")
        return moved

    def _plan(self) -> int:
        from balsam.service.planner import plan

        ids = self.db.run_before(time.monotonic() + DB_STEP_SECONDS, plan, self.settings)
        if ids:
            self.log.info(f"planned batch job(s) {', '.join(map(str, ids))}")
        return len(ids)

    def _submit(self, scheduler: Any) -> int:
        from balsam.service.submitter import submit_pending

        done = submit_pending(self.db, self.db_path, self.settings, scheduler, self.log)
        for launch_id, scheduler_id in done:
            self.log.info(f"submitted batch job {launch_id}: scheduler id {scheduler_id}")
        return len(done)

    def _hold_lock(self) -> bool:
        """True if the lock is held (re-taken after a lost connection)."""
        if control.lock_alive(self.lock):
            return True
        try:
            self.lock.close()
        except Exception:  # noqa: BLE001 - it is dead anyway
            pass
        try:
            self.lock = control.acquire_lock(self.db_path)
        except control.AlreadyRunning as exc:
            self.log.error(f"lost the service lock: {exc}; stopping")
            self.exit_status = 1
            self.stop.set()
            return False
        except BalsamError as exc:
            self.log.error(f"lost the service lock with the database connection ({exc}); "
                           "not planning until it is back")
            return False
        self.log.warning("the lock connection was lost and the service lock re-taken")
        return True

    # ---- the loop -----------------------------------------------------------------------------
    def record(self, counts: Optional[dict[str, int]] = None) -> None:
        control.write_pid_file(self.db_path, {
            "pid": os.getpid(), "proc_start": self.proc_start, "host": socket.gethostname(),
            "started": datetime.datetime.fromtimestamp(self.started).isoformat(timespec="seconds"),
            "log": self.log_path, "cycles": self.cycles,
            "last_cycle": datetime.datetime.now().isoformat(timespec="seconds") if self.cycles
            else None,
            "counts": counts or {}, "totals": self.totals})

    def loop(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            counts = self.cycle()
            try:
                self.record(counts)
            except OSError as exc:
                self.log.error(f"cannot write the PID file: {exc}")
            self.stop.wait(max(0.0, self.cycle_seconds - (time.monotonic() - began)))

    @property
    def tunables(self) -> Tunables:
        """The ``launcher:`` tunables of the current settings (they also rule processing)."""
        return Tunables.from_settings(self.settings["launcher"])

    def start_pool(self) -> None:
        from balsam.processing.pools import start_transition_pool

        self.pool = start_transition_pool(
            int(self.settings["service"]["transition_threads"]), self.db_path, self.tunables,
            wf_filter=None, base_env=dict(os.environ), log=self.log, draining=self.stop)


def run(db_path: str) -> int:
    """Run the service in this process until SIGTERM/SIGINT; its exit status.

    Raises :class:`~balsam.service.control.AlreadyRunning` if another service holds the lock,
    BalsamError if the database is unreachable or the settings are invalid."""
    dbsettings.load(db_path)  # bad settings: fail before taking anything
    lock = control.acquire_lock(db_path)
    log, handler, log_path = open_log(db_path, "service")
    svc = Service(db_path, log, log_path, lock)
    stale = control.read_pid_file(db_path)
    if stale is not None:
        log.warning(f"replacing the stale PID file of pid {stale['pid']} on {stale.get('host')}")
    svc.record()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info(f"received {signal.Signals(signum).name}: stopping after this step")
        svc.stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    log.info(f"started on {socket.gethostname()} (pid {os.getpid()}): scheduler "
             f"{svc.settings['scheduler']}, cycle {svc.cycle_seconds:g} s, "
             f"{svc.settings['service']['transition_threads']} transition worker(s)")
    print(f"Balsam service: pid {os.getpid()}, log {log_path}", flush=True)
    try:
        svc.start_pool()
        svc.loop()
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
        if svc.pool is not None:
            svc.pool.stop(timeout=10.0)
        svc.db.close()
        try:
            svc.lock.close()
        except Exception:  # noqa: BLE001 - a dead lock connection is already released
            pass
        control.remove_pid_file(db_path, os.getpid())
        log.info(f"stopped after {svc.cycles} cycle(s); totals {svc.totals}")
        log.removeHandler(handler)
        handler.close()
    return svc.exit_status
