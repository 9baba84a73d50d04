"""Data and rendering of ``balsam top``: one snapshot of the DB, drawn as lines of text.

:func:`collect` reads a :class:`Snapshot` in one transaction with queries whose cost does not
grow with the number of finished jobs: counts by state (the state index), running tasks of live
launcher sessions (the state index), unfinished batch jobs (a small table), and state events only
over a recent time window (the ``timestamp`` index). :func:`render` turns a snapshot (and the
previous one, for rates) into at most ``height`` lines of at most ``width`` characters each.

Rates are the net change of a state's count per minute: between two refreshes when a previous
snapshot is given, otherwise from the state events of the last :data:`RATE_WINDOW` seconds
(incoming minus outgoing events). CREATED has no creation event, so its first-frame rate is "-".
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from balsam.core.reads import activity, jobs
from balsam.core.render import duration
from balsam.core.states import STATES, State

if TYPE_CHECKING:
    from balsam.db.dbapi import Cursor
    from balsam.service.live import LiveStates

RATE_WINDOW = 60
"""Seconds of events behind the first frame's rates."""
FAILURE_WINDOW = 3600
"""Seconds of events searched for the latest failures."""
FAILURE_LIMIT = 10
FAILURE_STATES = (State.FAILED.value, State.RUN_ERROR.value)
LIVE_MODES = ("mpi", "serial")
WORKER_MODE = "processing"
SLOW_QUERY_MS = 1500
"""A failures query slower than this is abandoned (the frame says so) rather than stall the view."""


@dataclass
class Snapshot:
    """What one refresh read. ``now`` is the database's clock."""

    now: dt.datetime
    counts: dict[str, int]
    flow: Optional[dict[str, int]]
    """Net events per state over the last RATE_WINDOW seconds (None if not read)."""
    sessions: list[dict[str, Any]]
    workers: int
    """Live transition-worker sessions (job_mode 'processing')."""
    batch_jobs: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    """Open transfer items by (protocol, endpoint, direction): pending, active, batches."""

    def with_live(self, answer: LiveStates) -> Snapshot:
        """This snapshot with its batch jobs' live states (``answer``: a
        :class:`balsam.service.live.LiveStates`) and, if the scheduler failed, a note why."""
        from balsam.service.live import annotate

        annotate(self.batch_jobs, answer)
        if answer.note:
            self.notes.append(answer.note)
        return self


def collect(cur: Cursor, with_flow: bool = True) -> Snapshot:
    """Read a snapshot with ``cur`` (a DB-API cursor inside a transaction; nothing is written).

    ``with_flow`` also reads the recent events behind first-frame rates.
    """
    now = activity.db_now(cur)
    counts = jobs.state_counts(cur, "", [])
    flow = activity.event_flow(cur, RATE_WINDOW) if with_flow else None
    sessions = activity.live_sessions(cur, LIVE_MODES, order="id")
    workers = activity.count_live_sessions(cur, WORKER_MODE)
    batch_jobs = activity.unfinished_batch_jobs(cur)
    failures = activity.recent_failures(cur, FAILURE_STATES, FAILURE_WINDOW, FAILURE_LIMIT,
                                        SLOW_QUERY_MS)
    transfers = activity.open_transfers(cur)
    if failures is None:
        return Snapshot(now, counts, flow, sessions, workers, batch_jobs, [],
                        [f"latest failures not shown: the query took over {SLOW_QUERY_MS} ms"],
                        transfers)
    return Snapshot(now, counts, flow, sessions, workers, batch_jobs, failures, [], transfers)


def rates(snap: Snapshot, prev: Optional[Snapshot]) -> dict[str, Optional[float]]:
    """Net change per minute of each state's count (None where unknown; see the module doc)."""
    if prev is not None:
        minutes = (snap.now - prev.now).total_seconds() / 60
        if minutes > 0:
            return {s: (snap.counts.get(s, 0) - prev.counts.get(s, 0)) / minutes for s in STATES}
    if snap.flow is None:
        return {s: None for s in STATES}
    per_min = 60 / RATE_WINDOW
    return {s: (None if s == State.CREATED else snap.flow.get(s, 0) * per_min) for s in STATES}


