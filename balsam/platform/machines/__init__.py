"""Machine profiles shipped as data: ``<name>.json`` plus a job template ``<name>.template.sh``.

A profile names the batch scheduler and MPI flavour, cores and GPUs per node (0: detect on the
node), default queue and project hints, whether the site requires a project (allocation) on
every batch job (``project_required``; where it does not, the scheduler's ``-A`` is optional
and a job without one is charged to the user's default account), the queue policies the
service plans within, and its job template. :func:`load` validates a profile and names the
bad key; :func:`render` fills a template's ``{{ name }}`` placeholders (nothing else: no
expressions, no loops), refusing unknown placeholders and missing values;
:func:`template_values` computes the values for one batch job from plain arguments,
shell-quoting what lands in shell code.

Queue policy keys (all whole numbers): ``min_nodes``/``max_nodes`` and
``min_minutes``/``max_minutes`` (the node and walltime range of one batch job),
``max_queued`` and ``max_running`` (batch jobs waiting / running at once; 0 disables the
queue) and ``max_total_nodes`` (cap on the nodes of all our queued and running jobs).
"""
from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Optional

from balsam.errors import BalsamError
from balsam.platform.mpi import FLAVOURS
from balsam.platform.schedulers import DIRECTIVES, SCHEDULERS
from balsam.platform.schedulers.walltime import format_minutes

HERE = os.path.dirname(os.path.abspath(__file__))
SUFFIX = ".json"
PROFILE_KEYS = ("description", "scheduler", "mpi", "cores_per_node", "gpus_per_node",
                "default_queue", "default_project", "project_required", "queues", "template")
PLACEHOLDERS = ("project", "project_directive", "queue", "nodes", "time_minutes", "walltime",
                "launcher_minutes", "job_mode", "wf_filter_flag", "sched_flags", "balsam_bin",
                "python", "db_path", "gpus_per_node")
"""Every name a job template may use (``walltime`` is ``time_minutes`` as HH:MM:SS;
``project_directive`` is the scheduler's project directive line, a comment without a project)."""
PROJECT_DIRECTIVES = {"local": "# project {}", "slurm": "#SBATCH --account={}", "pbs": "#PBS -A {}",
                      "cobalt": "#COBALT -A {}", "lsf": "#BSUB -P {}"}
"""How each scheduler's job script names the project (``{}``)."""
JOB_MODES = ("mpi", "serial")
LAUNCHER_BODY = "launcher-body.sh"
"""The shared end of every job template (see :meth:`Machine.template_text`)."""
LAUNCHER_MARGIN_MINUTES = 2.0
"""The launcher stops this long before the walltime (a fifth of it for jobs under 10 min)."""

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_WORD = re.compile(r"[\w.@:+/=,-]*")


class MachineError(BalsamError):
    """An unknown machine, a malformed profile or queue policy, or a template that cannot be
    rendered (one line naming the key, placeholder or value)."""


@dataclass(frozen=True)
class QueuePolicy:
    """Limits on the batch jobs the service may submit to one queue (module docstring)."""

    min_nodes: int
    max_nodes: int
    min_minutes: int
    max_minutes: int
    max_queued: int
    max_running: int
    max_total_nodes: int


@dataclass(frozen=True)
class Machine:
    """One machine profile; ``template`` is the job template's file name beside the profile."""

    name: str
    description: str
    scheduler: str
    mpi: str
    cores_per_node: int
    gpus_per_node: int
    default_queue: str
    default_project: str
    project_required: bool
    queues: dict[str, QueuePolicy]
    template: str

    @property
    def template_path(self) -> str:
        return os.path.join(HERE, self.template)

    def template_text(self) -> str:
        """The job template's text: the profile's own part (directives, site set-up) followed
        by :data:`LAUNCHER_BODY`, the part every job script shares (environment, the launcher
        in the background, signal forwarding). ``balsam init`` writes the whole text into the
        DB's ``job-template.sh``, where a user may edit any of it."""
        with open(self.template_path) as fh:
            head = fh.read()
        with open(os.path.join(HERE, LAUNCHER_BODY)) as fh:
            return head + fh.read()

    def queue_settings(self) -> dict[str, dict[str, int]]:
        """The queue policies as plain mappings (for ``settings.yml``)."""
        return {name: asdict(policy) for name, policy in self.queues.items()}


