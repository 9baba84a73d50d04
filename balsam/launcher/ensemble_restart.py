"""Serial mode survives the death of a worker rank or node: the launcher starts a new ensemble.

MPI takes a whole job down when one of its ranks dies (MPICH's Hydra kills the others), so one
lost worker -- a rank killed by the OOM killer, a node that crashed -- ends the ensemble on
every node. :func:`run_serial` runs the ensemble (:func:`balsam.launcher.serial_mode.
run_launcher`) and, when it failed after it came up, while the launcher has time left and no
stop was asked for, starts a new one, up to :data:`MAX_RESTARTS` times, in the same session
(also after the launcher killed an ensemble whose master stopped renewing the lease, up or not:
:mod:`balsam.launcher.ensemble_stuck`):

1. :func:`balsam.launcher.ensemble_watch.settle` has waited for the worker watchdogs' reports
   and recorded the starts the master never did;
2. jobs RUNNING on ranks whose tasks are known dead become RUN_TIMEOUT (retried as usual), and
   every other claim of the session is released -- unless the session is left to the lease
   sweep (a rank's tasks are NOT known dead: its node is gone, its watchdog has not reported,
   or a task outlived SIGKILL): then every claim stays held, with that rank's report and the
   mark, also when a new ensemble follows. Such a rank may have started a job whose start the
   dead master never wrote, and which one only its watchdog can tell: released, the job could
   run again beside its task and its run would never be recorded; held, nothing runs it before
   :mod:`balsam.launcher.kept_claims` records the start once the watchdog reported (and then
   releases the others; a lease after the failure at the latest), or the lease sweep if the
   launcher ends first (:mod:`balsam.core.serial_reports`). The jobs RUNNING on such ranks
   stay RUNNING and held;
3. the nodes of those ranks are dropped from the allocation (the master moves to the first node
   left), and the next ensemble starts on the others.

Nodes are idle only from the death until the new ensemble starts tasks (about 2-3 s: the
watchdogs' reports, one transaction, an MPI start-up), instead of for the rest of the
allocation. Tasks the launcher started itself (:mod:`balsam.launcher.warm_start`) are not the
ensemble's: they run on, the new ensemble's worker 1 keeps their shares of node 1 (on their
CPUs and GPUs), and the launcher records and reports their ends as before.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from typing import TYPE_CHECKING, Callable, Optional

from balsam.core import leases, schema, serial_reports
from balsam.core.states import State
from balsam.db.dbapi import Cursor, fetch_one
from balsam.errors import DatabaseUnavailable
from balsam.launcher import ensemble_watch
from balsam.launcher.kept_claims import KeptClaims

if TYPE_CHECKING:
    from balsam.launcher.context import Context

MAX_RESTARTS = 3
"""Ensembles a launcher starts again after a failure (a broken node or setup must not loop)."""
FAILED = 2
""":func:`run_launcher`'s status for an ensemble that failed."""
RECOVER_SECONDS = 5.0


def run_serial(ctx: Context, run_once: Callable[[Context], int]) -> int:
    """Run ensembles with ``run_once`` until one ends normally, the launcher must stop, or a
    restart is not possible; the status of the last one. The launcher's own tasks (its warm
    start) that outlived a failed ensemble (``ctx.carried``) run on while the next one starts,
    which gets their shares of node 1; with no next one, they are waited for here."""
    kept: list[KeptClaims] = []
    try:
        return _run_serial(ctx, run_once, kept)
    finally:
        for claims in kept:  # (not settled yet: left to the lease sweep, with their reports)
            claims.close()
        carried, ctx.carried = ctx.carried, None
        try:
            if carried is not None:
                carried.drain()
        finally:
            if ctx.release_session:  # (else the lease sweep reads them: left as they are)
                _remove_watch_dir(ctx.watch_dir)


def _remove_watch_dir(watch_dir: str) -> None:
    """The session's runs are over and every ensemble's reports were read and removed: the
    warm start's note, the mark and the directory go too (nothing of it is read any more)."""
    if watch_dir:
        serial_reports.clear_own_starts(watch_dir)
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(watch_dir, serial_reports.MARK_NAME))
        with contextlib.suppress(OSError):
            os.rmdir(watch_dir)
            os.rmdir(os.path.dirname(watch_dir))  # (unless another launcher's is there)


def _tidy(ctx: Context, directory: str, kept: bool) -> None:
    """Remove the ended ensemble's reports (``directory``) -- but, of a session left to the
    lease sweep whose claims are ``kept``, only the final ones its settle recorded: the sweep
    records the starts of the others, once their watchdogs reported (also of an ensemble
    followed by others: the mark keeps each one's ``since``)."""
    if ctx.release_session or not kept:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for name in ctx.settled_reports:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))


