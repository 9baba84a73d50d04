"""Transition workers: threads that run the script and data steps of jobs (:mod:`.steps`).

Each :class:`TransitionWorker` has its own reconnecting connection and its own session (a
``core_launchersession`` row with job mode ``processing`` and a heartbeat lease). It claims one
job at a time whose state needs a step it runs (the worker rows of
:data:`balsam.core.routing.ROUTES`: READY with something to stage in, STAGED_IN with a
preprocess script, RUN_DONE with a postprocess script, RUN_ERROR / RUN_TIMEOUT with a handler)
by setting the job's ``session_id`` in one
``SELECT ... FOR NO KEY UPDATE SKIP LOCKED`` statement, so two workers (in one launcher, in
several launchers, in the service) never process the same job. The step runs outside any
transaction; its outcome is written as checked transitions from the state the job was claimed
in and held by this session, so a job a user killed meanwhile (or whose handler script set its
state itself) is not overwritten. The hold is released by the write, or explicitly.

While a script runs the worker renews its lease and checks every second whether the job was
killed (then the script's process group is stopped at once and nothing is written) or the
worker is stopping. An idle worker sleeps until a statement leaves a job in one of its states
(its own channel, :data:`balsam.defaults.PROCESSING_NOTIFY_CHANNEL`, migration
0017_processing_notify: a launcher's RUNNING batches and plain run ends wake no worker; since
session 21 also an app's scripts changed, migration 0025, and stage-in items done for a job
whose ``input_files`` a worker links, :mod:`balsam.processing.transfers.completion`) or its
fallback look is due (a lost notification): ``idle_wait_seconds`` after an empty claim,
backing off to ``idle_poll_max_seconds`` while nothing comes
(:class:`balsam.db.idle_poll.IdlePoll`; session 20), waking for its heartbeat on time. If the
worker dies, its session expires and any sweep releases the job for another worker, which runs
the step again.

:class:`TransitionPool` starts N workers and stops them (``--num-transition-threads``).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any, Optional

from balsam import defaults
from balsam.core import leases, lifecycle, retries, routing, schema
from balsam.core.routing import Actor, Step, sql_in
from balsam.core.states import State
from balsam.db.database import Database, WakeEvent
from balsam.db.dbapi import Cursor
from balsam.db.idle_poll import IdlePoll
from balsam.defaults import MAX_RETRIES
from balsam.errors import DatabaseUnavailable
from balsam.processing import steps
from balsam.processing.transfers import slots
from balsam.processing.transfers.items import ITEM, STAGE_IN_DONE
from balsam.processing.transfers.step import TransferWorker
from balsam.processing.transitions import (
    HANDLED_ERROR,
    HANDLED_TIMEOUT,
    HAS_PARENTS,
    NEEDS_POSTPROCESS,
    NEEDS_PREPROCESS,
    NEEDS_STAGE_IN,
    wf_clause,
)
from balsam.processing.warm_hooks import HookRunner

JOB, APP, DEP = schema.JOB_TABLE, schema.APP_TABLE, schema.DEP_TABLE

STEP_CONDITIONS: dict[Step, str] = {
    Step.STAGE_IN: (f"{NEEDS_STAGE_IN.format(has_parents=HAS_PARENTS)}"
                    f" AND (NOT (j.stage_in_url <> '' OR {slots.HAS_IN}) OR ({STAGE_IN_DONE}))"),
    Step.PREPROCESS: NEEDS_PREPROCESS,
    Step.POSTPROCESS: NEEDS_POSTPROCESS,
    Step.ERROR_HANDLER: HANDLED_ERROR,
    Step.TIMEOUT_HANDLER: HANDLED_TIMEOUT,
}
"""The SQL of each worker step's condition (:class:`balsam.core.routing.When`)."""

STEP_WORK = "(" + "\n    OR ".join(
    f"(j.state = {sql_in([r.source])} AND {STEP_CONDITIONS[r.step]})"
    for r in routing.ROUTES if r.actor is Actor.WORKER) + ")"
