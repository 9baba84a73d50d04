"""The schema of ``settings.yml`` (pydantic v2 models) and its one-line error messages.

Every section forbids unknown keys and checks types strictly (``"5"`` is not a number, ``true``
is not a whole number; a whole number is accepted where a number is). Defaults live here and
nowhere else: :mod:`balsam.defaults` for the tunables, the field defaults for the rest.
Importing pydantic costs tens of milliseconds, so only :func:`balsam.db.dbsettings.load` and
:func:`~balsam.db.dbsettings.render_default` import this module, never a module's top level.

Queue policy entries are checked here for keys and types; their cross-field rules (ranges,
queue names) stay in :func:`balsam.platform.machines.validate_queues`, which also checks the
shipped machine profiles.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from balsam import defaults
from balsam.errors import BalsamError
from balsam.platform.mpi import FLAVOURS
from balsam.platform.schedulers import SCHEDULERS

_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_RESERVED_ALIASES = ("local", "file", "rsync", "scp", "gsiftp", "globus")
"""URL schemes (balsam.core.schema.TRANSFER_SCHEMES): an alias of that name would be ambiguous."""
_LOCATION = re.compile(r"^(globus://[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}/?"
                       r"|(rsync|scp)(://|:)([A-Za-z0-9._-]+@)?[A-Za-z0-9._-]+/?|local)$")
_STRICT = ConfigDict(extra="forbid", strict=True, validate_default=True)


def _choice(value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise PydanticCustomError("choice", "one of {choices}", {"choices": choices})
    return value


class QueueEntry(BaseModel):
    """One ``queues:`` entry (meanings: :mod:`balsam.platform.machines`); every key required."""

    model_config = _STRICT
    min_nodes: int
    max_nodes: int
    min_minutes: int
    max_minutes: int
    max_queued: int
    max_running: int
    max_total_nodes: int


class LauncherSection(BaseModel):
    """``launcher:``: the tunables of :mod:`balsam.defaults` (lower-case names), all > 0 but
    ``status_writers`` (0: auto), ``max_retries`` and ``retry_backoff_seconds`` (>= 0; the
    last two also apply to the service's processing), and the switches ``warm_hooks`` (true or
    false; the transition workers of launchers and the service) and ``pin_single_core_tasks``
    (serial mode)."""

    model_config = _STRICT
    heartbeat_seconds: float = Field(default=defaults.HEARTBEAT_SECONDS, gt=0)
    lease_seconds: int = Field(default=defaults.LEASE_SECONDS, gt=0)
    claim_batch: int = Field(default=defaults.CLAIM_BATCH, gt=0)
    serial_prefetch_per_slot: int = Field(default=defaults.SERIAL_PREFETCH_PER_SLOT, gt=0)
    status_flush_seconds: float = Field(default=defaults.STATUS_FLUSH_SECONDS, gt=0)
    status_writers: int = Field(default=defaults.STATUS_WRITERS, ge=0)
    kill_check_seconds: float = Field(default=defaults.KILL_CHECK_SECONDS, gt=0)
    kill_grace_seconds: float = Field(default=defaults.KILL_GRACE_SECONDS, gt=0)
    shutdown_grace_seconds: float = Field(default=defaults.SHUTDOWN_GRACE_SECONDS, gt=0)
    walltime_margin_seconds: float = Field(default=defaults.WALLTIME_MARGIN_SECONDS, gt=0)
    idle_exit_seconds: float = Field(default=defaults.IDLE_EXIT_SECONDS, gt=0)
    idle_wait_seconds: float = Field(default=defaults.IDLE_WAIT_SECONDS, gt=0)
    idle_poll_max_seconds: float = Field(default=defaults.IDLE_POLL_MAX_SECONDS, gt=0)
    processing_batch: int = Field(default=defaults.PROCESSING_BATCH, gt=0)
    max_retries: int = Field(default=defaults.MAX_RETRIES, ge=0)
    retry_backoff_seconds: float = Field(default=defaults.RETRY_BACKOFF_SECONDS, ge=0)
    output_tail_lines: int = Field(default=defaults.OUTPUT_TAIL_LINES, gt=0)
    reconnect_max_seconds: float = Field(default=defaults.RECONNECT_MAX_SECONDS, gt=0)
    max_concurrent_runs: int = Field(default=defaults.MAX_CONCURRENT_RUNS, gt=0)
    script_timeout_seconds: float = Field(default=defaults.SCRIPT_TIMEOUT_SECONDS, gt=0)
    transfer_timeout_seconds: float = Field(default=defaults.TRANSFER_TIMEOUT_SECONDS, gt=0)
    warm_hooks: bool = defaults.WARM_HOOKS
    pin_single_core_tasks: bool = defaults.PIN_SINGLE_CORE_TASKS


class ServiceSection(BaseModel):
    """``service:``: the cycle period and the number of transition workers (0: none)."""

    model_config = _STRICT
    cycle_seconds: float = Field(default=defaults.SERVICE_CYCLE_SECONDS, gt=0)
    transition_threads: int = Field(default=defaults.SERVICE_TRANSITION_THREADS, ge=0)


class TransfersSection(BaseModel):
    """``transfers:``: batching, concurrency and retries of stage-in/out transfers
    (:mod:`balsam.processing.transfers`), and this site's SSH and Globus identity."""

    model_config = _STRICT
    batch_items: int = Field(default=defaults.TRANSFER_BATCH_ITEMS, gt=0)
    batches_per_endpoint: int = Field(default=defaults.TRANSFER_BATCHES_PER_ENDPOINT, gt=0)
    local_threads: int = Field(default=defaults.TRANSFER_LOCAL_THREADS, gt=0)
    max_attempts: int = Field(default=defaults.TRANSFER_MAX_ATTEMPTS, gt=0)
    retry_backoff_seconds: float = Field(default=defaults.TRANSFER_RETRY_BACKOFF_SECONDS, ge=0)
    poll_seconds: float = Field(default=defaults.TRANSFER_POLL_SECONDS, gt=0)
    ssh_config_file: str = ""
    """An ssh_config(5) file for rsync and scp (``ssh -F``); empty: the user's own."""
    globus_endpoint_id: str = ""
    """This site's Globus collection UUID (the local side of ``globus://`` transfers)."""
    globus_client_id: str = ""
    """The Globus native-app client id used to log in (``globus://`` transfers)."""
    locations: dict[str, str] = {}
    """Endpoint aliases for the site API's transfer slots (``Job(transfers={"slot":
    "ALIAS:/path"})``, as 0.6's ``transfer_locations``): ``globus://COLLECTION_UUID``,
    ``rsync://[user@]host`` (or ``rsync:[user@]host``), ``scp://[user@]host``, or ``local``."""

    @field_validator("locations")
    @classmethod
    def _locations(cls, value: dict[str, str]) -> dict[str, str]:
        for alias, target in value.items():
            if not _ALIAS.match(alias) or alias in _RESERVED_ALIASES:
                msg = (f"alias {alias!r} must be a name (letters, digits, _ . -; not a URL "
                       f"scheme: {', '.join(_RESERVED_ALIASES)})")
            elif not _LOCATION.match(target):
                msg = (f"{alias}: {target!r} is not globus://COLLECTION_UUID, "
                       "rsync://[user@]host, scp://[user@]host or local")
            else:
                continue
            raise PydanticCustomError("location", "{msg}", {"msg": msg})
        return value


