"""The DB directory's ``settings.yml``: this site's machine profile, server options and tunables.

``balsam init`` writes a commented file; every key has a default, so a missing key or an older
file still works. The file is checked against a schema (:mod:`balsam.db.settings_schema`):
an unknown key or a value of the wrong type is a one-line :class:`BalsamError` naming the file,
the key and the closest valid key, at every command that reads settings.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from balsam.errors import BalsamError

FILENAME = "settings.yml"

TEMPLATE = """\
# Balsam settings for this database ({path}).
# Every key is optional; a missing key takes the default shown here.

machine: {machine}        # machine profile
scheduler: {scheduler}      # batch scheduler: local, slurm, pbs, cobalt, lsf
mpi: {mpi}            # MPI launcher flavour: mpich, openmpi, srun, aprun, jsrun, pals, direct
mpi_executable: {mpi_executable}      # its program (path or name); '' = the profile's choice
cores_per_node: {cores_per_node}       # 0 = detect on the node
gpus_per_node: {gpus_per_node}
local_nodes: {local_nodes}          # outside a batch job: emulated nodes on this machine
project: {project}           # allocation (account) charged; '' = none (where the site allows)

# Queue policies the service plans within, per queue: node and walltime range of one batch job
# (min/max_nodes, min/max_minutes), batch jobs waiting and running at once (max_queued,
# max_running; 0 disables the queue) and a cap on the nodes of all of them (max_total_nodes).
queues:
{queues}

# Launcher tunables (defaults shown; see balsam/defaults.py for what each one does).
launcher:
{launcher}
# The service's cycle period and its transition workers (stage-in/out, scripts; 0 = none).
service:
{service}
server:
  port: {port}              # 0 = choose a free port each time the server starts
  listen_addresses: '{listen}' # compute nodes connect over TCP (password auth only)
  max_connections: {maxconn}
  shared_buffers: {shared_buffers}

# Stage-in/out transfers: items per batch (one rsync/scp connection or Globus task), batches in
# flight per endpoint, retries; ssh_config_file for rsync/scp ('' = your own); this site's Globus
# collection UUID and the native-app client id for globus:// URLs.
transfers:
{transfers}"""


def render_default(db_path: str, machine: str = "local", **overrides: Any) -> str:
    """The commented ``settings.yml`` of a new DB for machine profile ``machine`` (scheduler,
    MPI flavour, cores, GPUs, project and queue policies from the profile, then ``overrides``).
    An unknown machine raises :class:`~balsam.platform.machines.MachineError`."""
    from balsam.db import settings_schema
    from balsam.platform import machines

    profile = machines.load(machine)
    values = settings_schema.defaults_dict()
    values.update(machine=machine, scheduler=profile.scheduler, mpi=profile.mpi,
                  cores_per_node=profile.cores_per_node, gpus_per_node=profile.gpus_per_node,
                  project=profile.default_project, queues=profile.queue_settings())
    values.update(overrides)
    srv = values["server"]
    queues = "".join(f"  {json.dumps(name)}: {{{', '.join(f'{k}: {v}' for k, v in policy.items())}}}\n"
                     for name, policy in values["queues"].items())
    return TEMPLATE.format(
        path=db_path, machine=values["machine"], scheduler=values["scheduler"], mpi=values["mpi"],
        mpi_executable=json.dumps(values["mpi_executable"]),
        cores_per_node=values["cores_per_node"], gpus_per_node=values["gpus_per_node"],
        local_nodes=values["local_nodes"], project=json.dumps(values["project"]),
        queues=queues.rstrip("\n"),
        launcher="".join(f"  {k}: {v}\n" for k, v in values["launcher"].items()),
        service="".join(f"  {k}: {v}\n" for k, v in values["service"].items()),
        port=srv["port"], listen=srv["listen_addresses"], maxconn=srv["max_connections"],
        shared_buffers=srv["shared_buffers"],
        transfers="".join(f"  {k}: {json.dumps(v) if isinstance(v, str) else v}\n"
                          for k, v in values["transfers"].items()),
    )


def defaults() -> dict[str, Any]:
    """Every setting's default (the shape :func:`load` returns, ``queues`` None)."""
    from balsam.db import settings_schema

    return settings_schema.defaults_dict()


def load(db_path: str) -> dict[str, Any]:
    """Settings of ``db_path``, checked against the schema and completed with the defaults;
    ``queues`` are the file's (validated) or, when absent, the machine profile's. A missing
    file means every default. Any error is one :class:`BalsamError` line naming the file."""
    import yaml

    from balsam.db import settings_schema

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
    settings = settings_schema.validate(raw, path)
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