def _rate(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if abs(value) < 0.05:
        return "0"
    text = f"{value:+.0f}" if abs(value) >= 10 else f"{value:+.1f}"
    return text


def fit(line: str, width: int) -> str:
    """``line`` cut to ``width`` characters (a cut is marked with ``~``)."""
    return line if len(line) <= width else line[: max(0, width - 1)] + "~"


def _state_lines(snap: Snapshot, prev: Optional[Snapshot], width: int) -> list[str]:
    r = rates(snap, prev)
    shown = [s for s in STATES if snap.counts.get(s, 0) or r.get(s)]
    cell = "{:<16} {:>10} {:>9}"
    if not shown:
        return ["  (no jobs)"]
    cols = 2 if width >= 80 else 1
    head = "  ".join([cell.format("STATE", "JOBS", "PER MIN")] * min(cols, len(shown)))
    rows = (len(shown) + cols - 1) // cols
    lines = [head]
    for i in range(rows):
        cells = [cell.format(s, f"{snap.counts.get(s, 0):,}", _rate(r.get(s)))
                 for s in shown[i * cols:(i + 1) * cols]]
        lines.append("  ".join(cells))
    return lines


def _session_rows(snap: Snapshot) -> list[str]:
    out = []
    for s in snap.sessions:
        host = s["hostname"] + (f" ({s['label']})" if s["label"] else "")
        out.append(f"{s['id']:>5} {fit(host, 24):<24} {s['job_mode']:<6} {s['num_nodes']:>5} "
                   f"{s['running']:>7} {duration((snap.now - s['heartbeat']).total_seconds()):>9} "
                   f"{duration((snap.now - s['started_at']).total_seconds()):>8} "
                   f"{s['scheduler_id'] or '-'}")
    return out


def _as_of(b: dict[str, Any]) -> str:
    """Short form of :func:`balsam.service.live.annotate`'s verdict (the note says more)."""
    if b.get("live") is None:
        return ""
    if not b["live"]:
        return "stale"
    return "live" if b["state"] == b["recorded_state"] else f"db: {b['recorded_state']}"


def _batch_rows(snap: Snapshot) -> list[str]:
    return [f"{b['id']:>5} {fit(b['scheduler_id'] or '-', 14):<14} {fit(b['queue'] or '-', 16):<16} "
            f"{b['nodes']:>5} {b['wall_minutes']:>7} {b['state']:<10} {_as_of(b)}".rstrip()
            for b in snap.batch_jobs]


def _transfer_rows(snap: Snapshot) -> list[str]:
    return [f"{fit(t['protocol'], 7):<7} {fit(t['endpoint'] or '(local)', 36):<36} "
            f"{t['direction']:<4} {t['pending']:>8} {t['active']:>7} {t['batches']:>7}"
            for t in snap.transfers]


def _failure_rows(snap: Snapshot) -> list[str]:
    out = []
    for f in snap.failures:
        first = next((ln.strip() for ln in (f["message"] or "").splitlines() if ln.strip()), "")
        out.append(f"{f['timestamp'].astimezone().strftime('%H:%M:%S')} {f['to_state']:<9} "
                   f"{fit(f['name'], 16):<16} {str(f['job_id'])[:8]} {first}")
    return out


def render(snap: Snapshot, prev: Optional[Snapshot], width: int = 80,
           height: Optional[int] = None, title: str = "") -> list[str]:
    """The frame: lines of at most ``width`` characters, at most ``height`` lines if given.

    When the terminal is too short, the longest of the launcher / batch-job / failure lists
    loses rows first; each section's title says how many rows are hidden.
    """
    total = sum(snap.counts.values())
    clock = snap.now.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    head = [f"balsam top  {clock}  {total:,} jobs" + (f"  {title}" if title else "")]
    head += [""] + _state_lines(snap, prev, width)
    head.extend(f"note: {n}" for n in snap.notes)
    workers = f"; {snap.workers} transition-worker session{'s' * (snap.workers != 1)}"
    sections = [
        (f"Launchers: {len(snap.sessions)} live{workers}",
         f"{'ID':>5} {'HOST':<24} {'MODE':<6} {'NODES':>5} {State.RUNNING.value:>7} {'HEARTBEAT':>9} "
         f"{'UP':>8} SCHED ID", _session_rows(snap)),
        (f"Batch jobs: {len(snap.batch_jobs)} queued or running",
         f"{'ID':>5} {'SCHED ID':<14} {'QUEUE':<16} {'NODES':>5} {'MINUTES':>7} {'STATE':<10} "
         "AS OF",
         _batch_rows(snap)),
        ("Latest failures", f"{'TIME':<8} {'STATE':<9} {'NAME':<16} {'ID':<8} MESSAGE",
         _failure_rows(snap)),
    ]
    if snap.transfers:  # shown only while transfers are open: a quiet DB keeps its layout
        sections.insert(2, (
            f"Transfers: {sum(t['pending'] for t in snap.transfers)} pending, "
            f"{sum(t['active'] for t in snap.transfers)} active",
            f"{'PROTO':<7} {'ENDPOINT':<36} {'DIR':<4} {'PENDING':>8} {'ACTIVE':>7} {'BATCHES':>7}",
            _transfer_rows(snap)))
    shown = [len(rows) for _, _, rows in sections]

    def size() -> int:
        return len(head) + sum(2 + (1 + n if n else 0) for n in shown)

    while height is not None and size() > height and max(shown) > 0:
        shown[shown.index(max(shown))] -= 1
    lines = list(head)
    for n, (name, header, rows) in zip(shown, sections):
        hidden = len(rows) - n
        lines += ["", name + (f" (+{hidden} not shown)" if hidden else "")]
        if n:
            lines += [header] + rows[:n]
    if height is not None:
        lines = lines[:height]
    return [fit(line, width) for line in lines]
