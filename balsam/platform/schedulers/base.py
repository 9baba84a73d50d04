"""The records and errors every scheduler plug-in shares: normalised states, :class:`BatchJobStatus`,
the :class:`Scheduler` protocol and the :class:`SchedulerError` family (re-exported by the
package, where :func:`balsam.platform.schedulers.get` loads the plug-ins, which import this
module and never the package that loads them)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

from balsam.errors import BalsamError

SCHEDULERS = ("local", "slurm", "pbs", "cobalt", "lsf")
"""Valid names for the ``scheduler`` setting, one module each in this package."""

STATES = ("queued", "running", "finishing", "finished", "failed", "cancelled", "held", "unknown")
FINAL_STATES = frozenset({"finished", "failed", "cancelled"})
ACTIVE_STATES = frozenset({"queued", "running", "finishing", "held"})
"""States in which a batch job still holds (or waits for) an allocation."""

DIRECTIVES = {"local": "#", "slurm": "#SBATCH", "pbs": "#PBS", "cobalt": "#COBALT", "lsf": "#BSUB"}
"""The job-script directive prefix of each scheduler (``local`` has none: a plain comment)."""

COMMAND_TIMEOUT = 60.0
"""Seconds a scheduler command may take. Generous: ``sbatch``/``qsub`` on a busy login node
routinely take several seconds, but a hung controller must never hang the service."""


class SchedulerError(BalsamError):
    """A scheduler command failed, hung or printed something we cannot read (one-line message)."""


class UnknownScheduler(SchedulerError):
    """A scheduler name that no plug-in implements."""


class CommandNotFound(SchedulerError):
    """The scheduler's command is not installed or not on PATH."""


class CommandTimeout(SchedulerError):
    """The command did not finish within its timeout (it was killed). A timed-out submit may
    still have queued the job, so callers must not blindly retry a submission."""


class CommandFailed(SchedulerError):
    """The command exited non-zero; ``returncode``, ``stdout`` and ``stderr`` are kept."""

    def __init__(self, message: str, returncode: int = 1, stdout: str = "", stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class ParseError(SchedulerError):
    """The command succeeded but its output is not in the format the plug-in asked for."""


@dataclass(frozen=True)
class BatchJobStatus:
    """One batch job as the scheduler reports it, normalised.

    ``state`` is one of :data:`STATES`; ``raw_state`` is the scheduler's own word (``PENDING``,
    ``Q``, ``user_hold``, ``PSUSP``...). ``wall_minutes`` is the requested limit and
    ``minutes_left`` the time remaining (None: unlimited, not started or not reported).
    ``nodes`` is None when not reported. ``exit_code`` is set only for finished jobs whose
    scheduler reports one (a negative value -N: killed by signal N).
    """

    scheduler_id: str
    state: str
    raw_state: str
    queue: str = ""
    nodes: Optional[int] = None
    wall_minutes: Optional[float] = None
    minutes_left: Optional[float] = None
    project: str = ""
    name: str = ""
    owner: str = ""
    exit_code: Optional[int] = None

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"unknown normalised state {self.state!r} (one of {', '.join(STATES)})")

    @property
    def is_final(self) -> bool:
        """True once the job has ended (finished, failed or cancelled)."""
        return self.state in FINAL_STATES


def normalise(raw: str, state_map: dict[str, str]) -> str:
    """The normalised state for the scheduler word ``raw`` (``unknown`` if not in the map)."""
    return state_map.get(raw.strip(), "unknown")


class Scheduler(Protocol):
    """What :func:`get` returns: the calls the service makes. All raise :class:`SchedulerError`
    subclasses with a one-line message; none hangs longer than ``timeout`` seconds."""

    NAME: str

    def submit(self, script: str, cwd: str, job_name: str, output: str,
               timeout: float = COMMAND_TIMEOUT) -> str:
        """Submit the job script at ``script`` (its directives carry nodes, walltime, queue and
        project), started in ``cwd``, named ``job_name``, stdout and stderr to ``output``
        (Cobalt: ``<output without its extension>.output``). Returns the scheduler's job id."""
        ...

    def status(self, user: str, timeout: float = COMMAND_TIMEOUT) -> dict[str, BatchJobStatus]:
        """Every batch job of ``user`` the scheduler lists, by id. Ended jobs usually vanish;
        some schedulers list them for a while in a final state: treat both alike."""
        ...

    def cancel(self, scheduler_id: str, timeout: float = COMMAND_TIMEOUT) -> None:
        """Ask the scheduler to end the job (queued or running)."""
        ...

    def final_status(self, scheduler_id: str,
                     timeout: float = COMMAND_TIMEOUT) -> Optional[BatchJobStatus]:
        """How a job that left the queue ended, if the scheduler still knows; else None."""
        ...
