"""Slurm: ``sbatch --parsable``, ``squeue`` with explicit fields, ``scancel``, and final states
from ``sacct`` (needs slurmdbd) or else ``scontrol show job`` (kept ``MinJobAge`` seconds).

``squeue`` prints our fields separated by ``|`` with the job name last, and the parser splits
at most 8 times, so a name containing ``|`` cannot shift the other columns (no other field can
contain one). States: ``man squeue`` (JOB STATE CODES), Slurm 22-24.
"""
from __future__ import annotations

import re
from typing import Optional

from balsam.platform.schedulers import command as cmd
from balsam.platform.schedulers.base import COMMAND_TIMEOUT, BatchJobStatus, CommandFailed, ParseError
from balsam.platform.schedulers.walltime import minutes_or_none

NAME = "slurm"
SEP = "|"
FIELDS = ("%i", "%T", "%P", "%D", "%l", "%L", "%a", "%u", "%j")
"""id, state, partition, nodes, time limit, time left, account, user, name (last)."""

STATE_MAP = {
    "PENDING": "queued", "REQUEUED": "queued", "REQUEUE_FED": "queued",
    "RUNNING": "running", "CONFIGURING": "running", "RESIZING": "running",
    "SIGNALING": "running",
    "COMPLETING": "finishing", "STAGE_OUT": "finishing",
    "SUSPENDED": "held", "STOPPED": "held", "REQUEUE_HOLD": "held", "RESV_DEL_HOLD": "held",
    "SPECIAL_EXIT": "held",
    "COMPLETED": "finished",
    "FAILED": "failed", "TIMEOUT": "failed", "NODE_FAIL": "failed", "BOOT_FAIL": "failed",
    "OUT_OF_MEMORY": "failed", "DEADLINE": "failed", "PREEMPTED": "failed",
    "CANCELLED": "cancelled", "REVOKED": "cancelled",
}
"""Slurm's long state names -> normalised states. CONFIGURING holds its nodes (they boot), so
it counts as running; PREEMPTED without requeue ends the job."""

GONE = ("Invalid job id specified", "already completing or completed")
"""``scancel`` messages meaning the job has already ended (cancel is idempotent)."""


def submit_argv(script: str, cwd: str, job_name: str, output: str) -> list[str]:
    """``sbatch --parsable``: nodes, time, partition and account come from ``#SBATCH`` lines."""
    return ["sbatch", "--parsable", "--chdir", cwd, "--job-name", job_name, "--output", output,
            script]