class ServerSection(BaseModel):
    """``server:``: options of the DB's PostgreSQL server, applied when it starts."""

    model_config = _STRICT
    port: int = Field(default=0, ge=0, le=65535)
    """0: pick a free port each time the server starts."""
    listen_addresses: str = "*"
    """Compute nodes must reach the server over TCP."""
    max_connections: int = Field(default=500, ge=1)
    shared_buffers: str = "256MB"


class Settings(BaseModel):
    """The whole file. ``queues`` None means the machine profile's policies."""

    model_config = _STRICT
    machine: str = "local"
    """Machine profile name (a name that is not shipped needs its own ``queues``)."""
    scheduler: str = "local"
    mpi: str = "mpich"
    mpi_executable: str = ""
    """The MPI launcher program; empty: the flavour's (the profile's) choice."""
    cores_per_node: int = Field(default=0, ge=0)
    """0: what the node has."""
    gpus_per_node: int = Field(default=0, ge=0)
    local_nodes: int = Field(default=1, ge=1)
    """Nodes to emulate on a machine without a batch scheduler."""
    project: str = ""
    """Allocation (account) the service charges its batch jobs to; empty: none."""
    queues: Optional[dict[str, QueueEntry]] = None
    launcher: LauncherSection = LauncherSection()
    service: ServiceSection = ServiceSection()
    server: ServerSection = ServerSection()
    transfers: TransfersSection = TransfersSection()

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, value: str) -> str:
        return _choice(value, SCHEDULERS)

    @field_validator("mpi")
    @classmethod
    def _mpi(cls, value: str) -> str:
        return _choice(value, FLAVOURS)