def _run_serial(ctx: Context, run_once: Callable[[Context], int], kept: list[KeptClaims]
                ) -> int:
    while True:
        stuck_before, ctx.settled_reports = ctx.stuck_ensembles, []
        status = run_once(ctx)
        stuck = ctx.stuck_ensembles > stuck_before
        directory = ensemble_watch.report_dir(ctx.watch_dir, ctx.ensembles)
        reports = ensemble_watch.read_reports(directory)
        if (status != FAILED or ctx.should_stop()
                or not (reports.stopped or reports.unknown or stuck)):
            _tidy(ctx, directory, kept=True)  # (no recovery: the claims stay)
            return status  # normal end, a stop, or an ensemble that failed to come up
        hosts = [h for i, h in enumerate(ctx.alloc.hosts, start=1) if i not in reports.unknown]
        if 1 in reports.unknown and ctx.carried is not None:  # the launcher's node goes
            ctx.carried.node_dropped = True
        again = ctx.ensembles < MAX_RESTARTS and bool(hosts)
        if not again:  # its jobs are freed all the same: the launcher may wait for its own
            ctx.log.error(f"the serial-mode ensemble failed {ctx.ensembles + 1} time(s): not "
                          "starting another")
        keep, since = not ctx.release_session, ctx.ensemble_since  # (see _recover)
        held = _recover(ctx, reports, len(hosts) if again else 0, keep)
        _tidy(ctx, directory, keep or held is None)
        if keep and held is not None:  # settled once the watchdogs reported, or a lease on
            kept.append(KeptClaims(ctx, directory, since, held))
        if held is None or not again:
            return status
        ctx.alloc = dataclasses.replace(ctx.alloc, hosts=tuple(hosts))
        ctx.ensembles += 1
        ctx.log.warning(f"restarting the serial-mode ensemble on {len(hosts)} node(s) "
                        f"(ensemble {ctx.ensembles + 1} of this session)")


def _recover(ctx: Context, reports: ensemble_watch.Reports, nodes: int, keep: bool
             ) -> Optional[list[str]]:
    """Time out the jobs of ranks known dead, release the other claims -- unless ``keep``: the
    session is left to the lease sweep (a claim may be a start not recorded of a task not known
    dead; :mod:`balsam.launcher.kept_claims` settles them once the watchdogs reported, or the
    sweep if the launcher ends first); the claims kept (none if not ``keep``), or None if the
    database could not be reached (the launcher then exits as after any failed ensemble)."""
    dead = sorted({j for jobs in reports.stopped.values() for j in jobs})
    message = (f"interrupted: the serial-mode ensemble of session {ctx.session_id} lost a rank; "
               + (f"it restarts on {nodes} node(s)" if nodes else "it is not restarted"))
    try:
        timed_out, ctx.ensemble_since, held = ctx.db.run_before(
            time.monotonic() + RECOVER_SECONDS, _recover_in, ctx.session_id, dead, message, keep)
    except DatabaseUnavailable as exc:
        ctx.log.error(f"could not recover the failed ensemble's jobs ({exc})")
        return None
    ctx.log.warning(f"the serial-mode ensemble failed: {timed_out} running job(s) recorded "
                    "RUN_TIMEOUT, " + (f"{len(held)} other claim(s) kept until its watchdogs "
                                       "reported" if keep else "claims released"))
    return held


def _recover_in(cursor: Cursor, session_id: int, dead: list[str], message: str,
                keep: bool = False) -> tuple[int, int, list[str]]:
    """(jobs timed out, the last job event id, the claims kept): every event of the failed
    ensemble's runs is written by now, and the next ensemble's get higher ids (ensemble_watch
    counts from it). ``keep``: the claims not RUNNING stay (:mod:`.kept_claims`)."""
    timed_out = leases.finish(cursor, session_id, dead, State.RUN_TIMEOUT, message)
    held: list[str] = []
    if keep:
        cursor.execute(f"SELECT job_id FROM {schema.JOB_TABLE} WHERE session_id = %s "  # (locks
                       "AND state <> %s FOR NO KEY UPDATE",  # as the release: see the since)
                       [session_id, State.RUNNING.value])
        held = [str(r[0]) for r in cursor.fetchall()]
    else:
        leases.release(cursor, session_id)
    cursor.execute(f"SELECT coalesce(max(id), 0) FROM {schema.EVENT_TABLE}")
    return len(timed_out), int(fetch_one(cursor)[0]), held
