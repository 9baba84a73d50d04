"""The topology file MPICH's Hydra leaves in ``/tmp`` when its ``mpiexec`` is SIGKILLed.

Hydra's node proxy (``hydra_pmi_proxy``, a child of ``mpiexec`` in a process group of its own)
exports the node's hwloc topology to ``/tmp/hydra_hwloc_xmlfile_XXXXXX`` (``mkstemp``; the
directory is compiled in: ``TMPDIR`` and Hydra's options do not move it) when its ranks ask for
it in ``MPI_Init``, or at its start when ``-bind-to`` binds ranks, keeps the file open, and
unlinks it when it ends normally (also after SIGTERM). A SIGKILLed ``mpiexec`` takes its proxy
down without that clean-up: every such kill left a ~5.5 kB file (measured with the wheel's
Hydra 5.0.2; a test suite left ~50-130 an hour).

The name carries no pid and other jobs' proxies hold files of that name, so the one who kills
learns which are its own first: :func:`held_by_group` reads the open files (``/proc/<pid>/fd``)
of the group's members and of their children (the proxy), noting each file's device and inode;
after the kill :func:`unlink_same` unlinks each still there as the same inode and this user's.
:func:`balsam.platform.procgroup.signal_group` does both for every SIGKILL it sends. Not
covered: a proxy killed while it writes the file (between ``mkstemp`` and the look), and
proxies on other nodes (their ``/tmp``; Hydra's ``ssh``/``slurm`` bootstraps).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from balsam.platform.process import stat_fields

PREFIX = "/tmp/hydra_hwloc_xmlfile_"


def held_files(pids: Iterable[int]) -> dict[str, tuple[int, int]]:
    """{path: (device, inode)} of the Hydra topology files ``pids`` hold open (processes gone
    or not readable are skipped)."""
    found: dict[str, tuple[int, int]] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                path = os.readlink(f"/proc/{pid}/fd/{fd}")
                if not path.startswith(PREFIX) or path in found:
                    continue
                st = os.stat(f"/proc/{pid}/fd/{fd}")  # the open file, even if renamed since
            except OSError:
                continue
            found[path] = (st.st_dev, st.st_ino)
    return found


def held_by_group(pgid: int) -> dict[str, tuple[int, int]]:
    """:func:`held_files` of the members of process group ``pgid`` and of their children
    (Hydra's proxy runs in a group of its own); {} if the group is gone (no ``/proc`` scan)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return {}
    except PermissionError:
        pass
    if not os.path.isdir("/proc/self"):
        return {}
    parents: dict[int, int] = {}
    members = set()
    for name in os.listdir("/proc"):
        fields = stat_fields(name) if name.isdigit() else None
        if fields is None or len(fields) < 3:
            continue
        parents[int(name)] = int(fields[1])  # after the command name: state, ppid, pgrp
        if int(fields[2]) == pgid:
            members.add(int(name))
    return held_files(sorted(members | {p for p, pp in parents.items() if pp in members}))


def unlink_same(found: Mapping[str, tuple[int, int]]) -> list[str]:
    """Unlink each of ``found`` ({path: (device, inode)}) that is still that inode and this
    user's file; the paths removed (one gone already was removed by its owner)."""
    removed = []
    for path, (dev, ino) in found.items():
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) != (dev, ino) or st.st_uid != os.geteuid():
                continue
            os.unlink(path)
        except OSError:
            continue
        removed.append(path)
    return removed
