"""MPI mode's transaction side: what one cycle of the loop writes and which claimed jobs it
starts where.

:class:`MPICycle` (a base of :class:`balsam.launcher.mpi_mode.MPIMode`, which decides when a
transaction goes and what it carries, and runs it on its helper thread:
:mod:`balsam.launcher.flight`) writes the ends, records RUNNING for the jobs about to start
(before their launch) and claims more in one statement (:func:`balsam.core.leases.cycle`),
starts claimed jobs on nodes still idle, releases what will not run, and, when asked, runs
the processing pass and the kill check. :meth:`MPICycle._pick` places claimed jobs on idle
nodes (largest first, as claimed).
"""
from __future__ import annotations

from typing import Optional

from balsam.core import launcher_moves, leases
from balsam.core.states import State
from balsam.db.dbapi import Cursor
from balsam.launcher.job_source import JobSource, Row
from balsam.launcher.mpi_runs import MPIRuns
from balsam.launcher.status import Batch, release_claims
from balsam.launcher.task import TaskSpec
from balsam.processing import transitions


class MPICycle(MPIRuns):
    """The transaction of the MPI-mode loop (see the module docstring); the loop
    (:class:`balsam.launcher.mpi_mode.MPIMode`) sets these attributes up."""

    source: JobSource
    follow: Optional[launcher_moves.FollowOn]
    """``transitions.FINISH_ON_RECORD`` when this launcher processes, else None."""

    def _pick(self, idle: list[int], slots: int, queue: Optional[list[TaskSpec]] = None
              ) -> tuple[list[tuple[TaskSpec, list[int]]], list[TaskSpec]]:
        """(claimed jobs to start now on idle nodes -- largest first, as claimed, each where
        it fits --, claimed jobs that no longer fit in the time left: to release)."""
        starts: list[tuple[TaskSpec, list[int]]] = []
        unfit: list[TaskSpec] = []
        free = list(idle)
        max_wall = self.ctx.max_wall_minutes()
        for spec in self.queue if queue is None else queue:
            if max_wall is not None and spec.wall_time_minutes > max_wall:
                unfit.append(spec)
            elif len(starts) < slots and spec.num_nodes <= len(free):
                nodes, free = free[:spec.num_nodes], free[spec.num_nodes:]
                starts.append((spec, nodes))
        return starts, unfit

    def _transaction(self, cur: Cursor, batch: Batch, process: bool, kill: bool, reconcile: bool,
                     known: set[str], starts: list[tuple[TaskSpec, list[int]]],
                     unfit: list[TaskSpec], claim: int, max_nodes: int, idle: list[int],
                     slots: int) -> tuple[list[str], set[str], list[TaskSpec], bool,
                                          list[tuple[TaskSpec, list[int]]], list[str],
                                          Optional[float]]:
        """Write the ends, start ``starts`` (RUNNING before their launch) and claim up to
        ``claim`` more jobs in one statement (:func:`leases.cycle`); claimed jobs that fit
        nodes still idle are started at once (one more statement: an idle launcher starts a
        new job within one transaction); process, check kills and reconcile if asked. Returns
        (killed ids, ids started, specs claimed, whether processing made jobs runnable, the
        claimed jobs started and their nodes, ids whose hold it ended: ends recorded, claims
        dropped, seconds until a job the pass left backing off may be retried or None)."""
        ctx = self.ctx
        runnable = False
        retry_in: Optional[float] = None
        if reconcile:
            lost, released = self.source.reconcile_in(cur, known)
            if lost or released:
                ctx.log.warning(f"after reconnecting: {lost} job(s) started in a lost commit "
                                f"recorded RUN_TIMEOUT, {released} claim(s) released")
        moves: list[tuple[str, State, str]] = [(j, State.RUN_DONE, "") for j in batch.done]
        moves += [(j, State.RUN_ERROR, m) for j, m in batch.errors.items()]
        moves += [(j, State.RUN_TIMEOUT, m) for j, m in batch.timeouts.items()]
        for spec, nodes in starts:
            hosts = ",".join(ctx.alloc.hosts[i] for i in nodes)
            moves.append((spec.job_id, State.RUNNING,
                          f"launcher session {ctx.session_id} on {hosts}" if nodes else
                          f"launcher session {ctx.session_id}, ready ahead of a free node"))
        rows: list[Row] = []
        started: set[str] = set()
        ended: list[str] = []
        if moves or claim:
            moved, rows = leases.cycle(cur, ctx.session_id, moves, claim, serial=False,
                                       max_nodes=max_nodes, wf_filter=ctx.wf_filter,
                                       max_wall_minutes=ctx.max_wall_minutes(),
                                       tags=self.source.tags,
                                       gpus_per_node=self.source.alloc.gpus_per_node,
                                       follow=self.follow)
            started = {j for j, _, to in moved if to == State.RUNNING.value}
            ended = [j for j, _, to in moved if to != State.RUNNING.value]
        claimed = self.source.specs_in(cur, rows, self._check)
        used = {i for _, nodes in starts for i in nodes}
        more, _ = self._pick([i for i in idle if i not in used], slots - len(starts), claimed)
        if more:
            messages = {s.job_id: f"launcher session {ctx.session_id} on "
                                  f"{','.join(ctx.alloc.hosts[i] for i in nodes)}"
                        for s, nodes in more}
            started.update(leases.start(cur, ctx.session_id, list(messages), messages))
        drop = batch.release + [s.job_id for s, _ in starts + more
                                if s.job_id not in started] + [s.job_id for s in unfit]
        # killed by a user (a job killed ready ahead: no run), changed meanwhile, or too long
        release_claims(cur, ctx.session_id, Batch(release=drop, unlaunched=batch.unlaunched))
        if process:
            done = transitions.advance_pass(cur, ctx.wf_filter, ctx.tunables.processing_batch,
                                            ctx.tunables.retry_policy())
            moved_kinds, retry_in = done.moved, done.retry_in
            runnable = bool(moved_kinds.get("ready") or moved_kinds.get("retry"))
            if any(moved_kinds.values()):
                ctx.log.info("processing: " + ", ".join(
                    f"{k} {v}" for k, v in moved_kinds.items() if v))
        killed = leases.killed(cur, ctx.session_id) if kill else []
        return killed, started, claimed, runnable, more, ended + batch.release, retry_in
