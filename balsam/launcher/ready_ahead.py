"""MPI mode's ready-ahead policy: how many single-node jobs to keep recorded RUNNING ahead of a
free node, and which queued jobs to record now (:class:`balsam.launcher.mpi_mode.MPIMode`
starts them the moment a node frees; its module docstring says what such a job means when the
launcher stops or dies).

RUNNING is committed before every start, and a commit waits for the WAL flush: with short runs
a node would idle for it at every start. With runs of a few milliseconds the commits' own cost
matters as much: each costs the database server ~1-2 ms of CPU whatever its size (as much as
recording ~10 jobs, and every session listening for job changes wakes for it), so refilling
2-3 jobs at a time spent more server CPU on the commits than on the jobs. Hence a target that
grows for short runs, refills when half is left, and top-ups when a transaction goes anyway.
"""
from __future__ import annotations

from typing import Optional

from balsam.launcher.task import TaskSpec

MAX_RUN_SECONDS = 1.0
"""Jobs are recorded RUNNING ahead of a free node only while runs last less than this on
average (then a commit before each start would idle nodes; longer runs do not notice it)."""
PER_NODE = 2
"""Jobs ready ahead per node of the allocation (refilled when half are left)..."""
SHORT_RUN_SECONDS = 0.1
SHORT = 16
"""...or at least this many in all while runs last less than SHORT_RUN_SECONDS on average
(~8 starts a commit; such a job shows RUNNING for at most ~SHORT / nodes runs, < 1 s, before
its start)..."""
MAX = 32
"""...and at most this many in all: a job waits for at most this many launches (a large
allocation does not show thousands RUNNING)."""

Start = tuple[TaskSpec, list[int]]
"""A job to record RUNNING and the nodes it is to start on ([]: the first that frees)."""


def target(run_seconds: Optional[float], nodes: int) -> int:
    """How many jobs to keep ready ahead with runs of ``run_seconds`` on average (None: none
    reaped yet) on ``nodes`` nodes."""
    if run_seconds is None or run_seconds >= MAX_RUN_SECONDS:
        return 0
    wanted = PER_NODE * nodes
    if run_seconds < SHORT_RUN_SECONDS:
        wanted = max(wanted, SHORT)
    return min(wanted, MAX)


def pick(goal: int, ready: int, queue: list[TaskSpec], starts: list[Start],
         unfit: list[TaskSpec], slots: int, top_up: bool = False) -> list[Start]:
    """Queued single-node jobs to record RUNNING ahead of a free node, in claim order, with
    ``ready`` ready already and ``goal`` wanted: when half is left, or (``top_up``) whenever a
    transaction goes anyway; none while a multi-node job waits (it needs nodes idle at once,
    which no one may grab as they free). ``starts``/``unfit`` are taken already; jobs shown
    RUNNING stay within ``max_concurrent_runs`` (``slots`` left of it)."""
    if ready > goal // 2 and not top_up:  # in batches: fewer, larger commits
        return []
    count = min(goal - ready, slots) - len(starts)
    if count <= 0:
        return []
    taken = {s.job_id for s, _ in starts} | {s.job_id for s in unfit}
    waiting = [s for s in queue if s.job_id not in taken]
    if any(s.num_nodes > 1 for s in waiting):
        return []
    return [(s, []) for s in waiting[:count]]
