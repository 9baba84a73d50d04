"""Elastic planning: turn the runnable backlog into new batch jobs within the queue policies.

:func:`plan` runs in the caller's transaction and holds a transaction-level advisory lock
(:data:`LOCK_KEY`) for it, so two concurrent plans never both cover the same backlog: the
second waits, then sees the first one's rows as capacity.

What counts as backlog. Jobs not held by a session in PREPROCESSED or RESTART_READY (a launcher
may claim them now) and in READY or STAGED_IN (their parents are done; only stage-in or a
preprocess script remains). CREATED and AWAITING_PARENTS jobs do not count: their parents have
not finished, and the batch job running the parents picks them up (``--consume-all``).
RUN_TIMEOUT and RUN_ERROR jobs do not count either: the service runs the processing
transitions before it plans, which turns every retryable one into RESTART_READY first.
The planner reads the backlog as counts per shape that the database keeps (:func:`backlog`),
never the jobs themselves.

Modes. A job of 1 node and 1 rank is *serial* (``node_packing_count`` of them share a node);
every other job is *mpi*. Each mode gets its own batch jobs (``--job-mode``); all run every
workflow (``--consume-all``).

Coverage. Our unfinished batch jobs of a mode (any row not in a final state) are capacity:
``nodes x minutes left`` (the walltime until the scheduler reports the time left). Jobs are
taken as covered in the order launchers claim them (highest priority first; then MPI: widest,
then longest first; serial: fewest per node, then longest) until that area is used up,
skipping jobs wider than every such batch job or longer than the most time any has left. This
is an area estimate: a running batch job's own running tasks are not subtracted, so it can only
under-submit, and a later cycle catches up when that job ends.

Packing. The uncovered jobs of a mode are packed (:func:`balsam.service.packing.pack`, node
units x seconds) into each open queue in settings order: boxes of ``max_nodes`` (capped by the
queue's ``max_total_nodes`` headroom) x the launcher time of ``max_minutes``, at most as many
as the queue has free slots; each box is shrunk to what it holds (nodes, then walltime via
:meth:`QueuePolicy.batch_minutes`) and becomes a ``pending-submission`` row. Jobs left over try
the next queue; jobs that fit no queue are skipped (and logged). MPI is planned before serial.
Priorities: the uncovered jobs of each priority, highest first, are packed on their own, so
higher priorities take the free queue slots first (with one priority, as usual, nothing changes).
A queue is open while ``queued < max_queued`` and ``queued + running < max_queued +
max_running``; after a submission failed (``submit-failed``) it stays closed
:data:`FAILED_QUEUE_COOLDOWN` seconds, so a broken configuration cannot make a row per cycle.
"""
from __future__ import annotations

import logging
import math
from array import array
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional

from balsam.core import schema
from balsam.core.sql import fetch_dicts
from balsam.core.states import State
from balsam.db.dbapi import Cursor, fetch_one
from balsam.service import packing
from balsam.service.policy import (
    FINAL_ROW_STATES,
    PENDING,
    RUNNING_ROW_STATES,
    SUBMIT_FAILED,
    QueuePolicy,
    load_policies,
)

LOCK_KEY = 0x42414C53504C414E
"""``pg_advisory_xact_lock`` key of planning ("BALSPLAN"): fixed, never a salted hash."""
FAILED_QUEUE_COOLDOWN = 600.0
"""Seconds a queue takes no new batch job after one of its submissions failed for good."""
MAX_UNITS_PER_NODE = 1 << 20
"""Above this lcm of packing counts, serial widths are rounded up instead (still exact-safe)."""
BACKLOG_STATES = (State.PREPROCESSED.value, State.RESTART_READY.value, State.READY.value,
                  State.STAGED_IN.value)
"""What counts as backlog (module docstring); the triggers of migration 0012 count these."""
BACKLOG_TABLE = "core_backlogshape"
"""Signed job counts per shape, appended by triggers on the job table (:func:`backlog`)."""
MODES = ("mpi", "serial")

_log = logging.getLogger(__name__)
Shape = tuple[int, int, int, int, int]
"""(num_nodes, node_packing_count, wall_time_minutes, count, priority) of a group of alike
jobs."""


