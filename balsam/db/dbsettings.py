"""The DB directory's ``settings.yml``: this site's machine profile, server options and tunables.

``balsam init`` writes a commented file; every key has a default here, so a missing key or an
older file still works. Unknown keys are kept (later features read them) but a value of the wrong
kind is reported with the key's name.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any

from balsam import defaults
from balsam.errors import BalsamError

FILENAME = "settings.yml"

LAUNCHER_KEYS = (
    "heartbeat_seconds", "lease_seconds", "claim_batch", "serial_prefetch_per_slot",
    "status_flush_seconds", "kill_check_seconds", "kill_grace_seconds", "shutdown_grace_seconds",
    "walltime_margin_seconds", "idle_exit_seconds", "idle_wait_seconds", "processing_batch",
    "output_tail_lines", "reconnect_max_seconds", "max_concurrent_runs",
    "script_timeout_seconds", "transfer_timeout_seconds",
)
"""Launcher tunables a DB may override under ``launcher:`` (defaults: :mod:`balsam.defaults`,
same names in upper case)."""

DEFAULTS: dict[str, Any] = {
    "machine": "local",          # machine profile name
    "scheduler": "local",        # batch scheduler plug-in
    "mpi": "mpich",              # MPI launch flavour
    "mpi_executable": "",        # its program; "": the profile's (balsam/platform/mpi/choice.py)
    "cores_per_node": 0,         # 0: what this machine has
    "gpus_per_node": 0,
    "local_nodes": 1,            # nodes to emulate on a machine without a batch scheduler
    "project": "",               # allocation the service charges its batch jobs to
    "queues": None,              # queue policies; None: the machine profile's (see QUEUES_DOC)
    "launcher": {key: getattr(defaults, key.upper()) for key in LAUNCHER_KEYS},
    "service": {"cycle_seconds": defaults.SERVICE_CYCLE_SECONDS,
                "transition_threads": defaults.SERVICE_TRANSITION_THREADS},
    "server": {
        "port": 0,               # 0: pick a free port each time the server starts
        "listen_addresses": "*",  # compute nodes must reach the server over TCP
        "max_connections": 500,
        "shared_buffers": "256MB",
    },
}

TEMPLATE = """\
# Balsam settings for this database ({path}).
# Every key is optional; a missing key takes the default shown here.

machine: {machine}        # machine profile
scheduler: {scheduler}      # batch scheduler: local, slurm, pbs, cobalt, lsf
mpi: {mpi}            # MPI launcher flavour: mpich, openmpi, srun, aprun, jsrun, pals, direct
mpi_executable: ''    # path or name of its program; '' = the site's on PATH (the profile's choice)
cores_per_node: {cores_per_node}       # 0 = detect on the node
gpus_per_node: {gpus_per_node}
local_nodes: {local_nodes}          # outside a batch job: emulated nodes on this machine
project: {project}           # allocation (account) the service's batch jobs are charged to

# Queue policies the service plans within, per queue: node and walltime range of one batch job
# (min/max_nodes, min/max_minutes), batch jobs waiting and running at once (max_queued,
# max_running; 0 disables the queue) and a cap on the nodes of all of them (max_total_nodes).
queues:
{queues}

# Launcher tunables (defaults shown; see balsam/defaults.py for what each one does).
launcher:
{launcher}
server:
  port: {port}              # 0 = choose a free port each time the server starts
  listen_addresses: '{listen}' # compute nodes connect over TCP (password auth only)
  max_connections: {maxconn}
  shared_buffers: {shared_buffers}
"""


def render_default(db_path: str, machine: str = "local", **overrides: Any) -> str:
    """The commented ``settings.yml`` of a new DB for machine profile ``machine`` (scheduler,
    MPI flavour, cores, GPUs, project and queue policies from the profile, then ``overrides``).
    An unknown machine raises :class:`~balsam.platform.machines.MachineError`."""
    from balsam.platform import machines

    profile = machines.load(machine)
    values = copy.deepcopy(DEFAULTS)
    values.update(machine=machine, scheduler=profile.scheduler, mpi=profile.mpi,
                  cores_per_node=profile.cores_per_node, gpus_per_node=profile.gpus_per_node,
                  project=profile.default_project, queues=profile.queue_settings())
    values.update(overrides)
    srv = values["server"]
    queues = "".join(f"  {json.dumps(name)}: {{{', '.join(f'{k}: {v}' for k, v in policy.items())}}}\n"
                     for name, policy in values["queues"].items())
    return TEMPLATE.format(
        path=db_path, machine=values["machine"], scheduler=values["scheduler"], mpi=values["mpi"],
        cores_per_node=values["cores_per_node"], gpus_per_node=values["gpus_per_node"],
        local_nodes=values["local_nodes"], project=json.dumps(values["project"]),
        queues=queues.rstrip("\n"),
        launcher="".join(f"  {k}: {v}\n" for k, v in values["launcher"].items()),
        port=srv["port"], listen=srv["listen_addresses"], maxconn=srv["max_connections"],
        shared_buffers=srv["shared_buffers"],
    )


def _merge(base: dict[str, Any], extra: dict[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, val in extra.items():
        if key in base and isinstance(base[key], dict):
            if not isinstance(val, dict):
                raise BalsamError(f"{where}: `{key}` must be a mapping")
            out[key] = _merge(base[key], val, where)
        elif isinstance(base.get(key), float) and isinstance(val, int) and not isinstance(val, bool):
            out[key] = float(val)
        elif key in base and base[key] is not None and not isinstance(val, type(base[key])):
            raise BalsamError(f"{where}: `{key}` must be a {type(base[key]).__name__}, not {val!r}")
        else:
            out[key] = val
    return out


def load(db_path: str) -> dict[str, Any]:
    """Settings of ``db_path`` merged over :data:`DEFAULTS`."""
    import yaml

    path = os.path.join(db_path, FILENAME)
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raw = {}
    except (OSError, yaml.YAMLError) as exc:
        raise BalsamError(f"cannot read {path}: {str(exc).splitlines()[0]}")
    if not isinstance(raw, dict):
        raise BalsamError(f"{path} must be a mapping of settings")
    settings = _merge(DEFAULTS, raw, path)
    settings["queues"] = _queues(settings, path)
    return settings


def _queues(settings: dict[str, Any], path: str) -> dict[str, dict[str, int]]:
    """The validated ``queues`` of ``settings``; when absent, the machine profile's."""
    from balsam.platform import machines

    if settings["queues"] is None:
        if settings["machine"] not in machines.names():
            raise BalsamError(f"{path}: no `queues` given and {settings['machine']!r} is not a "
                              f"shipped machine profile ({', '.join(machines.names())})")
        return machines.load(settings["machine"]).queue_settings()
    policies = machines.validate_queues(settings["queues"], path)
    return {name: dataclasses.asdict(policy) for name, policy in policies.items()}