"""Jobs a transition worker has a step for (SQL over job j and its app a). Transfers are the
transfer step's (:mod:`balsam.processing.transfers`): a READY job with a ``stage_in_url`` comes
here only to link its ``input_files`` once its stage-in items (of its URL and transfer slots)
are done; stage-out never does."""

_WORKER_STATES = sql_in(routing.WORKER_STATES)
_HANDLER_STATES = sql_in(routing.HANDLER_STATES)

STEP_COLUMNS = ("job_id", "name", "workflow", "user_workdir", "state", "application",
                "environ_vars", "threads_per_rank", "stage_in_url", "stage_out_url",
                "stage_out_files", "input_files")
ABORT_CHECK_SECONDS = 1.0
EMPTY_CLAIM_GAP_SECONDS = 0.2
"""After finding nothing to do a worker waits this long before it may look again (notifications
come with every statement leaving jobs in a worker state: without it, each would cost every
worker a query)."""


def claim_step(cursor: Cursor, session_id: int, wf_filter: Optional[str], db_path: str,
               max_retries: int = MAX_RETRIES) -> Optional[steps.StepJob]:
    """Hold one job with a step to run for ``session_id`` and return it (None: nothing to do).
    A RUN_ERROR/RUN_TIMEOUT job over its retry limit (``max_retries``: the DB's default) is
    not handled: processing fails it (:func:`balsam.processing.transitions.advance`)."""
    params: list[Any] = []
    wf = wf_clause(wf_filter, params)
    cols = ", ".join(f"j.{c}" for c in STEP_COLUMNS)
    cursor.execute(f"""
        WITH c AS (
            SELECT j.job_id FROM {JOB} j LEFT JOIN {APP} a ON a.name = j.application
            WHERE j.session_id IS NULL AND j.state IN ({_WORKER_STATES}) AND {STEP_WORK}
              AND NOT (j.state IN ({_HANDLER_STATES})
                       AND {retries.over_limit_sql(max_retries)}){wf}
            LIMIT 1 FOR NO KEY UPDATE OF j SKIP LOCKED
        ), held AS (
            UPDATE {JOB} j SET session_id = %s FROM c WHERE j.job_id = c.job_id
            RETURNING {cols}
        )
        SELECT held.*, COALESCE(a.preprocess, ''), COALESCE(a.postprocess, ''),
               COALESCE(a.envscript, ''),
               (SELECT COALESCE(sum(ti.files), 0) FROM {ITEM} ti
                WHERE ti.job_id = held.job_id AND ti.direction = 'in'),
               EXISTS (SELECT 1 FROM {slots.SLOT} ts WHERE ts.job_id = held.job_id
                       AND ts.direction = 'out')
        FROM held LEFT JOIN {APP} a ON a.name = held.application""", params + [session_id])
    found = cursor.fetchone()
    if found is None:
        return None
    row = dict(zip(STEP_COLUMNS, found))
    row["job_id"] = str(row["job_id"])
    preprocess, postprocess, envscript, staged, out_slots = found[len(STEP_COLUMNS):]
    row["staged_files"], row["out_slots"] = int(staged), bool(out_slots)
    cursor.execute(f"""
        SELECT p.job_id, p.workflow, p.name, p.user_workdir FROM {DEP} d
        JOIN {JOB} p ON p.job_id = d.parent_id WHERE d.child_id = %s ORDER BY d.id""",
                   [row["job_id"]])
    parents = [(str(pid), schema.working_directory(db_path, wf_, name, pid, user_wd))
               for pid, wf_, name, user_wd in cursor.fetchall()]
    workdir = schema.working_directory(db_path, row["workflow"], row["name"], row["job_id"],
                                       row["user_workdir"])
    return steps.StepJob(row, preprocess, postprocess, envscript or None, workdir, parents)


def write_outcome(cursor: Cursor, session_id: int, job: steps.StepJob,
                  outcome: steps.Outcome) -> list[str]:
    """Write ``outcome`` for a job this session holds; returns the states written."""
    job_id, state = job.row["job_id"], job.row["state"]
    written: list[str] = []
    if outcome.write:
        moves = list(outcome.moves)
        if outcome.handler:
            moves = [(State.FAILED, outcome.unhandled_message)]
        source: str = state
        holder: Optional[int] = session_id
        for target, message in moves:
            if not lifecycle.transition(cursor, [job_id], target, message, holder=holder,
                                        sources=[source]):
                break
            written.append(target.value)
            source, holder = target.value, None  # the first move released the hold
    leases.release(cursor, session_id, [job_id])
    return written