def names() -> list[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(f[:-len(SUFFIX)] for f in os.listdir(HERE) if f.endswith(SUFFIX))


def _whole(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MachineError(f"{where} must be a whole number >= {minimum}, not {value!r}")
    return value


def validate_queues(raw: Any, where: str) -> dict[str, QueuePolicy]:
    """Queue policies from a mapping ``{queue: {key: int}}``; errors name ``where`` and the key."""
    if not isinstance(raw, dict) or not raw:
        raise MachineError(f"{where}: `queues` must be a non-empty mapping of queue names to policies")
    fields = tuple(QueuePolicy.__dataclass_fields__)
    policies = {}
    for queue, policy in raw.items():
        key = f"{where}: `queues.{queue}`"
        if not isinstance(queue, str) or not _WORD.fullmatch(queue) or not queue:
            raise MachineError(f"{where}: bad queue name {queue!r}")
        if not isinstance(policy, dict):
            raise MachineError(f"{key} must be a mapping of {', '.join(fields)}")
        unknown = sorted(set(map(str, policy)) - set(fields))
        missing = [f for f in fields if f not in policy]
        if unknown or missing:
            raise MachineError(f"{key}: unknown key `{unknown[0]}`" if unknown else
                               f"{key}: missing key `{missing[0]}`")
        values = {f: _whole(policy[f], f"{key}.{f}", 0 if f.startswith("max_") else 1)
                  for f in fields}
        for low, high in (("min_nodes", "max_nodes"), ("min_minutes", "max_minutes"),
                          ("min_nodes", "max_total_nodes")):
            if values[low] > values[high]:
                raise MachineError(f"{key}.{high} ({values[high]}) is below {low} ({values[low]})")
        policies[queue] = QueuePolicy(**values)
    return policies


def parse(raw: Any, name: str, where: str) -> Machine:
    """A :class:`Machine` from the decoded JSON ``raw``; errors name ``where`` and the key."""
    if not isinstance(raw, dict):
        raise MachineError(f"{where} must hold a JSON object")
    for key in raw:
        if key not in PROFILE_KEYS:
            raise MachineError(f"{where}: unknown key `{key}` (known: {', '.join(PROFILE_KEYS)})")
    for key in PROFILE_KEYS:
        if key not in raw:
            raise MachineError(f"{where}: missing key `{key}`")
    for key in ("description", "default_queue", "default_project", "template"):
        if not isinstance(raw[key], str):
            raise MachineError(f"{where}: `{key}` must be a string")
    if not isinstance(raw["project_required"], bool):
        raise MachineError(f"{where}: `project_required` must be true or false")
    if raw["scheduler"] not in SCHEDULERS:
        raise MachineError(f"{where}: `scheduler` must be one of {', '.join(SCHEDULERS)}, "
                           f"not {raw['scheduler']!r}")
    if raw["mpi"] not in FLAVOURS:
        raise MachineError(f"{where}: `mpi` must be one of {', '.join(FLAVOURS)}, not {raw['mpi']!r}")
    queues = validate_queues(raw["queues"], where)
    if raw["default_queue"] not in queues:
        raise MachineError(f"{where}: `default_queue` {raw['default_queue']!r} is not in `queues`")
    if os.path.basename(raw["template"]) != raw["template"] or not raw["template"]:
        raise MachineError(f"{where}: `template` must be a file name beside the profile")
    return Machine(name, raw["description"], raw["scheduler"], raw["mpi"],
                   _whole(raw["cores_per_node"], f"{where}: `cores_per_node`", 0),
                   _whole(raw["gpus_per_node"], f"{where}: `gpus_per_node`", 0),
                   raw["default_queue"], raw["default_project"], raw["project_required"], queues,
                   raw["template"])


def load(name: str) -> Machine:
    """The shipped profile ``name``; an unknown name's error lists the known ones."""
    known = names()
    if name not in known:
        raise MachineError(f"unknown machine {name!r} (one of {', '.join(known)})")
    path = os.path.join(HERE, name + SUFFIX)
    try:
        with open(path) as fh:
            raw = json.load(fh)
    except (OSError, ValueError) as exc:
        raise MachineError(f"cannot read machine profile {path}: {exc}")
    machine = parse(raw, name, f"machine profile {name}{SUFFIX}")
    if not os.path.isfile(machine.template_path):
        raise MachineError(f"machine profile {name}: template {machine.template} is missing")
    return machine


def render(template_text: str, values: dict[str, Any]) -> str:
    """``template_text`` with every ``{{ name }}`` replaced by ``str(values[name])``.

    Names must be in :data:`PLACEHOLDERS` and have a value; ``values`` may hold no other key;
    a value may not contain a newline (it could inject a directive or command). A ``{{`` that
    is not a well-formed placeholder is an error too. Substituted text is not scanned again.
    """
    for key, value in values.items():
        if key not in PLACEHOLDERS:
            raise MachineError(f"unknown template value {key!r} (known: {', '.join(PLACEHOLDERS)})")
        if "\n" in str(value) or "\r" in str(value) or "\0" in str(value):
            raise MachineError(f"template value {key} may not contain a newline: {value!r}")
    for number, line in enumerate(template_text.splitlines(), 1):
        for match in re.finditer(r"\{\{.*?(\}\}|$)", line):
            placeholder = _PLACEHOLDER.fullmatch(match.group(0))
            if not placeholder:
                raise MachineError(f"template line {number}: malformed placeholder "
                                   f"{match.group(0)!r} (use {{{{ name }}}})")
            name = placeholder.group(1)
            if name not in PLACEHOLDERS:
                raise MachineError(f"template line {number}: unknown placeholder {{{{ {name} }}}} "
                                   f"(known: {', '.join(PLACEHOLDERS)})")
            if name not in values:
                raise MachineError(f"template line {number}: no value given for {{{{ {name} }}}}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template_text)


def check_project_lines(template_text: str, machine: Machine, project: str, where: str) -> None:
    """Without a ``project``, refuse a template (e.g. one written before ``project_directive``
    existed) whose scheduler directive passes ``{{ project }}``: the directive would be empty."""
    if project or machine.scheduler == "local":
        return
    for number, line in enumerate(template_text.splitlines(), 1):
        if line.startswith(DIRECTIVES[machine.scheduler]) and re.search(r"\{\{\s*project\s*\}\}", line):
            raise MachineError(f"{where} line {number} passes {{{{ project }}}} to the scheduler but "
                               "no project is set: set `project` in settings.yml, or write "
                               "{{ project_directive }} there (left out without a project)")


def launcher_minutes(time_minutes: float) -> float:
    """The launcher's time limit for a batch job of ``time_minutes``."""
    margin = LAUNCHER_MARGIN_MINUTES if time_minutes >= 10 else time_minutes / 5
    return round(time_minutes - margin, 1)


def template_values(machine: Machine, *, project: str, queue: str, nodes: int,
                    time_minutes: int, job_mode: str, db_path: str, balsam_bin: str,
                    python: str, wf_filter: Optional[str] = None,
                    sched_flags: str = "",
                    filter_tags: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The :func:`render` values for one batch job on ``machine``.

    ``wf_filter`` None runs every workflow (``--consume-all``); ``filter_tags`` adds one
    ``--tag KEY=VALUE`` per item (the launcher runs only jobs with all those tags, which land
    in ``wf_filter_flag``, so existing templates pass them on). ``sched_flags`` are extra
    scheduler options, rendered as one directive line (a comment on the local scheduler).
    Paths and the workflow name are shell-quoted; ``project`` and ``queue`` must be plain
    words (they land in directives); a machine with ``project_required`` needs a project, any
    other renders ``project_directive`` as a comment when there is none.
    """
    for label, word in (("project", project), ("queue", queue)):
        if not _WORD.fullmatch(word):
            raise MachineError(f"{label} {word!r} may contain only letters, digits and . @ : + / = , - _")
    if machine.project_required and not project:
        raise MachineError(f"a project (allocation) is needed to submit on {machine.name}: "
                           "set `project` in settings.yml")
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise MachineError(f"nodes must be a whole number >= 1, not {nodes!r}")
    if isinstance(time_minutes, bool) or not isinstance(time_minutes, int) or time_minutes < 1:
        raise MachineError(f"time_minutes must be a whole number >= 1, not {time_minutes!r}")
    if job_mode not in JOB_MODES:
        raise MachineError(f"job_mode must be one of {', '.join(JOB_MODES)}, not {job_mode!r}")
    if wf_filter is not None and not wf_filter.strip():
        raise MachineError("a workflow filter must not be empty")
    flags = sched_flags.strip()
    job_filter = "--consume-all" if wf_filter is None else f"--wf-filter {shlex.quote(wf_filter)}"
    for key, value in sorted((filter_tags or {}).items()):
        if not str(key).strip() or "=" in str(key):
            raise MachineError(f"a filter tag key must be a non-empty word without '=', not {key!r}")
        job_filter += f" --tag {shlex.quote(f'{key}={value}')}"
    return {
        "project": project, "queue": queue, "nodes": str(nodes),
        "project_directive": PROJECT_DIRECTIVES[machine.scheduler].format(project) if project
        else "# (no project: the scheduler's default account)",
        "time_minutes": str(time_minutes), "walltime": format_minutes(time_minutes),
        "launcher_minutes": f"{launcher_minutes(time_minutes):g}", "job_mode": job_mode,
        "wf_filter_flag": job_filter,
        "sched_flags": f"{DIRECTIVES[machine.scheduler]} {flags}" if flags else
        "# (no extra scheduler flags)",
        "balsam_bin": shlex.quote(balsam_bin), "python": shlex.quote(python),
        "db_path": shlex.quote(db_path), "gpus_per_node": str(machine.gpus_per_node),
    }