@dataclass
class QueueUse:
    """Our unfinished batch jobs in one queue."""

    queued: int = 0
    running: int = 0
    nodes: int = 0


def backlog(cursor: Cursor) -> dict[str, list[Shape]]:
    """The runnable backlog grouped by shape, per mode (module docstring), in shape order.

    Read from the per-shape counts the database keeps (``core_backlogshape``, migration 0012:
    triggers on the job table append a signed count per shape for every statement that moves
    jobs into or out of the backlog), not from the jobs: one row per shape once folded. This
    folds them: the rows this transaction sees are replaced by their sums per shape (rows
    appended meanwhile by other transactions are not seen, and stay for the next fold), so the
    table stays about one row per shape. Concurrent folds are safe: a row is deleted, and
    counted, by one of them only."""
    cursor.execute(f"""
        WITH seen AS (DELETE FROM {BACKLOG_TABLE} RETURNING *)
        INSERT INTO {BACKLOG_TABLE} (serial, num_nodes, node_packing_count, wall_time_minutes,
                                     priority, jobs)
        SELECT serial, num_nodes, node_packing_count, wall_time_minutes, priority, sum(jobs)
        FROM seen GROUP BY 1, 2, 3, 4, 5 HAVING sum(jobs) <> 0
        RETURNING serial, num_nodes, node_packing_count, wall_time_minutes, jobs, priority""")
    shapes: dict[str, list[Shape]] = {"mpi": [], "serial": []}
    for serial, nodes, npc, minutes, count, priority in sorted(cursor.fetchall()):
        if count > 0:
            shapes["serial" if serial else "mpi"].append(
                (nodes, max(1, npc), max(1, minutes), int(count), priority))
    return shapes


def active_launches(cursor: Cursor) -> list[dict[str, Any]]:
    """Our batch jobs not in a final state (rows as dicts)."""
    final = ", ".join(f"'{s}'" for s in sorted(FINAL_ROW_STATES))
    cursor.execute(f"""
        SELECT id, queue, nodes, wall_minutes, minutes_left, job_mode, state
        FROM {schema.QLAUNCH_TABLE} WHERE from_balsam AND state NOT IN ({final})""")
    return fetch_dicts(cursor)


def _units_per_node(shapes: list[Shape], mode: str) -> int:
    if mode == "mpi":
        return 1
    units = 1
    for shape in shapes:
        units = units * shape[1] // math.gcd(units, shape[1])
        if units > MAX_UNITS_PER_NODE:
            return max(shape[1] for shape in shapes)
    return units