class TransitionWorker(threading.Thread):
    """One worker thread (see the module docstring)."""

    def __init__(self, db_path: str, index: int, *, wf_filter: Optional[str],
                 base_env: Mapping[str, str], limits: steps.Limits, stop: threading.Event,
                 log: logging.Logger, heartbeat_seconds: float, lease_seconds: int,
                 idle_wait_seconds: float, reconnect_max_seconds: float,
                 idle_poll_max_seconds: float = defaults.IDLE_POLL_MAX_SECONDS,
                 draining: Optional[threading.Event] = None,
                 max_retries: int = MAX_RETRIES, warm_hooks: bool = True) -> None:
        super().__init__(name=f"balsam-transitions-{index}", daemon=True)
        self.hooks = HookRunner() if warm_hooks else None
        """This worker's warm hook runner (:mod:`balsam.processing.warm_hooks`), started on
        the first site app hook; None: hooks run as scripts (a new interpreter each)."""
        self.draining = draining
        """Once set (the owner is shutting down), no new job is claimed: a handler is not
        started only to be cut off."""
        self.db_path = db_path
        self.wf_filter = wf_filter
        self.max_retries = max_retries
        self.base_env = dict(base_env)
        self.limits = limits
        self.stop = stop
        self.log = log
        self.heartbeat_seconds = heartbeat_seconds
        self.lease_seconds = lease_seconds
        self.idle_wait_seconds = idle_wait_seconds
        self.poll = IdlePoll(idle_wait_seconds, idle_poll_max_seconds)
        self.db = Database(db_path, "balsam-transitions", stop=stop,
                           reconnect_max_seconds=reconnect_max_seconds, log=log.warning)
        self.session_id: Optional[int] = None
        self.processed = 0
        self._next_beat = 0.0
        self._next_abort_check = 0.0
        self._lost = False

    def run(self) -> None:
        try:
            self.session_id = self.db.run(
                leases.open_session, hostname=socket.gethostname(), pid=os.getpid(),
                job_mode="processing", num_nodes=0, lease_seconds=self.lease_seconds,
                label=f"{self.name} " + (f"--wf-filter {self.wf_filter}" if self.wf_filter
                                         else "--consume-all"))
            self.db.listen(defaults.PROCESSING_NOTIFY_CHANNEL)
            self._loop()
        except DatabaseUnavailable:
            pass  # stopping while the database is away: the lease sweep releases our hold
        except Exception:  # a worker must not die silently: log, and let the sweep clean up
            self.log.exception(f"{self.name} failed")
        finally:
            self._close()

    def _loop(self) -> None:
        """Claim and process jobs until stopped. Idle, the worker is woken by a statement
        leaving jobs in WORKER_STATES (not by every job change), by its heartbeat (which claims
        nothing) or by its fallback look (:attr:`poll`; at once after a reconnection, as the
        notifications sent meanwhile were lost); at most one empty claim per
        EMPTY_CLAIM_GAP_SECONDS."""
        next_look = 0.0
        reconnects = self.db.reconnects
        while not self.stop.is_set() and not self._lost:
            self._beat()
            if self.db.reconnects != reconnects:  # notifications sent meanwhile were lost
                reconnects, next_look = self.db.reconnects, 0.0
                self.poll.reset()
            if time.monotonic() >= next_look:
                if self._one():
                    self.poll.reset()
                    continue
                next_look = time.monotonic() + self.poll.empty()
                self.stop.wait(EMPTY_CLAIM_GAP_SECONDS)
            if self.db.wait(max(0.0, min(next_look, self._next_beat) - time.monotonic())):
                self.poll.reset()
                next_look = 0.0

    def _one(self) -> bool:
        """Claim and process one job; False if there was none (or the database is away)."""
        assert self.session_id is not None
        if self.draining is not None and self.draining.is_set():
            return False
        try:
            job = self.db.try_run(claim_step, self.session_id, self.wf_filter, self.db_path,
                                  self.max_retries)
        except DatabaseUnavailable:
            return False
        if job is None:
            return False
        job_id, state = job.row["job_id"], job.row["state"]
        self.log.info(f"{self.name}: job {job_id[:8]} {state}: running its step")
        outcome = steps.run_step(job, self.db_path, self.base_env, self.limits,
                                 should_abort=lambda: self._should_abort(job_id),
                                 hooks=self.hooks)
        if self._lost:
            return True
        written = self.db.run(write_outcome, self.session_id, job, outcome)
        self.processed += 1
        self.log.info(f"{self.name}: job {job_id[:8]} {state} -> "
                      f"{' -> '.join(written) or 'unchanged (changed meanwhile)'}")
        return True

    def _beat(self) -> None:
        now = time.monotonic()
        if now < self._next_beat or self.session_id is None:
            return
        try:
            alive = self.db.try_run(leases.heartbeat, self.session_id)
        except DatabaseUnavailable:
            self._next_beat = now + 1.0
            return
        self._next_beat = now + self.heartbeat_seconds
        if not alive:
            self.log.error(f"{self.name}: session {self.session_id} was swept: stopping")
            self._lost = True

    def _should_abort(self, job_id: str) -> bool:
        """Called while a script runs: renew the lease; stop if the job was killed or the
        worker must stop."""
        if self.stop.is_set() or self._lost:
            return True
        now = time.monotonic()
        self._beat()
        if now >= self._next_abort_check:
            self._next_abort_check = now + ABORT_CHECK_SECONDS
            try:
                state = self.db.try_run(_state_of, job_id)
            except DatabaseUnavailable:
                return False
            if state == State.USER_KILLED.value:
                self.log.info(f"{self.name}: job {job_id[:8]} was killed: stopping its script")
                return True
        return False

    def _close(self) -> None:
        if self.hooks is not None:
            self.hooks.close()
        if self.session_id is not None and not self._lost:
            try:
                self.db.run_before(time.monotonic() + 5.0, leases.close_session, self.session_id,
                                   "transition worker stopped")
            except DatabaseUnavailable:
                self.log.error(f"{self.name}: could not close session {self.session_id}: the "
                               "lease sweep will release its job")
        self.db.close()


