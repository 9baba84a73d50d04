"""The figures of ``bench_scale.py``: occupancy and event rates from the simulated start and
end times, and the CPU, memory and server counters of a run (issue 16)."""
from __future__ import annotations

import os
import resource
from array import array
from bisect import bisect_left, bisect_right
from typing import Any, Optional

BUSY_GOAL = 0.98
"""A slot occupancy at or above this is "full" (issue 16's goal while work remains)."""
MEAN_TASK_SECONDS = 5.5
"""The mean of the simulated task durations, 1-10 s (times ``--time-scale``)."""
TIMELINE_PARTS = 10


def demand(nodes: int, slots: int, time_scale: float) -> float:
    """Task starts + ends per second that keep ``nodes`` x ``slots`` slots busy with tasks of
    1-10 s x ``time_scale`` (in equilibrium: each slot starts and ends one task per mean)."""
    return 2 * nodes * slots / (MEAN_TASK_SECONDS * time_scale)


def time_scale_for(events_per_second: float, nodes: int, slots: int) -> float:
    """The ``--time-scale`` at which ``nodes`` x ``slots`` slots demand ``events_per_second``
    (``--demand``: the same demand, so the same share of the machine, at every N)."""
    if not events_per_second > 0:
        raise ValueError(f"a demand must be a positive rate of events/s, not {events_per_second}")
    return 2 * nodes * slots / (MEAN_TASK_SECONDS * events_per_second)


def occupancy(starts: array, ends: array, slots: int, a: float, b: float) -> float:
    """Busy slot-seconds in [a, b] over ``slots`` x (b - a) (a task's overlap is
    clip(end) - clip(start), so starts and ends need not be paired)."""
    if b <= a:
        return float("nan")
    busy = (sum(min(max(e, a), b) for e in ends) - sum(min(max(s, a), b) for s in starts))
    busy += sum(b - max(s, a) for s in starts[len(ends):]) if len(ends) < len(starts) else 0.0
    return busy / (slots * (b - a))


def peak_busy(starts: array, ends: array) -> int:
    """Most tasks running at once."""
    busy = peak = 0
    for _, step in sorted([(e, -1) for e in ends] + [(s, 1) for s in starts]):
        busy += step
        peak = max(peak, busy)
    return peak


def first_full(starts: array, ends: array, slots: int) -> Optional[float]:
    """The first simulated time at which >= ``BUSY_GOAL`` of the slots were busy."""
    points = sorted([(s, 1) for s in starts] + [(e, -1) for e in ends])
    busy, goal = 0, BUSY_GOAL * slots
    for t, step in points:
        busy += step
        if busy >= goal:
            return t
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set since it started (``VmHWM``; ``ru_maxrss`` would
    include the parent's at the fork), in MB."""
    try:
        with open("/proc/self/status") as fh:
            for text in fh:
                if text.startswith("VmHWM:"):
                    return int(text.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def backend_cpu(db: Any) -> float:
    """CPU seconds of the master's server process so far (from /proc: the server is local;
    nan where it cannot be read)."""
    try:
        with open(f"/proc/{db._backend_pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _proc_cpu(pid: int, children: bool = False) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:  # cutime + cstime: children that exited and were waited for
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def cluster_cpu(db: Any) -> float:
    """CPU seconds of the whole PostgreSQL cluster so far: the postmaster with its exited
    children (autovacuum workers, old backends) and every living child (backends, WAL writer,
    checkpointer, ...); nan where /proc cannot be read."""
    try:
        with open(f"/proc/{db._backend_pid}/stat") as fh:
            postmaster = int(fh.read().rsplit(")", 1)[1].split()[1])
        total = _proc_cpu(postmaster, children=True)
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) != postmaster:
                        continue
                total += _proc_cpu(int(name))
            except (OSError, IndexError, ValueError):
                continue
        return total
    except (OSError, IndexError, ValueError):
        return float("nan")


def server_counters(conn: Any) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_fetched "
                    "FROM pg_stat_database WHERE datname = current_database()")
        row = cur.fetchone()
        cur.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                    "WHERE relname = 'core_balsamjob'")
        row += cur.fetchone()
    conn.commit()
    return dict(zip(("commits", "inserted", "updated", "deleted", "fetched", "job_updates",
                     "job_hot"), row))


def events_between(starts: array, ends: array, a: float, b: float) -> int:
    """Task starts and ends at simulated times in [a, b]."""
    return sum(1 for s in starts if a <= s <= b) + sum(1 for e in ends if a <= e <= b)


def timeline(starts: array, ends: array, slots: int, a: float, b: float,
             parts: int = TIMELINE_PARTS) -> list[tuple[float, float, float]]:
    """[a, b] in ``parts`` equal parts: each part's (start - a, occupancy, events/s; an event
    at a boundary counts in the later part, at ``b`` in the last), how the slots filled and how
    the rate grew towards the demand (the first ends come 1-10 mean times after the fill)."""
    if b <= a:
        return []
    times = sorted([*starts, *ends])
    width = (b - a) / parts
    edges = [a + k * width for k in range(parts)] + [b]
    counts = [bisect_left(times, hi) - bisect_left(times, lo)
              for lo, hi in zip(edges, edges[1:])]
    counts[-1] += bisect_right(times, b) - bisect_left(times, b)
    return [(lo - a, occupancy(starts, ends, slots, lo, hi), n / width)
            for lo, hi, n in zip(edges, edges[1:], counts)]


def window_figures(starts: array, ends: array, slots: int, t0: float,
                   last_work: float) -> dict[str, Any]:
    """Occupancy and event rates from the simulated start and end times: from the master's
    start to the last task start (work remained: ``occ_all``); steady, from the first time
    ``BUSY_GOAL`` of the slots were busy to the master's last work order (it still had work
    to hand out; ``occ_steady``, ``rate``); and the tail, from then to the last start (work
    was left only in some workers' queues: ``occ_tail``). While work remained anywhere (the
    master's hold or a worker's queue: from that first full moment to the last start, issue
    16's measure; ``occ_remains``, ``rate_remains``), and the ``timeline`` from the master's
    start to the last start."""
    last_start = max(starts) if starts else t0
    full = first_full(starts, ends, slots)
    out: dict[str, Any] = {"last_start": last_start - t0, "last_work": last_work - t0,
                           "peak_busy": peak_busy(starts, ends),
                           "occ_all": occupancy(starts, ends, slots, t0, last_start),
                           "occ_tail": occupancy(starts, ends, slots, last_work, last_start),
                           "full_at": None if full is None else full - t0}
    a = full if full is not None and full < last_work else t0
    b = last_work
    out["occ_steady"] = (occupancy(starts, ends, slots, a, b)
                         if full is not None and full < last_work else None)
    out["rate"] = events_between(starts, ends, a, b) / (b - a) if b > a else float("nan")
    filled = full is not None and full < last_start
    out["occ_remains"] = occupancy(starts, ends, slots, full, last_start) if filled else None
    out["rate_remains"] = (events_between(starts, ends, full, last_start) / (last_start - full)
                           if filled else None)
    out["timeline"] = timeline(starts, ends, slots, t0, last_start)
    return out

