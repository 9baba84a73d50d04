"""The allocation a launcher runs in: which nodes, cores and GPUs it holds, and until when.

:func:`detect` normalises the scheduler's environment once into an :class:`Allocation`; the
launcher reads only that record, never ``SLURM_*``/``PBS_*`` variables. Detection order:
Slurm, PBS, Cobalt, LSF, else the local machine. Only the ``env`` mapping passed in is read
(callers pass ``os.environ``), and only commands given to ``run`` are executed.

Hosts of the local machine: ``local_nodes`` emulated nodes, every one named after this machine
(``socket.gethostname()``), so ``hosts`` may repeat. The launcher addresses nodes by index and
the MPI flavours receive real host names (``mpiexec -hosts vm,vm`` runs both ranks here).

Cores per node come from the caller (the DB's ``settings.yml`` machine profile) and default to
``os.cpu_count()``; GPUs per node come from the caller only. ``BALSAM_ALLOCATION_END`` (epoch
seconds) overrides the end time under every scheduler.
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from balsam.errors import BalsamError
from balsam.platform import hostlist

SCHEDULERS = ("local", "slurm", "pbs", "cobalt", "lsf")
LOOKUP_TIMEOUT = 10.0
"""Seconds a scheduler query (``squeue``, ``qstat``) may take before the end time is unknown."""

CommandRunner = Callable[[Sequence[str], float], Optional[str]]
"""Runs an argv with a timeout in seconds; returns its stdout, or None if it failed."""


class AllocationError(BalsamError):
    """The scheduler's environment does not describe a usable allocation."""


@dataclass(frozen=True)
class Allocation:
    """The nodes of one batch job (or of this machine), normalised.

    ``hosts`` has one entry per node, in scheduler order; ``end_time`` is in epoch seconds, None
    when there is no limit. ``scheduler_id`` is the batch job id ("" on the local machine).
    """

    hosts: tuple[str, ...]
    cores_per_node: int
    gpus_per_node: int
    scheduler: str
    scheduler_id: str
    end_time: Optional[float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "hosts", tuple(self.hosts))
        if not self.hosts or not all(self.hosts):
            raise AllocationError("an allocation needs at least one node, each with a host name")
        if self.cores_per_node < 1 or self.gpus_per_node < 0:
            raise AllocationError(f"cores_per_node must be >= 1 and gpus_per_node >= 0, not "
                                  f"{self.cores_per_node} and {self.gpus_per_node}")
        if self.scheduler not in SCHEDULERS:
            raise AllocationError(f"unknown scheduler {self.scheduler!r} (one of "
                                  f"{', '.join(SCHEDULERS)})")

    @property
    def num_nodes(self) -> int:
        """Number of nodes (entries of ``hosts``)."""
        return len(self.hosts)

    def remaining_seconds(self, now: float) -> float:
        """Seconds left at epoch time ``now``: never negative, ``math.inf`` without a limit."""
        if self.end_time is None:
            return math.inf
        return max(0.0, self.end_time - now)

    def sliced(self, offset: int = 0, limit: Optional[int] = None) -> Allocation:
        """The same allocation restricted to nodes ``offset .. offset+limit-1``
        (``--offset-nodes``/``--limit-nodes``; ``limit`` None means all the rest).

        Raises :class:`AllocationError` if ``offset`` is negative or leaves no node, or if
        ``limit`` is below 1 or asks for more nodes than remain after ``offset``.
        """
        if offset < 0 or offset >= self.num_nodes:
            raise AllocationError(f"--offset-nodes {offset} is out of range: the allocation has "
                                  f"{self.num_nodes} node(s), so it must be 0..{self.num_nodes - 1}")
        available = self.num_nodes - offset
        if limit is not None and not 1 <= limit <= available:
            raise AllocationError(f"--limit-nodes {limit} is out of range: {available} node(s) "
                                  f"remain after --offset-nodes {offset} (allocation of "
                                  f"{self.num_nodes})")
        end = self.num_nodes if limit is None else offset + limit
        return Allocation(self.hosts[offset:end], self.cores_per_node, self.gpus_per_node,
                          self.scheduler, self.scheduler_id, self.end_time)