def _state_of(cursor: Cursor, job_id: str) -> Optional[str]:
    cursor.execute(f"SELECT state FROM {JOB} WHERE job_id = %s", [job_id])
    row = cursor.fetchone()
    return None if row is None else str(row[0])


class TransitionPool:
    """``count`` :class:`TransitionWorker` threads sharing one stop event, and (when ``count``
    > 0) one :class:`~balsam.processing.transfers.step.TransferWorker` sending the transfer
    items of the same jobs."""

    def __init__(self, count: int, db_path: str, **worker_args: Any) -> None:
        self.stop_event = WakeEvent()  # wakes workers waiting for notifications at once
        self.workers: list[threading.Thread] = [
            TransitionWorker(db_path, i, stop=self.stop_event, **worker_args)
            for i in range(count)]
        if count > 0:
            self.workers.append(TransferWorker(
                db_path, stop=self.stop_event, log=worker_args["log"],
                wf_filter=worker_args.get("wf_filter"),
                idle_wait_seconds=worker_args.get("idle_wait_seconds", 1.0),
                idle_poll_max_seconds=worker_args.get("idle_poll_max_seconds",
                                                      defaults.IDLE_POLL_MAX_SECONDS),
                reconnect_max_seconds=worker_args.get("reconnect_max_seconds", 30.0)))

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def begin_stop(self) -> None:
        """Tell every worker to stop, without waiting (:meth:`stop` waits): they close their
        sessions and connections meanwhile."""
        self.stop_event.set()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every worker: running scripts are stopped, holds released, sessions closed."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))
        if not any(w.is_alive() for w in self.workers):
            self.stop_event.close()

    @property
    def processed(self) -> int:
        return sum(w.processed for w in self.workers if isinstance(w, TransitionWorker))
