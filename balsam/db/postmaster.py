"""The ``postmaster.pid`` file of a data directory, and whether the process it names is alive.

PostgreSQL writes ``<data>/postmaster.pid`` (pid, data directory, start time, port, ...) while the
server runs. After a crash (kill -9, a node reboot) the file stays behind, and PostgreSQL refuses to
start while the pid in it belongs to *any* live process -- pids are reused, possibly by another
user's postgres. So Balsam decides itself whether the file is stale: the process must exist, not
be a zombie (containers whose init never reaps leave those), be a ``postgres`` process, and -- when
the caller may look -- work in this data directory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from balsam.platform.process import process_alive

FILENAME = "postmaster.pid"


@dataclass(frozen=True)
class PidFile:
    """What ``postmaster.pid`` records (lines 1, 2 and 4 of the file)."""

    pid: int
    data_dir: str
    port: int


def path_of(data_dir: str) -> str:
    return os.path.join(data_dir, FILENAME)


def read(data_dir: str) -> Optional[PidFile]:
    """The parsed pid file, or None if there is none; a garbled file reads as pid 0.

    :class:`PermissionError` if the caller may not read the data directory (a collaborator who is
    not the DB owner): then only the server's TCP port can tell whether it runs.
    """
    try:
        with open(path_of(data_dir)) as fh:
            lines = fh.read().splitlines()
    except PermissionError:
        raise
    except OSError:
        return None
    try:
        pid = int(lines[0].strip())
    except (IndexError, ValueError):
        pid = 0
    recorded = lines[1].strip() if len(lines) > 1 else data_dir
    try:
        port = int(lines[3].strip())
    except (IndexError, ValueError):
        port = 0
    return PidFile(pid, recorded, port)


def is_postmaster(pid: int, data_dir: str) -> bool:
    """True if ``pid`` is a live postgres process serving ``data_dir``."""
    if not process_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/comm") as fh:
            if not fh.read().strip().startswith("postgres"):
                return False
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:  # the postmaster works in its data directory; readable by root and the server account
        return os.path.samefile(f"/proc/{pid}/cwd", data_dir)
    except PermissionError:
        return True
    except OSError:
        return False


def running_pid(data_dir: str) -> int:
    """The pid of the live postmaster of ``data_dir``, else 0 (PermissionError as for :func:`read`)."""
    found = read(data_dir)
    if found and is_postmaster(found.pid, data_dir):
        return found.pid
    return 0


def remove_if_stale(data_dir: str) -> int:
    """Delete ``postmaster.pid`` if the process it names is gone; return that pid (0: nothing done)."""
    found = read(data_dir)
    if found is None or is_postmaster(found.pid, data_dir):
        return 0
    try:
        os.unlink(path_of(data_dir))
    except FileNotFoundError:
        return 0
    return found.pid or -1