def _width(shape: Shape, mode: str, units: int) -> int:
    return shape[0] if mode == "mpi" else -(-units // shape[1])


def uncovered(shapes: list[Shape], mode: str, launches: list[dict[str, Any]],
              units: int) -> list[Shape]:
    """``shapes`` minus the jobs our unfinished batch jobs of ``mode`` will run (docstring)."""
    mine = [r for r in launches if r["job_mode"] == mode]
    if not mine:
        return shapes
    area, longest = 0.0, 0.0
    for r in mine:
        left = r["minutes_left"] if r["minutes_left"] is not None else r["wall_minutes"]
        left = max(0.0, float(left)) * 60
        area += r["nodes"] * units * left
        longest = max(longest, left)
    widest = max(r["nodes"] for r in mine) * units
    order: Callable[[Shape], tuple[int, ...]] = (lambda s: (-s[4], -s[0], -s[2])) if mode == "mpi" else (
        lambda s: (-s[4], s[1], -s[2]))
    left_over = []
    for shape in sorted(shapes, key=order):
        width, seconds = _width(shape, mode, units), shape[2] * 60
        count = shape[3]
        if area > 0 and width <= widest and seconds <= longest:
            taken = min(count, math.ceil(area / (width * seconds)))
            area -= taken * width * seconds
            count -= taken
        if count:
            left_over.append((shape[0], shape[1], shape[2], count, shape[4]))
    return left_over


def _arrays(shapes: list[Shape], mode: str, units: int) -> tuple[array[int], array[int]]:
    widths, heights = array("q"), array("q")
    for shape in shapes:
        widths.extend(array("q", [_width(shape, mode, units)]) * shape[3])
        heights.extend(array("q", [shape[2] * 60]) * shape[3])
    return widths, heights


def _cooling(cursor: Cursor, now: datetime) -> set[str]:
    cursor.execute(f"SELECT DISTINCT queue FROM {schema.QLAUNCH_TABLE} WHERE state = %s "
                   "AND from_balsam AND ended_at > %s",
                   [SUBMIT_FAILED, now - timedelta(seconds=FAILED_QUEUE_COOLDOWN)])
    return {r[0] for r in cursor.fetchall()}


def _insert(cursor: Cursor, policy: QueuePolicy, nodes: int, minutes: int, mode: str,
            project: str, now: datetime) -> int:
    cursor.execute(f"""
        INSERT INTO {schema.QLAUNCH_TABLE} (scheduler_id, project, queue, nodes, wall_minutes,
            job_mode, wf_filter, sched_flags, command, state, prescheduled_only, from_balsam,
            raw_state, message, attempts, created_at)
        VALUES ('', %s, %s, %s, %s, %s, '', '', '', %s, false, true, '', '', 0, %s)
        RETURNING id""", [project, policy.name, nodes, minutes, mode, PENDING, now])
    return int(fetch_one(cursor)[0])


def plan(cursor: Cursor, settings: dict[str, Any], *, now: Optional[datetime] = None,
         log: Optional[logging.Logger] = None) -> list[int]:
    """Create ``pending-submission`` rows for the uncovered backlog; returns their ids in
    creation order (module docstring). ``settings`` gives ``queues`` and ``project``."""
    log = log or _log
    now = now or datetime.now(timezone.utc)
    policies = load_policies(settings)
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
    launches = active_launches(cursor)
    use: dict[str, QueueUse] = defaultdict(QueueUse)
    for r in launches:
        u = use[r["queue"]]
        u.nodes += r["nodes"]
        if r["state"] in RUNNING_ROW_STATES:
            u.running += 1
        else:
            u.queued += 1
    cooling = _cooling(cursor, now)
    shapes = backlog(cursor)
    created: list[int] = []
    for mode in MODES:
        units = _units_per_node(shapes[mode], mode)
        todo = uncovered(shapes[mode], mode, launches, units)
        for priority in sorted({shape[4] for shape in todo}, reverse=True):
            tier = [shape for shape in todo if shape[4] == priority]
            created += _pack(cursor, tier, mode, units, policies, use, cooling,
                             str(settings.get("project") or ""), now, log)
    if created:
        log.info("planner: new batch job(s) %s", ", ".join(map(str, created)))
    return created


def _pack(cursor: Cursor, todo: list[Shape], mode: str, units: int, policies: list[QueuePolicy],
          use: dict[str, QueueUse], cooling: set[str], project: str, now: datetime,
          log: logging.Logger) -> list[int]:
    """Pack ``todo`` into the open queues in settings order (module docstring), updating
    ``use``; returns the ids of the rows created."""
    created: list[int] = []
    widths, heights = _arrays(todo, mode, units)
    for policy in policies:
        if not widths:
            break
        u = use[policy.name]
        slots = min(policy.max_queued - u.queued,
                    policy.max_queued + policy.max_running - u.queued - u.running)
        node_room = min(policy.max_nodes, policy.max_total_nodes - u.nodes)
        if slots <= 0 or node_room < policy.min_nodes or policy.name in cooling:
            continue
        result = packing.pack(widths, heights, node_room * units, policy.usable_seconds(),
                              max_boxes=slots)
        kept = 0
        for b in range(result.boxes_used):
            nodes = max(policy.min_nodes, -(-result.used_width[b] // units))
            if u.nodes + nodes > policy.max_total_nodes:
                break
            minutes = policy.batch_minutes(result.used_height[b] / 60)
            created.append(_insert(cursor, policy, nodes, minutes, mode, project, now))
            u.nodes += nodes
            u.queued += 1
            kept += 1
        if kept == result.boxes_used and min(result.box_of, default=0) >= 0:
            widths = array("q")
            break
        rest = [i for i, b in enumerate(result.box_of) if b < 0 or b >= kept]
        widths = array("q", (widths[i] for i in rest))
        heights = array("q", (heights[i] for i in rest))
    if widths:
        log.info("planner: %d %s job(s) fit no open queue this cycle", len(widths), mode)
    return created
