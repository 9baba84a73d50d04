"""Cobalt (ALCF Theta, Cooley): ``qsub``, ``qstat`` with a fixed ``QSTAT_HEADER``, ``qdel``.

Cobalt's ``qstat`` has no machine-readable format, but the ``QSTAT_HEADER`` variable fixes its
columns; we ask for columns whose values hold no blanks, job name last (split at most 8 times),
and skip the header and its ``====`` rule. Cobalt keeps no history of ended jobs, so
:func:`final_status` always answers None.
"""
from __future__ import annotations

import os
import re
from typing import Optional

from balsam.platform.schedulers import command as cmd
from balsam.platform.schedulers.base import COMMAND_TIMEOUT, BatchJobStatus, ParseError
from balsam.platform.schedulers.walltime import minutes_or_none

NAME = "cobalt"
COLUMNS = ("JobID", "User", "WallTime", "TimeRemaining", "State", "Queue", "Nodes", "Project",
           "JobName")
QSTAT_HEADER = ":".join(COLUMNS)

STATE_MAP = {
    "queued": "queued", "starting": "running", "running": "running",
    "exiting": "finishing", "killing": "finishing",
    "user_hold": "held", "admin_hold": "held", "dep_hold": "held", "maxrun_hold": "held",
    "dep_fail": "held", "hold": "held",
    "done": "finished",
}
"""Cobalt's state words -> normalised states (``dep_fail`` jobs wait for a user's ``qdel``)."""

GONE = ("not found", "No jobs")
"""``qdel`` messages meaning the job has already ended (cancel is idempotent)."""


def submit_argv(script: str, cwd: str, job_name: str, output: str) -> list[str]:
    """``qsub --cwd CWD -O PREFIX SCRIPT``: Cobalt writes ``PREFIX.output``, ``.error`` and
    ``.cobaltlog``, PREFIX being ``output`` without its extension; it has no job-name flag (the
    prefix's base name serves), so ``job_name`` is unused. Nodes, time, queue, project: ``#COBALT``."""
    prefix = os.path.splitext(output)[0]
    return ["qsub", "--cwd", cwd, "-O", prefix, script]


def parse_submit(stdout: str) -> str:
    """The job id: the last line of ``qsub`` output that is a number (it may first print
    lines such as ``Job routed to queue "debug-flat-quad".``)."""
    for line in reversed(stdout.splitlines()):
        if line.strip().isdigit():
            return line.strip()
    raise ParseError(f"qsub printed no job id: {stdout.strip()[:200]!r}")


def status_argv(user: str) -> list[str]:
    """``qstat -u USER``; run it with :data:`QSTAT_HEADER` in the environment."""
    return ["qstat", "-u", user]


def parse_status(stdout: str) -> dict[str, BatchJobStatus]:
    """Jobs in ``qstat`` output under :data:`QSTAT_HEADER` (no output, header only: none)."""
    jobs: dict[str, BatchJobStatus] = {}
    for number, line in enumerate(stdout.splitlines(), 1):
        fields = line.split(None, len(COLUMNS) - 1)
        if fields and fields[0].lower() == "jobid":
            if [f.lower() for f in line.split()] != [c.lower() for c in COLUMNS]:
                raise ParseError(f"qstat printed the columns {' '.join(line.split())}, not "
                                 f"QSTAT_HEADER={QSTAT_HEADER}")
            continue
        if not fields or re.fullmatch(r"=+", fields[0]):
            continue
        if len(fields) != len(COLUMNS) or not fields[0].isdigit():
            raise ParseError(f"qstat line {number} is not the {len(COLUMNS)} columns of "
                             f"QSTAT_HEADER={QSTAT_HEADER}: {line[:200]!r}")
        job_id, user, wall, left, word, queue, nodes, project, name = fields
        jobs[job_id] = BatchJobStatus(
            job_id, STATE_MAP.get(word, "unknown"), word, queue=queue,
            nodes=int(nodes) if nodes.isdigit() else None, wall_minutes=minutes_or_none(wall),
            minutes_left=minutes_or_none(left), project="" if project == "N/A" else project,
            name=name.strip(), owner=user)
    return jobs


def cancel_argv(scheduler_id: str) -> list[str]:
    """``qdel ID``."""
    return ["qdel", scheduler_id]


def submit(script: str, cwd: str, job_name: str, output: str,
           timeout: float = COMMAND_TIMEOUT) -> str:
    """Submit ``script``; its Cobalt job id."""
    return parse_submit(cmd.run(submit_argv(script, cwd, job_name, output), timeout).stdout)


def status(user: str, timeout: float = COMMAND_TIMEOUT) -> dict[str, BatchJobStatus]:
    """``user``'s jobs in the queue."""
    out = cmd.run(status_argv(user), timeout, env={"QSTAT_HEADER": QSTAT_HEADER}).stdout
    return {job_id: job for job_id, job in parse_status(out).items() if job.owner in ("", user)}


def cancel(scheduler_id: str, timeout: float = COMMAND_TIMEOUT) -> None:
    """``qdel``; a job that has already ended is not an error."""
    cmd.cancel(cancel_argv(scheduler_id), GONE, timeout)


def final_status(scheduler_id: str, timeout: float = COMMAND_TIMEOUT) -> Optional[BatchJobStatus]:
    """Always None: Cobalt forgets a job when it leaves the queue."""
    return None
