"""Helpers for the exactly-once fault tests: a task that leaves a trail of ticks, and the runs,
overlaps and unrecorded runs computed from those trails (never from sleeps), so assertions
hold however loaded the machine is."""
from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from typing import Any, Optional

from balsam.core import schema
from balsam.platform.process import start_time

TICKER = """#!/bin/bash
# One run of a job: every 0.1 s append "<pid> <epoch time>" to $MARKERS/<job id>; TICKS ticks,
# and more while the file $HOLD exists (if HOLD is set: a test keeps runs going until it has
# done what it must do while they run, however slow the machine is), 6000 ticks at most (ten
# minutes or more: a run whose test was interrupted before removing $HOLD ends on its own).
# With STUBBORN set, SIGTERM is ignored (the sleep it interrupts is simply restarted), so only
# SIGKILL ends the run early.
if [ -n "$STUBBORN" ]; then trap 'echo "$$ term" >> "$MARKERS/$BALSAM_JOB_ID.term"' TERM; fi
i=0
while ((i < ${TICKS:-20})) || [[ -n "$HOLD" && -e "$HOLD" ]] && ((i < 6000)); do
  echo "$$ $(date +%s.%N)" >> "$MARKERS/$BALSAM_JOB_ID"
  sleep 0.1
  i=$((i + 1))
done
echo "$$ end" >> "$MARKERS/$BALSAM_JOB_ID.end"
"""


def read_pid(path: str) -> Optional[int]:
    """The pid a task wrote to ``path`` (None while the file is missing or not complete)."""
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def runs(markers: str, job_id: str) -> dict[int, tuple[float, float]]:
    """{pid: (first tick, last tick)} of every run of ``job_id`` that ticked at least once."""
    out: dict[int, tuple[float, float]] = {}
    try:
        with open(os.path.join(markers, job_id)) as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) != 2:
            continue  # a tick cut short by SIGKILL
        pid, t = int(parts[0]), float(parts[1])
        first, last = out.get(pid, (t, t))
        out[pid] = (min(first, t), max(last, t))
    return out


def overlap_seconds(markers: str, job_ids: Iterable[str]) -> dict[str, float]:
    """{job id: seconds during which two runs of it ticked at once}, for jobs with any."""
    out = {}
    for job_id in job_ids:
        spans = sorted(runs(markers, job_id).values())
        total = 0.0
        for i, (start, end) in enumerate(spans):
            for other_start, other_end in spans[i + 1:]:
                total += max(0.0, min(end, other_end) - max(start, other_start))
        if total > 0:
            out[job_id] = total
    return out


def recorded_runs(cursor: Any, job_id: str) -> int:
    """How many runs the job's history shows (events entering RUNNING)."""
    cursor.execute(f"SELECT count(*) FROM {schema.EVENT_TABLE} WHERE job_id = %s "
                   "AND to_state = 'RUNNING'", [job_id])
    return int(cursor.fetchone()[0])


def unrecorded_runs(cursor: Any, markers: str, job_ids: Iterable[str]) -> dict[str, int]:
    """{job id: runs that ticked minus runs its history shows}, for jobs with more runs than
    records."""
    out = {}
    for job_id in job_ids:
        missing = len(runs(markers, job_id)) - recorded_runs(cursor, job_id)
        if missing > 0:
            out[job_id] = missing
    return out


def children_of(pid: int) -> dict[int, list[int]]:
    """{parent pid: [child pids]} of every process (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """Every process descending from ``pid``."""
    children = children_of(pid)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ensemble_pid(launcher_pid: int) -> int:
    """The pid of the MPI launch (``mpiexec``) a serial-mode launcher started (0: none yet)."""
    for pid in children_of(launcher_pid).get(launcher_pid, []):
        if "mpiexec" in cmdline(pid):
            return pid
    return 0


def kill(pid: int, sig: int = signal.SIGKILL, started: Optional[int] = None) -> None:
    """Send ``sig`` to ``pid``; with ``started`` (its start_time, taken while it was known to
    run), only if ``pid`` still names that process: one that ended may be another's by now."""
    if started is not None and start_time(pid) != started:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of MPI rank ``rank`` of a serial-mode launcher's ensemble (0: not found)."""
    for pid in descendants(launcher_pid):
        if "balsam.launcher.serial_ranks" not in cmdline(pid):
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = dict(item.split(b"=", 1) for item in fh.read().split(b"\0") if b"=" in item)
        except OSError:
            continue
        if env.get(b"PMI_RANK") == str(rank).encode():
            return pid
    return 0


def watchdog_of(rank: int) -> int:
    """The pid of worker rank ``rank``'s task watchdog (0: none yet)."""
    for pid in descendants(rank) if rank else ():
        if "balsam.launcher.watchdog" in cmdline(pid):
            return pid
    return 0


def shm_segments(pid: int) -> list[str]:
    """The MPICH shared-memory files (``/dev/shm/mpich_shm_*``) process ``pid`` maps."""
    try:
        with open(f"/proc/{pid}/maps") as fh:
            paths = {line.split()[-1] for line in fh if "/dev/shm/mpich_shm_" in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/dev/shm/"))


def outputs_made(db_path: str, cursor: Any, job_ids: Iterable[str]) -> int:
    """How many of ``job_ids`` have their output file: a serial worker makes it (with the
    working directory) ahead as soon as the task reaches its queue, so a job counts once a
    worker holds it, queued or started."""
    from launcher_support import job_row, workdir

    return sum(os.path.exists(os.path.join(workdir(db_path, cursor, j),
                                            f"{job_row(cursor, j)['name']}.out"))
               for j in job_ids)


def thread_states(root: int) -> str:
    """One line per thread of ``root``'s process tree (pid, thread id and name, state, kernel
    wait channel, command): what each waits in when a fault test times out."""
    def read(path: str) -> str:
        try:
            with open(path) as fh:
                return fh.read().strip()
        except OSError:
            return "?"

    lines = []
    for pid in [root, *descendants(root)]:
        lines.append(f"{pid}: {cmdline(pid)[:120]}")
        try:
            tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
        except OSError:
            continue
        for tid in tids:
            stat = read(f"/proc/{pid}/task/{tid}/stat")
            state = stat.rsplit(")", 1)[1].split()[0] if ")" in stat else "?"
            lines.append(f"  {tid} {read(f'/proc/{pid}/task/{tid}/comm')} {state} "
                         f"wchan={read(f'/proc/{pid}/task/{tid}/wchan')}")
    return "\n".join(lines)
