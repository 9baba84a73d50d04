"""Claiming runnable jobs for a launcher session and turning them into task specs.

:class:`JobSource` claims jobs under its session (:func:`balsam.core.leases.claim`: ``SELECT
... FOR UPDATE SKIP LOCKED``, so concurrent launchers never claim the same job), then in the
same statement their parents (for ``BALSAM_PARENT_IDS``), then the definitions of
applications it has not seen yet (cached by name for the life of the launcher), and builds a
:class:`balsam.launcher.task.TaskSpec` per job. A job whose spec cannot be built (its
application or envscript is missing, its command or ``mpi_flags`` cannot be split, its
variables are malformed, or the mode's own ``check`` refuses it) is moved to FAILED with the
reason, never started, and not returned. In serial mode the specs of Python-function tasks
also carry their job fields and arguments, read in the same transaction
(:meth:`JobSource.attach_pyfunc_rows`), for the warm workers.

:class:`Claimer` runs those claims in a thread with its own connection, for the serial master
at scale.

Claimed jobs stay held (``session_id``) until they are started, released, or the session
closes. Methods ending in ``_in`` work in the caller's transaction (a cursor from
:class:`balsam.db.database.Database`); the others run their own transaction and raise
:class:`balsam.errors.DatabaseUnavailable` when the database cannot be reached.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Callable, Optional, Union

from balsam import defaults
from balsam.core import leases, lifecycle, payloads, schema
from balsam.core.states import State
from balsam.db.database import Database
from balsam.db.dbapi import Cursor
from balsam.errors import BalsamError, DatabaseUnavailable
from balsam.launcher import task
from balsam.launcher.runner_argv import is_runner_argv
from balsam.platform.allocation import Allocation

INHERIT_SECONDS = 5.0
"""Longest :meth:`JobSource.inherit` tries to reach the database."""
Row = dict[str, Any]
Placer = Callable[[list[Row]], list[Row]]
"""Chooses which claimed rows (largest first) to keep; the rest are released at once."""
Checker = Callable[[task.TaskSpec], Optional[str]]
"""Returns why a spec cannot run in this mode (the job becomes FAILED), or None."""


class JobSource:
    """Claims jobs for ``session_id`` and builds their task specs (see the module docstring).

    ``base_env`` is the environment tasks start from (the launcher's own, cleaned by
    :func:`task.task_environment`); ``alloc.num_nodes`` is the ``BALSAM_LAUNCHER_NODES``
    value; ``wf_filter`` keeps jobs whose workflow contains it, ``tags`` those whose tags hold
    every given key and value.
    """

    def __init__(self, db: Database, session_id: int, alloc: Allocation, db_path: str,
                 job_mode: str, wf_filter: Optional[str], base_env: Mapping[str, str],
                 tags: Optional[Mapping[str, str]] = None) -> None:
        self.db = db
        self.session_id = session_id
        self.alloc = alloc
        self.db_path = db_path
        self.job_mode = job_mode
        self.wf_filter = wf_filter or None
        self.tags = dict(tags or {})
        self.base_env = dict(base_env)
        self.apps: dict[str, dict[str, str]] = {}
        self.failed = 0
        """Jobs this source moved to FAILED because no task could be built for them."""
        self.inherited: Optional[set[str]] = set()
        """Jobs the session held before this source's first claim (:meth:`inherit_in`): a
        failed earlier ensemble's, kept (:mod:`balsam.launcher.kept_claims`); None if not
        known. :meth:`release_all_in` and :meth:`reconcile_in` leave them alone."""

    # ---- own transactions -------------------------------------------------------------------
    def claim(self, limit: int, serial: bool, max_nodes: int,
              max_wall_minutes: Optional[float] = None,
              db: Optional[Database] = None) -> list[task.TaskSpec]:
        """Claim up to ``limit`` jobs and return their specs (one transaction, on ``db``
        when given: the :class:`Claimer`'s own connection)."""
        return (db or self.db).try_run(self.claim_in, limit, serial=serial,
                                       max_nodes=max_nodes, max_wall_minutes=max_wall_minutes)

    def release(self, ids: Sequence[str]) -> int:
        """Drop this session's claim on jobs that are not RUNNING (one transaction)."""
        if not ids:
            return 0
        return self.db.try_run(leases.release, self.session_id, list(ids))

    # ---- in the caller's transaction ------------------------------------------------------
    def claim_in(self, cursor: Cursor, limit: int, *, serial: bool, max_nodes: int,
                 max_wall_minutes: Optional[float] = None, exclude_ids: Collection[str] = (),
                 place: Optional[Placer] = None,
                 check: Optional[Checker] = None) -> list[task.TaskSpec]:
        """Claim, keep what ``place`` keeps (releasing the rest), build specs, fail the jobs
        that cannot run; returns the specs, in claim order (largest/least packed first)."""
        if limit < 1 or max_nodes < 1:
            return []
        rows = leases.claim(cursor, self.session_id, limit, serial=serial, max_nodes=max_nodes,
                            wf_filter=self.wf_filter, max_wall_minutes=max_wall_minutes,
                            exclude_ids=tuple(exclude_ids), tags=self.tags,
                            gpus_per_node=self.alloc.gpus_per_node)
        if not rows:
            return []
        if place is not None:
            kept = place(rows)
            kept_ids = {r["job_id"] for r in kept}
            dropped = [r["job_id"] for r in rows if r["job_id"] not in kept_ids]
            if dropped:
                leases.release(cursor, self.session_id, dropped)
            rows = kept
        return self.specs_in(cursor, rows, check)

    def specs_in(self, cursor: Cursor, rows: Sequence[Row],
                 check: Optional[Checker] = None) -> list[task.TaskSpec]:
        """The specs of claimed ``rows`` (from :func:`leases.claim` or :func:`leases.cycle`),
        in their order; jobs that cannot run are moved to FAILED with the reason."""
        if not rows:
            return []
        if self.inherited:  # released by their keeper since, and claimed anew: this source's
            self.inherited = self.inherited - {r["job_id"] for r in rows}  # (a new set: a
            # Claimer thread's claim never changes one another thread is reading)
        self._load_apps(cursor, {r["application"] for r in rows})
        specs: list[task.TaskSpec] = []
        failures: dict[str, str] = {}
        for row in rows:
            try:
                spec = self.build(row, row["parents"])
                reason = check(spec) if check is not None else None
            except (BalsamError, ValueError, KeyError) as exc:
                reason = str(exc) or type(exc).__name__
            if reason:
                failures[row["job_id"]] = f"cannot start: {reason}"
            else:
                specs.append(spec)
        if failures:
            self.fail_in(cursor, failures)
        if self.job_mode == "serial":
            self.attach_pyfunc_rows(cursor, specs)
        return specs

    def attach_pyfunc_rows(self, cursor: Cursor, specs: Sequence[task.TaskSpec]) -> None:
        """Give each Python-function spec that a warm worker will run (the runner command, no
        envscript) its job fields and arguments (``pyfunc_row``), one statement for all of
        them; those over :data:`defaults.PYFUNC_INLINE_BYTES` are left to the warm worker."""
        function_specs = {s.job_id: s for s in specs
                          if s.envscript is None and is_runner_argv(s.app_argv)}
        rows = payloads.inline_tasks(cursor, list(function_specs), defaults.PYFUNC_INLINE_BYTES)
        for job_id, row in rows.items():
            function_specs[job_id].pyfunc_row = row

    def build(self, row: Mapping[str, Any], parents: Sequence[str]) -> task.TaskSpec:
        """The spec of one claimed row; raises BalsamError/ValueError saying why it cannot."""
        app = self.apps.get(row["application"])
        if app is None:
            raise BalsamError(f"application {row['application']!r} does not exist")
        spec = task.from_row(row, app, parents, self.db_path, self.base_env,
                             self.alloc.num_nodes, self.job_mode)
        if not spec.app_argv:
            raise BalsamError(f"application {row['application']!r} has no executable")
        return spec

    def fail_in(self, cursor: Cursor, reasons: Mapping[str, str]) -> None:
        """Move held, not yet RUNNING jobs to FAILED with a reason each (releases them)."""
        moved = lifecycle.transition(cursor, list(reasons), State.FAILED, dict(reasons),
                                     holder=self.session_id)
        self.failed += len(moved)

    def reconcile_in(self, cursor: Cursor, known_ids: Collection[str],
                     message: str = "the launcher lost its database connection while starting "
                                    "the job; it was not run") -> tuple[int, int]:
        """After a reconnection: jobs this session holds that the launcher does not know
        (``known_ids``: running, pending or prefetched) come from a commit whose outcome was
        lost. RUNNING ones become RUN_TIMEOUT (so the retry rules apply), others are
        released -- but not the :attr:`inherited` ones (nothing, if those are not known).
        Returns (timed out, released)."""
        if self.inherited is None:  # (not known which claims are this source's: none touched)
            return 0, 0
        cursor.execute(f"SELECT job_id, state FROM {schema.JOB_TABLE} WHERE session_id = %s",
                       [self.session_id])
        known = set(known_ids) | self.inherited
        stray = [(str(j), s) for j, s in cursor.fetchall() if str(j) not in known]
        running = [j for j, s in stray if s == State.RUNNING.value]
        others = [j for j, s in stray if s != State.RUNNING.value]
        timed_out = leases.finish(cursor, self.session_id, running, State.RUN_TIMEOUT, message)
        released = leases.release(cursor, self.session_id, others) if others else 0
        return len(timed_out), released

    def inherit(self, log: Callable[[str], None]) -> None:
        """:meth:`inherit_in` in its own transaction; if the database cannot be reached, the
        inherited claims are not known (None): none is given back by this source."""
        try:
            self.db.run_before(time.monotonic() + INHERIT_SECONDS, self.inherit_in)
        except DatabaseUnavailable as exc:
            self.inherited = None
            log(f"the session's earlier claims are not known ({exc}): none of its claims is "
                "given back before its close (or the lease sweep)")

    def inherit_in(self, cursor: Cursor) -> None:
        """Note the jobs the session holds now, before this source's first claim: a later
        ensemble's master inherits the failed ones' kept claims (and RUNNING jobs of their
        ranks whose tasks are not known dead), which are not its to release."""
        cursor.execute(f"SELECT job_id FROM {schema.JOB_TABLE} WHERE session_id = %s",
                       [self.session_id])
        self.inherited = {str(r[0]) for r in cursor.fetchall()}

    def release_all_in(self, cursor: Cursor) -> int:
        """Drop every claim of the session outside RUNNING but the inherited ones (all of
        them if those are not known: none); returns how many."""
        if self.inherited is None:
            return 0
        cursor.execute(f"UPDATE {schema.JOB_TABLE} SET session_id = NULL WHERE session_id = %s "
                       "AND state <> %s AND NOT job_id = ANY(%s::uuid[])",
                       [self.session_id, State.RUNNING.value, sorted(self.inherited)])
        return int(cursor.rowcount)

    def _load_apps(self, cursor: Cursor, names: set[str]) -> None:
        missing = sorted(n for n in names if n not in self.apps)
        if not missing:
            return
        cursor.execute(f"SELECT name, executable, envscript, preprocess, postprocess "
                       f"FROM {schema.APP_TABLE} WHERE name = ANY(%s)", [missing])
        for name, executable, envscript, pre, post in cursor.fetchall():
            self.apps[name] = {"name": name, "executable": executable, "envscript": envscript,
                               "preprocess": pre, "postprocess": post}


class Claimer:
    """Claims for the serial master at scale in a thread with its own connection ``db``, one
    claim at a time: the master asks (:meth:`ask`) and later collects (:meth:`take`), so its
    loop never waits on a claim (at N = 4,096 nodes claims took 21 of its 31.5 s). A claim is
    :meth:`JobSource.claim` as before (SKIP LOCKED, the session's lease, the filters, function
    rows attached in the same transaction). :meth:`close` waits for a claim in flight, so
    the master's release that follows also releases what it claimed."""

    def __init__(self, source: JobSource, db: Database) -> None:
        self.source, self.db = source, db
        self.asked = 0
        """The size of the claim asked and not yet taken (0: none)."""
        self._cond = threading.Condition()
        self._ask: Optional[tuple[int, Optional[float]]] = None
        self._result: Union[None, list[task.TaskSpec], DatabaseUnavailable] = None
        self._closed = False
        self.thread = threading.Thread(target=self._loop, name="balsam-claimer", daemon=True)
        self.thread.start()

    def ask(self, limit: int, max_wall_minutes: Optional[float]) -> None:
        """Start a claim of up to ``limit`` jobs (none may be asked and not taken)."""
        with self._cond:
            self._ask, self.asked = (limit, max_wall_minutes), limit
            self._cond.notify()

    def take(self) -> Union[None, list[task.TaskSpec], DatabaseUnavailable]:
        """The answer to the claim asked: None while it runs (or none was asked), the specs
        (empty: nothing to claim), or the DatabaseUnavailable it met (its commit may have
        happened: the caller reconciles)."""
        with self._cond:
            result, self._result = self._result, None
            if result is not None:
                self.asked = 0
            return result

    def close(self, timeout: float = 5.0) -> None:
        """End the thread once a claim in flight is done, and close its connection."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self.thread.join(timeout)
        self.db.close()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._ask is None and not self._closed:
                    self._cond.wait()
                if self._ask is None:
                    return
                (limit, max_wall), self._ask = self._ask, None
            result: Union[list[task.TaskSpec], DatabaseUnavailable]
            try:
                result = self.source.claim(limit, serial=True, max_nodes=1,
                                           max_wall_minutes=max_wall, db=self.db)
            except DatabaseUnavailable as exc:
                result = exc
            except Exception as exc:  # a bug: logged, and answered like a lost claim (the
                self.db.log(f"the claim failed: {exc!r}")  # master reconciles), not a
                result = DatabaseUnavailable(f"the claim failed: {exc!r}")  # dead thread
            with self._cond:
                self._result = result
