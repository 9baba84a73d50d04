"""IBM Spectrum LSF (OLCF Summit): ``bsub < script``, ``bjobs -json -o FIELDS``, ``bkill``.

The script is given on ``bsub``'s stdin, the one form in which every LSF version reads its
``#BSUB`` lines. ``bjobs`` lists recently ended jobs (``DONE``/``EXIT``) for ``CLEAN_PERIOD``
(one hour by default), so :func:`final_status` asks for the job by id. Field names and states:
``man bjobs`` ("Output: -o", "JOB STATUS"), LSF 10.1.
"""
from __future__ import annotations

import json
import re
from typing import Any, Optional

from balsam.platform.schedulers import command as cmd
from balsam.platform.schedulers.base import (
    COMMAND_TIMEOUT,
    BatchJobStatus,
    CommandFailed,
    ParseError,
    SchedulerError,
)
from balsam.platform.schedulers.walltime import minutes_or_none

NAME = "lsf"
FIELDS = ("jobid", "stat", "user", "queue", "job_name", "proj_name", "nexec_host",
          "runtimelimit", "time_left", "exit_code")

STATE_MAP = {
    "PEND": "queued", "WAIT": "queued",
    "PROV": "running", "RUN": "running",
    "ZOMBI": "finishing",
    "PSUSP": "held", "USUSP": "held", "SSUSP": "held",
    "DONE": "finished", "EXIT": "failed",
    "UNKWN": "unknown",
}
"""``STAT`` words -> normalised states (``bkill`` also ends in ``EXIT``: LSF does not tell a
killed job from a failed one in these fields)."""

NO_JOBS = ("No unfinished job found", "No job found", "is not found", "No matching job found")
"""What ``bjobs`` prints (on stderr, exit 255 on some versions) when there is nothing to list."""

GONE = ("already finished", "No matching job found", "is not found")
"""``bkill`` messages meaning the job has already ended (cancel is idempotent)."""


def submit_argv(script: str, cwd: str, job_name: str, output: str) -> list[str]:
    """``bsub`` without the script, which goes on stdin (see the module docstring); stderr is
    joined into ``output`` because no ``-e`` is given. Nodes, ``-W``, queue, project: ``#BSUB``."""
    return ["bsub", "-cwd", cwd, "-J", job_name, "-o", output]


def parse_submit(stdout: str) -> str:
    """The id in ``Job <1234> is submitted to queue <batch>.``."""
    match = re.search(r"Job <(\d+)> is submitted", stdout)
    if not match:
        raise ParseError(f"bsub printed no job id: {stdout.strip()[:200]!r}")
    return match.group(1)


def status_argv(user: str) -> list[str]:
    """``bjobs -u USER -json -o FIELDS`` (unfinished jobs and those ended within
    ``CLEAN_PERIOD``)."""
    return ["bjobs", "-u", user, "-json", "-o", " ".join(FIELDS)]


def _int(value: Any) -> Optional[int]:
    text = str(value).strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def _job(record: dict[str, Any]) -> BatchJobStatus:
    get = {key.lower(): str(value).strip() for key, value in record.items()}.get
    word = get("stat", "")
    state = STATE_MAP.get(word, "unknown")
    code = _int(get("exit_code", ""))
    if state == "finished" and code is None:
        code = 0
    limit = get("runtimelimit", "").split("/")[0]  # "60.0/batch1": minutes, then a host
    return BatchJobStatus(
        get("jobid", ""), state, word, queue=get("queue", ""), nodes=_int(get("nexec_host", "")),
        wall_minutes=minutes_or_none(limit),
        minutes_left=minutes_or_none(get("time_left", ""), pair="hh:mm"),
        project=get("proj_name", ""), name=get("job_name", ""), owner=get("user", ""),
        exit_code=code if state in ("finished", "failed") else None)


def parse_status(stdout: str) -> dict[str, BatchJobStatus]:
    """Jobs in ``bjobs -json`` output; records carrying an ``ERROR`` (an unknown id) are
    skipped, and no output means no jobs."""
    if not stdout.strip():
        return {}
    try:
        data = json.loads(stdout, strict=False)
    except ValueError as exc:
        raise ParseError(f"bjobs printed invalid JSON ({exc})")
    records = data.get("RECORDS") if isinstance(data, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ParseError("bjobs JSON has no list of job records under 'RECORDS'")
    jobs = [_job(r) for r in records if "ERROR" not in r]
    if any(not job.scheduler_id for job in jobs):
        raise ParseError("a bjobs record has no JOBID")
    return {job.scheduler_id: job for job in jobs}


def cancel_argv(scheduler_id: str) -> list[str]:
    """``bkill ID``."""
    return ["bkill", scheduler_id]


def _bjobs(argv: list[str], timeout: float) -> dict[str, BatchJobStatus]:
    """Run a ``bjobs`` listing; "no job found" with a non-zero exit is an empty answer."""
    result = cmd.run(argv, timeout, check=False)
    if result.returncode != 0 and not any(m in result.stderr + result.stdout for m in NO_JOBS):
        reason = cmd.first_line(result.stderr) or cmd.first_line(result.stdout) or "no output"
        raise CommandFailed(f"`{cmd.describe(argv)}` failed with exit status {result.returncode}: "
                            f"{reason}", result.returncode, result.stdout, result.stderr)
    return parse_status(result.stdout if result.stdout.lstrip().startswith("{") else "")


def submit(script: str, cwd: str, job_name: str, output: str,
           timeout: float = COMMAND_TIMEOUT) -> str:
    """Submit ``script`` (read and given on stdin); its LSF job id."""
    try:
        with open(script) as fh:
            text = fh.read()
    except OSError as exc:
        raise SchedulerError(f"cannot read job script {script}: {exc.strerror or exc}")
    argv = submit_argv(script, cwd, job_name, output)
    return parse_submit(cmd.run(argv, timeout, input=text, cwd=cwd).stdout)


def status(user: str, timeout: float = COMMAND_TIMEOUT) -> dict[str, BatchJobStatus]:
    """``user``'s jobs: queued, running, and those ended within ``CLEAN_PERIOD``."""
    return _bjobs(status_argv(user), timeout)


def cancel(scheduler_id: str, timeout: float = COMMAND_TIMEOUT) -> None:
    """``bkill``; a job that has already ended is not an error."""
    cmd.cancel(cancel_argv(scheduler_id), GONE, timeout)


def final_status(scheduler_id: str, timeout: float = COMMAND_TIMEOUT) -> Optional[BatchJobStatus]:
    """The job as ``bjobs`` still lists it, or None once LSF has forgotten it."""
    argv = ["bjobs", "-json", "-o", " ".join(FIELDS), scheduler_id]
    return _bjobs(argv, timeout).get(scheduler_id)