def parse_submit(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` (``123`` or ``123;cluster``)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    job_id = lines[-1].split(";")[0] if lines else ""
    if not re.fullmatch(r"\d+(_\d+)?", job_id):
        raise ParseError(f"sbatch printed no job id: {stdout.strip()[:200]!r}")
    return job_id


def status_argv(user: str) -> list[str]:
    """``squeue`` for ``user``'s jobs, no header, our fields."""
    return ["squeue", "--noheader", "--user", user, "--format", SEP.join(FIELDS)]


def _state(raw: str) -> tuple[str, str]:
    """(normalised, raw) for a state word as squeue, sacct (``CANCELLED by 0``, ``FAILED+``)
    or scontrol print it."""
    word = raw.strip().split(" ")[0].rstrip("+") if raw.strip() else ""
    return STATE_MAP.get(word, "unknown"), word


def _count(text: str) -> Optional[int]:
    return int(text) if text.strip().isdigit() else None


def _text(value: str) -> str:
    """Slurm prints ``(null)`` for an unset account."""
    return "" if value.strip() in ("(null)", "N/A") else value.strip()


def parse_status(stdout: str) -> dict[str, BatchJobStatus]:
    """Jobs in ``squeue`` output made by :func:`status_argv` (blank lines and a header ignored)."""
    jobs: dict[str, BatchJobStatus] = {}
    for number, line in enumerate(stdout.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(SEP, len(FIELDS) - 1)
        if fields[0].strip() == "JOBID":
            continue
        if len(fields) != len(FIELDS) or not fields[0].strip():
            raise ParseError(f"squeue line {number} is not {len(FIELDS)} '{SEP}'-separated fields: "
                             f"{line[:200]!r}")
        job_id, raw, part, nodes, limit, left, account, user, name = fields
        state, word = _state(raw)
        jobs[job_id.strip()] = BatchJobStatus(
            job_id.strip(), state, word, queue=part.strip(), nodes=_count(nodes),
            wall_minutes=minutes_or_none(limit), minutes_left=minutes_or_none(left),
            project=_text(account), name=name.strip(), owner=user.strip())
    return jobs


def cancel_argv(scheduler_id: str) -> list[str]:
    """``scancel ID``."""
    return ["scancel", scheduler_id]


def _exit_code(text: str) -> Optional[int]:
    """``CODE:SIGNAL`` -> CODE, or -SIGNAL when a signal ended the job."""
    match = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if not match:
        return None
    code, sig = int(match.group(1)), int(match.group(2))
    return -sig if sig and not code else code


def sacct_argv(scheduler_id: str) -> list[str]:
    """``sacct`` for one job's allocation line: ``ID|STATE|CODE:SIGNAL``."""
    return ["sacct", "-X", "-n", "-P", "-j", scheduler_id, "-o", "JobID,State,ExitCode"]


def parse_sacct(stdout: str, scheduler_id: str) -> Optional[BatchJobStatus]:
    """The final record of ``scheduler_id`` in :func:`sacct_argv` output (None if absent)."""
    for line in stdout.splitlines():
        fields = line.strip().split("|")
        if len(fields) >= 3 and fields[0] == scheduler_id:
            state, word = _state(fields[1])
            return BatchJobStatus(scheduler_id, state, word, exit_code=_exit_code(fields[2]))
    return None


def scontrol_argv(scheduler_id: str) -> list[str]:
    """``scontrol show job ID`` (one ``Key=Value`` record; ``-o`` would put it on one line)."""
    return ["scontrol", "show", "job", scheduler_id]


def parse_scontrol(stdout: str) -> Optional[BatchJobStatus]:
    """The job in ``scontrol show job`` output, or None if there is none."""
    pairs = dict(re.findall(r"(?:^|\s)([A-Za-z/:]+)=(\S*)", stdout))
    if "JobId" not in pairs or "JobState" not in pairs:
        return None
    state, word = _state(pairs["JobState"])
    owner = pairs.get("UserId", "").split("(")[0]
    return BatchJobStatus(pairs["JobId"], state, word, queue=pairs.get("Partition", ""),
                          nodes=_count(pairs.get("NumNodes", "")),
                          wall_minutes=minutes_or_none(pairs.get("TimeLimit", "")),
                          project=_text(pairs.get("Account", "")), name=pairs.get("JobName", ""),
                          owner=owner, exit_code=_exit_code(pairs.get("ExitCode", "")))


def submit(script: str, cwd: str, job_name: str, output: str,
           timeout: float = COMMAND_TIMEOUT) -> str:
    """Submit ``script``; its Slurm job id."""
    return parse_submit(cmd.run(submit_argv(script, cwd, job_name, output), timeout).stdout)


def status(user: str, timeout: float = COMMAND_TIMEOUT) -> dict[str, BatchJobStatus]:
    """``user``'s jobs in the queue (pending, running, completing...)."""
    return parse_status(cmd.run(status_argv(user), timeout).stdout)


def cancel(scheduler_id: str, timeout: float = COMMAND_TIMEOUT) -> None:
    """``scancel``; a job that has already ended is not an error."""
    cmd.cancel(cancel_argv(scheduler_id), GONE, timeout)


def final_status(scheduler_id: str, timeout: float = COMMAND_TIMEOUT) -> Optional[BatchJobStatus]:
    """How a job that left squeue ended: ``sacct`` if accounting works, else ``scontrol``
    (which forgets jobs ``MinJobAge`` seconds after they end); None when neither knows."""
    try:
        found = parse_sacct(cmd.run(sacct_argv(scheduler_id), timeout).stdout, scheduler_id)
        if found is not None:
            return found
    except CommandFailed:
        pass  # "Slurm accounting storage is disabled"
    try:
        return parse_scontrol(cmd.run(scontrol_argv(scheduler_id), timeout).stdout)
    except CommandFailed:
        return None  # "Invalid job id specified": purged
