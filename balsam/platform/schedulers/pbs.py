"""PBS Pro / OpenPBS: ``qsub``, ``qstat -f -F json``, ``qdel``; ended jobs from ``qstat -x``
(needs ``job_history_enable`` on the server).

``qstat -f -F json`` lists every job the user may see; we keep those whose ``Job_Owner`` is the
user (``-u`` is documented only with the tabular output formats). Some PBS versions print
invalid JSON escapes (a backslash in a job's ``Variable_List``); :func:`loads` repairs them.
States: PBS Professional Reference Guide, "Job States".
"""
from __future__ import annotations

import json
import re
import signal
from typing import Any, Optional

from balsam.platform.schedulers import command as cmd
from balsam.platform.schedulers.base import COMMAND_TIMEOUT, BatchJobStatus, CommandFailed, ParseError
from balsam.platform.schedulers.walltime import minutes_or_none

NAME = "pbs"

STATE_MAP = {
    "Q": "queued", "W": "queued", "T": "queued",
    "R": "running", "B": "running",
    "E": "finishing",
    "H": "held", "S": "held", "U": "held",
    "F": "finished", "X": "finished",
    "M": "unknown",
}
"""``job_state`` letters -> normalised states (``F`` is refined by ``Exit_status``; ``M``:
moved to another server, which we cannot follow)."""

SIGNAL_BASE = 256
"""PBS Pro reports a job killed by signal N as ``Exit_status`` 256+N (``qdel``: 271)."""

GONE = ("Unknown Job Id", "Job has finished")
"""``qdel`` messages meaning the job has already ended (cancel is idempotent)."""


def submit_argv(script: str, cwd: str, job_name: str, output: str) -> list[str]:
    """``qsub``, run in ``cwd`` (PBS has no working-directory flag: the job gets
    ``PBS_O_WORKDIR``); stderr joined into ``output``; the rest comes from ``#PBS`` lines."""
    return ["qsub", "-N", job_name, "-j", "oe", "-o", output, script]


def parse_submit(stdout: str) -> str:
    """The job id ``qsub`` printed (``1234.server``; ``1234[].server`` for an array)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines or not re.fullmatch(r"\d+(\[\d*\])?(\.[\w.-]+)?", lines[-1]):
        raise ParseError(f"qsub printed no job id: {stdout.strip()[:200]!r}")
    return lines[-1]


def status_argv(user: str) -> list[str]:
    """``qstat -f -F json`` (``user`` is applied when parsing: see the module docstring)."""
    return ["qstat", "-f", "-F", "json"]


def loads(text: str) -> Any:
    """``json.loads`` tolerating PBS's unescaped backslashes and control characters."""
    try:
        return json.loads(text, strict=False)
    except ValueError:
        pass
    try:
        return json.loads(re.sub(r'\\(?!["\\/bfnrt]|u[0-9a-fA-F]{4})', r"\\\\", text), strict=False)
    except ValueError as exc:
        raise ParseError(f"qstat printed invalid JSON ({exc})")


def _nodes(resources: dict[str, Any]) -> Optional[int]:
    """``nodect``, else the chunk counts of ``select`` (``2:ncpus=64+1:ngpus=4`` -> 3)."""
    nodect = str(resources.get("nodect", "")).strip()
    if nodect.isdigit():
        return int(nodect)
    chunks = re.findall(r"(?:^|\+)(\d+):", str(resources.get("select", "")))
    return sum(int(c) for c in chunks) if chunks else None


def _final(word: str, exit_status: Any) -> tuple[str, Optional[int]]:
    """(normalised state, exit code) of a job; ``F`` depends on ``Exit_status``."""
    state = STATE_MAP.get(word, "unknown")
    try:
        code: Optional[int] = int(exit_status)
    except (TypeError, ValueError):
        code = None
    if code is not None and code > SIGNAL_BASE:
        code = -(code - SIGNAL_BASE)
    if word == "F" and code is not None and code != 0:
        state = "cancelled" if code in (-signal.SIGTERM, -signal.SIGKILL) else "failed"
    return state, code


def _job(job_id: str, info: dict[str, Any]) -> BatchJobStatus:
    resources = info.get("Resource_List") or {}
    used = info.get("resources_used") or {}
    word = str(info.get("job_state", "")).strip()
    state, code = _final(word, info.get("Exit_status"))
    wall = minutes_or_none(str(resources.get("walltime", "")))
    spent = minutes_or_none(str(used.get("walltime", "")))
    left = None if wall is None or state != "running" else max(0.0, wall - (spent or 0.0))
    return BatchJobStatus(
        job_id, state, word, queue=str(info.get("queue", "")), nodes=_nodes(resources),
        wall_minutes=wall, minutes_left=left,
        project=str(info.get("Account_Name") or info.get("project") or ""),
        name=str(info.get("Job_Name", "")), owner=str(info.get("Job_Owner", "")).split("@")[0],
        exit_code=code if state in ("finished", "failed", "cancelled") else None)


def parse_status(stdout: str) -> dict[str, BatchJobStatus]:
    """Every job in ``qstat -f -F json`` output (no output or no ``Jobs`` key: none)."""
    if not stdout.strip():
        return {}
    data = loads(stdout)
    jobs = data.get("Jobs", {}) if isinstance(data, dict) else None
    if not isinstance(jobs, dict) or not all(isinstance(v, dict) for v in jobs.values()):
        raise ParseError("qstat JSON has no mapping of job ids under 'Jobs'")
    return {job_id: _job(job_id, info) for job_id, info in jobs.items()}


def cancel_argv(scheduler_id: str) -> list[str]:
    """``qdel ID``."""
    return ["qdel", scheduler_id]


def history_argv(scheduler_id: str) -> list[str]:
    """``qstat -x -f -F json ID``: one job, ended ones included."""
    return ["qstat", "-x", "-f", "-F", "json", scheduler_id]


def submit(script: str, cwd: str, job_name: str, output: str,
           timeout: float = COMMAND_TIMEOUT) -> str:
    """Submit ``script`` from ``cwd``; its PBS job id."""
    return parse_submit(cmd.run(submit_argv(script, cwd, job_name, output), timeout, cwd=cwd).stdout)


def status(user: str, timeout: float = COMMAND_TIMEOUT) -> dict[str, BatchJobStatus]:
    """``user``'s jobs in the queue."""
    jobs = parse_status(cmd.run(status_argv(user), timeout).stdout)
    return {job_id: job for job_id, job in jobs.items() if job.owner == user}


def cancel(scheduler_id: str, timeout: float = COMMAND_TIMEOUT) -> None:
    """``qdel``; a job that has already ended is not an error."""
    cmd.cancel(cancel_argv(scheduler_id), GONE, timeout)


def final_status(scheduler_id: str, timeout: float = COMMAND_TIMEOUT) -> Optional[BatchJobStatus]:
    """The job from the server's history, or None (history off, or the job was purged)."""
    try:
        jobs = parse_status(cmd.run(history_argv(scheduler_id), timeout).stdout)
    except CommandFailed:
        return None
    return jobs.get(scheduler_id) or next(iter(jobs.values()), None)