def run_command(argv: Sequence[str], timeout: float) -> Optional[str]:
    """Run ``argv`` (no shell) for at most ``timeout`` seconds; its stdout if it exited 0, else
    None (missing program, non-zero status, timeout)."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def parse_duration(text: str) -> Optional[float]:
    """Seconds in ``[D-]HH:MM:SS``, ``MM:SS`` or ``SS`` (Slurm ``%L``, PBS walltime); None
    for anything else (``UNLIMITED``, ``NOT_SET``, ``INVALID``, garbage)."""
    days, _, clock = text.strip().rpartition("-")
    fields = clock.split(":")
    if len(fields) > 3 or not all(f.isdigit() for f in fields) or (days and not days.isdigit()):
        return None
    seconds = 0
    for field in fields:
        seconds = seconds * 60 + int(field)
    return float(seconds + int(days or 0) * 86400)


def _epoch(env: Mapping[str, str], name: str) -> Optional[float]:
    """The epoch-seconds variable ``name``: None if unset or <= 0; garbled -> error."""
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise AllocationError(f"{name}={value!r} is not a time in epoch seconds")
    if not math.isfinite(seconds):
        raise AllocationError(f"{name}={value!r} is not a time in epoch seconds")
    return seconds if seconds > 0 else None


def _query(run: CommandRunner, argv: Sequence[str]) -> Optional[str]:
    """``run(argv)``; any failure of the runner itself counts as no answer."""
    try:
        return run(argv, LOOKUP_TIMEOUT)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _unique(hosts: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(hosts))


def _read_hosts(env: Mapping[str, str], name: str) -> list[str]:
    """Unique host names, in order, from the node file named by variable ``name`` (any
    whitespace or commas between names; one line per core/slot is fine)."""
    path = env.get(name, "")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise AllocationError(f"{name}={path!r} cannot be read: {exc.strerror or exc}")
    hosts = _unique(text.replace(",", " ").split())
    if not hosts:
        raise AllocationError(f"{name}={path!r} lists no hosts")
    return hosts


def _slurm(env: Mapping[str, str], now: float, run: CommandRunner) -> tuple[list[str], Optional[float]]:
    name = "SLURM_JOB_NODELIST" if "SLURM_JOB_NODELIST" in env else "SLURM_NODELIST"
    if name not in env:
        raise AllocationError("SLURM_JOB_ID is set but SLURM_JOB_NODELIST is not")
    try:
        hosts = hostlist.expand(env[name])
    except ValueError as exc:
        raise AllocationError(f"{name}={env[name]!r} is not a Slurm host list: {exc}")
    end = _epoch(env, "SLURM_JOB_END_TIME")
    if end is None:
        # %L (time left) rather than %e (end time): %e is printed in squeue's local time
        # without a zone, which a process with another TZ would misread.
        out = _query(run, ["squeue", "-h", "-j", env["SLURM_JOB_ID"], "-o", "%L"])
        left = parse_duration(out.strip().splitlines()[0]) if out and out.strip() else None
        end = None if left is None else now + left
    return _unique(hosts), end


def _pbs(env: Mapping[str, str], now: float, run: CommandRunner) -> tuple[list[str], Optional[float]]:
    if not env.get("PBS_NODEFILE"):
        raise AllocationError("PBS_JOBID is set but PBS_NODEFILE is not")
    hosts = _read_hosts(env, "PBS_NODEFILE")
    # PBS exports no end time; PBS Pro's `qstat -f -F json` gives the walltime asked for and
    # used so far (updated every few minutes, so the estimate errs on the short side).
    out = _query(run, ["qstat", "-f", "-F", "json", env["PBS_JOBID"]])
    try:
        jobs = json.loads(out or "{}").get("Jobs", {})
        (job,) = jobs.values()
        limit = parse_duration(job["Resource_List"]["walltime"])
        used = parse_duration(job.get("resources_used", {}).get("walltime", "0")) or 0.0
    except (ValueError, KeyError, TypeError, AttributeError):
        return hosts, None
    return hosts, None if limit is None else now + max(0.0, limit - used)


def _cobalt(env: Mapping[str, str]) -> tuple[list[str], Optional[float]]:
    end = _epoch(env, "COBALT_ENDTIME")
    if env.get("COBALT_NODEFILE"):
        return _read_hosts(env, "COBALT_NODEFILE"), end
    partname = env.get("COBALT_PARTNAME", "")
    if not partname:
        raise AllocationError("COBALT_JOBID is set but neither COBALT_NODEFILE nor "
                              "COBALT_PARTNAME is")
    try:
        nids = hostlist.expand(f"[{partname}]")  # Cobalt writes "1001-1005,1030" (Theta nids)
    except ValueError as exc:
        raise AllocationError(f"COBALT_PARTNAME={partname!r} is not a list of node ids: {exc}")
    return _unique([f"nid{int(n):05d}" for n in nids]), end


def _lsf(env: Mapping[str, str]) -> list[str]:
    if env.get("LSB_DJOB_HOSTFILE"):
        hosts = _read_hosts(env, "LSB_DJOB_HOSTFILE")
    elif env.get("LSB_MCPU_HOSTS"):
        words = env["LSB_MCPU_HOSTS"].split()
        if len(words) % 2 or not all(w.isdigit() for w in words[1::2]):
            raise AllocationError(f"LSB_MCPU_HOSTS={env['LSB_MCPU_HOSTS']!r} is not "
                                  "'host slots host slots ...'")
        hosts = _unique(words[0::2])
    else:
        raise AllocationError("LSB_JOBID is set but neither LSB_DJOB_HOSTFILE nor "
                              "LSB_MCPU_HOSTS is")
    # The first host is the launch node running the batch script (Summit's `batch*` node);
    # a single-host job keeps it, since there it is the only node.
    return hosts[1:] if len(hosts) > 1 else hosts


def detect(env: Mapping[str, str], cores_per_node: int = 0, gpus_per_node: int = 0,
           local_nodes: int = 1, now: Optional[float] = None,
           run: CommandRunner = run_command) -> Allocation:
    """The allocation described by ``env`` (callers pass ``os.environ``).

    ``cores_per_node`` <= 0 means ``os.cpu_count()``; ``local_nodes`` is the number of nodes to
    emulate outside a batch job; ``now`` (epoch seconds, default the current time) anchors end
    times derived from a time-left answer; ``run`` executes scheduler queries (``squeue``,
    ``qstat``), whose failure leaves the end time None. Raises :class:`AllocationError` naming
    the variable when a node list is missing, empty or malformed.
    """
    now = time.time() if now is None else now
    cores = cores_per_node if cores_per_node > 0 else (os.cpu_count() or 1)
    end: Optional[float]
    if env.get("SLURM_JOB_ID"):
        scheduler, job_id = "slurm", env["SLURM_JOB_ID"]
        hosts, end = _slurm(env, now, run)
    elif env.get("PBS_JOBID"):
        scheduler, job_id = "pbs", env["PBS_JOBID"]
        hosts, end = _pbs(env, now, run)
    elif env.get("COBALT_JOBID"):
        scheduler, job_id = "cobalt", env["COBALT_JOBID"]
        hosts, end = _cobalt(env)
    elif env.get("LSB_JOBID"):
        scheduler, job_id, end = "lsf", env["LSB_JOBID"], None
        hosts = _lsf(env)
    else:
        if local_nodes < 1:
            raise AllocationError(f"local_nodes must be >= 1, not {local_nodes}")
        scheduler, job_id, end = "local", "", None
        hosts = [socket.gethostname()] * local_nodes
    override = _epoch(env, "BALSAM_ALLOCATION_END")
    return Allocation(tuple(hosts), cores, gpus_per_node, scheduler, job_id,
                      override if override is not None else end)
