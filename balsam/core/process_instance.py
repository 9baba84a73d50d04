"""Which process this is, beyond its host and pid (:func:`instance`): names a serial-mode
launcher's report directory (:func:`balsam.core.serial_reports.launcher_dir`, which re-exports
it), so that a later launcher of the same host and pid (pid 1 in every container) never takes
a dead one's."""
from __future__ import annotations

import os
import secrets

_INSTANCES: dict[int, str] = {}


def instance() -> str:
    """This process beyond its host and pid: the kernel's boot id, the PID namespace's inode
    and the process's start time (clock ticks after boot). A part that cannot be read (no
    ``/proc``: some containers) makes the name end with a random one, drawn once per process:
    the name never matches another process's (a later launcher of that host and pid would
    otherwise take a dead one's directory and remove its unswept reports)."""
    pid = os.getpid()
    if pid not in _INSTANCES:
        _INSTANCES[pid] = _read_instance()
    return _INSTANCES[pid]


def _read_instance() -> str:
    def read(path: str) -> str:
        try:
            with open(path) as fh:
                return fh.read().strip()
        except OSError:
            return ""

    boot = read("/proc/sys/kernel/random/boot_id").replace("-", "")[:12]
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = ""
    ticks = read("/proc/self/stat").rpartition(")")[2].split()[19:20]
    start = ticks[0] if ticks and ticks[0].isdigit() else ""
    name = f"{boot or 'noboot'}-{pidns or 'nons'}-{start or 'nostart'}"
    return name if boot and pidns and start else f"{name}-{secrets.token_hex(8)}"
