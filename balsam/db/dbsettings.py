"""The DB directory's ``settings.yml``: this site's machine profile, server options and tunables.

``balsam init`` writes a commented file; every key has a default, so a missing key or an older
file still works. The file is checked against a schema (:mod:`balsam.db.settings_schema`):
an unknown key or a value of the wrong type is a one-line :class:`BalsamError` naming the file,
the key and the closest valid key, at every command that reads settings.
"""
from __future__ import annotations

import json
import os
from typing import Any, cast

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
# collection UUID and the native-app client id for globus:// URLs; locations: aliases for the
# site API's transfer slots, e.g. {{"laptop": "rsync://me@laptop", "dtn": "globus://UUID"}}.
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
        launcher="".join(f"  {k}: {json.dumps(v) if isinstance(v, bool) else v}\n"
                         for k, v in values["launcher"].items()),
        service="".join(f"  {k}: {v}\n" for k, v in values["service"].items()),
        port=srv["port"], listen=srv["listen_addresses"], maxconn=srv["max_connections"],
        shared_buffers=srv["shared_buffers"],
        transfers="".join(f"  {k}: {json.dumps(v) if isinstance(v, (str, dict)) else v}\n"
                          for k, v in values["transfers"].items()),
    )


def defaults() -> dict[str, Any]:
    """Every setting's default (the shape :func:`load` returns, ``queues`` None)."""
    from balsam.db import settings_schema

    return settings_schema.defaults_dict()


def load(db_path: str) -> dict[str, Any]:
    """Settings of ``db_path``, checked against the schema and completed with the defaults;
    ``queues`` are the file's (validated) or, when absent, the machine profile's. A missing
    file means every default. Any error is one :class:`BalsamError` line naming the file.

    Checking costs ~100-200 ms (importing YAML and pydantic, building the schema), so the
    result is kept in :data:`CHECKED_FILENAME` beside the file and reused while neither the
    file nor the code that checks it changed (:func:`_checked_key`)."""
    path = os.path.join(db_path, FILENAME)
    key = _checked_key(path)
    if key is not None:
        cached = _read_checked(db_path, key)
        if cached is not None:
            return cast(dict[str, Any], cached)
    settings = _check(path)
    if key is not None:
        _write_checked(db_path, key, settings)
    return settings


def _check(path: str) -> dict[str, Any]:
    import yaml

    from balsam.db import settings_schema

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


CHECKED_FILENAME = ".settings-checked.json"
"""The last checked settings of a DB directory, with the identity (:func:`_checked_key`) of the
``settings.yml`` and of the code they were checked with. Written only by the owner of
``settings.yml``, and trusted only when that owner also owns it: it can say nothing the owner
could not write in ``settings.yml`` itself."""
_CHECKING_CODE = ("db/dbsettings.py", "db/settings_schema.py", "defaults.py",
                  "platform/mpi/__init__.py", "platform/schedulers/__init__.py")
"""Modules (under the package) whose code decides what :func:`load` returns, besides the
machine profiles (``platform/machines/``)."""


def _checked_key(path: str) -> Any:
    """What :func:`load`'s result depends on: the file's identity (inode, size, modification and
    change times: an edit, a copy or a rename over it changes one) and the checking code's
    (Balsam's version; size and modification time of the modules and machine profiles); None
    when the file is missing (the defaults are not cached)."""
    import balsam

    try:
        st = os.stat(path)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = [[name, *_stamp(os.path.join(root, name))] for name in _CHECKING_CODE]
        with os.scandir(os.path.join(root, "platform", "machines")) as entries:
            code += sorted([e.name, *_stamp(e.path)] for e in entries if e.is_file())
    except OSError:
        return None
    return [balsam.__version__, st.st_uid, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            code]  # lists only: compared with the key read back from JSON


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _read_checked(db_path: str, key: Any) -> Any:
    """The cached settings for ``key``, or None (absent, stale, unreadable, not trusted)."""
    try:
        with open(os.path.join(db_path, CHECKED_FILENAME)) as fh:
            if os.fstat(fh.fileno()).st_uid != key[1]:
                return None
            stored = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    return stored.get("settings")


SETTLED_SECONDS = 2.0
"""A ``settings.yml`` changed less than this long ago is not cached: file times have a coarse
tick on some file systems, so a second edit of the same size within one tick could keep every
time stamp (git's "racy" index entries); after this, any edit moves a time stamp."""


def _write_checked(db_path: str, key: Any, settings: dict[str, Any]) -> None:
    """Store ``settings`` for ``key`` atomically, readable by whoever may read the file;
    silently skipped when not ours to write, the file changed just now, or ``settings`` would
    not read back equal from JSON."""
    import time

    if key[1] != os.geteuid() or time.time_ns() - max(key[4], key[5]) < SETTLED_SECONDS * 1e9:
        return
    if json.loads(json.dumps(settings)) != settings:
        return
    target = os.path.join(db_path, CHECKED_FILENAME)
    tmp = f"{target}.{os.getpid()}.tmp"
    try:
        mode = os.stat(os.path.join(db_path, FILENAME)).st_mode & 0o644
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as fh:
            json.dump({"key": key, "settings": settings}, fh)
        os.replace(tmp, target)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _queues(settings: dict[str, Any], path: str) -> dict[str, dict[str, int]]:
    """The validated ``queues`` of ``settings``; when absent, the machine profile's."""
    from balsam.platform import machines

    if settings["queues"] is None:
        if settings["machine"] not in machines.names():
            raise BalsamError(f"{path}: no `queues` given and {settings['machine']!r} is not a "
                              f"shipped machine profile ({', '.join(machines.names())})")
        return machines.load(settings["machine"]).queue_settings()
    import dataclasses

    policies = machines.validate_queues(settings["queues"], path)
    return {name: dataclasses.asdict(policy) for name, policy in policies.items()}