SECTIONS: dict[str, type[BaseModel]] = {
    "launcher": LauncherSection, "service": ServiceSection, "server": ServerSection,
    "transfers": TransfersSection,
}


def validate(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """``raw`` (the decoded YAML mapping) checked and completed with defaults, as plain data;
    a :class:`SettingsError` naming ``where`` and the first bad key otherwise."""
    try:
        return Settings.model_validate(raw).model_dump()
    except ValidationError as exc:
        errors = exc.errors()
        # A misspelt key is also a missing one: name the misspelling, it says more.
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        raise SettingsError(f"{where}: {describe(first)}") from None


def defaults_dict() -> dict[str, Any]:
    """Every setting's default, as :func:`validate` returns them."""
    return Settings().model_dump()


class SettingsError(BalsamError):
    """A ``settings.yml`` that does not fit the schema (one line: file, key, what is wrong)."""


def _model_at(loc: tuple[Any, ...]) -> Optional[type[BaseModel]]:
    """The model whose field list holds the last key of ``loc`` (None if not a model)."""
    if len(loc) == 1:
        return Settings
    if len(loc) == 2 and loc[0] in SECTIONS:
        return SECTIONS[str(loc[0])]
    if len(loc) == 3 and loc[0] == "queues":
        return QueueEntry
    return None


def closest(word: str, choices: list[str], prefix: str = "") -> str:
    """`` (did you mean `x`?)`` for the closest of ``choices`` (each starting with ``prefix``,
    which is not compared), else the list of them."""
    near = difflib.get_close_matches(prefix + word, choices, n=1, cutoff=0.6)
    if near:
        return f" (did you mean `{near[0]}`?)"
    return f" (valid keys: {', '.join(c[len(prefix):] for c in choices)})"


_KINDS = {"int": "a whole number", "float": "a number", "string": "a string", "bool": "true or false",
          "dict": "a mapping", "model": "a mapping"}


def describe(error: Any) -> str:
    """One pydantic error (an item of ``ValidationError.errors()``) as one line, e.g.
    ``unknown key `local_node` (did you mean `local_nodes`?)`` or
    ``\\`launcher.lease_seconds\\` must be a number, not 'abc'``."""
    loc = tuple(error["loc"])
    key = ".".join(str(part) for part in loc)
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        model = _model_at(loc)
        prefix = "".join(f"{part}." for part in loc[:-1])
        hint = closest(str(loc[-1]), [prefix + f for f in model.model_fields], prefix) if model else ""
        return f"unknown key `{key}`{hint}"
    if kind == "missing":
        return f"missing key `{key}`"
    if kind == "choice":
        near = difflib.get_close_matches(str(value), ctx["choices"], n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return f"`{key}` must be one of {', '.join(ctx['choices'])}, not {value!r}{hint}"
    bound = {"greater_than": "greater than {gt}", "greater_than_equal": "at least {ge}",
             "less_than": "less than {lt}", "less_than_equal": "at most {le}"}.get(kind)
    if bound:
        limits = {k: f"{v:g}" if isinstance(v, (int, float)) else v for k, v in ctx.items()}
        return f"`{key}` must be {bound.format(**limits)}, not {value!r}"
    base = kind.split("_")[0]
    if base in _KINDS:
        what = "a number" if kind.startswith("float") else _KINDS[base]
        return f"`{key}` must be {what}, not {value!r}"
    return f"`{key}`: {error['msg']}"
