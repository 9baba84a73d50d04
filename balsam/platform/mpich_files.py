"""What a SIGKILLed MPICH ``mpiexec`` (Hydra) leaves: its proxies' ``/tmp`` topology files
and its ranks' ``/dev/shm`` segments.

Hydra's node proxy (``hydra_pmi_proxy``, a child of ``mpiexec`` in a process group of its own;
each rank in a session of its own below it) exports the node's hwloc topology to
``/tmp/hydra_hwloc_xmlfile_XXXXXX`` (``mkstemp``; the directory is compiled in: ``TMPDIR`` and
Hydra's options do not move it) when its ranks ask for it in ``MPI_Init``, or at its start when
``-bind-to`` binds ranks, keeps the file open, and unlinks it when it ends normally (also after
SIGTERM). A SIGKILLed ``mpiexec`` takes its proxy down without that clean-up: every such kill
left a ~5.5 kB file (measured with the wheel's Hydra 5.0.2; a test suite left ~50-130 an hour).
Its ranks, killed by the dying proxy, leave their ``/dev/shm/mpich_shm_*`` file too (unlinked
only by ``MPI_Finalize``).

The names carry no pid and other jobs hold files of those names, so whoever kills learns which
are its own first: :func:`held_by_group` finds the proxies among the children of the group's
members (by their command name) and notes the topology files they hold open
(``/proc/<pid>/fd``) and the segments their ranks map (``/proc/<pid>/maps``), each with its
device and inode; after the kill :func:`unlink_same` unlinks each still there as the same inode
and this user's. :func:`balsam.platform.procgroup.signal_group` does both for every SIGKILL it
sends. Not covered: a proxy killed between ``mkstemp`` and the look, a rank killed between
creating its segment and the look, proxies and ranks on other nodes (Hydra's ``ssh``/``slurm``
bootstraps: their ``/tmp`` and ``/dev/shm``).
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping

from balsam.platform.process import stat_fields

PREFIX = "/tmp/hydra_hwloc_xmlfile_"
PROXY = b"hydra_pmi_proxy"
"""Hydra's node proxy's command name (``/proc/<pid>/comm``)."""
SHM_DIR = "/dev/shm"
SHM_PREFIX = "mpich_shm_"
_HEX = frozenset("0123456789abcdef")
_DIGITS = frozenset("0123456789")


def is_segment_name(name: str) -> bool:
    """Whether ``name`` is an MPICH segment's (``mpich_shm_<random hex>_<n>``, the wheel's
    4.x/5.x). Without ``re``: a worker rank's watchdog imports this module, and ``re`` is
    most of its imports' cost (issue 16, session 20)."""
    hexpart, sep, number = name[len(SHM_PREFIX):].partition("_")
    return (name.startswith(SHM_PREFIX) and sep == "_" and bool(hexpart) and bool(number)
            and _HEX.issuperset(hexpart) and _DIGITS.issuperset(number))


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


def mapped_segments(pids: Iterable[int]) -> dict[str, tuple[int, int]]:
    """{path: (device, inode)} of the MPICH segment files ``pids`` map (files since unlinked,
    and processes gone or not readable, are skipped)."""
    found: dict[str, tuple[int, int]] = {}
    marker = f" {SHM_DIR}/{SHM_PREFIX}"
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as fh:
                lines = [line for line in fh if marker in line]
        except OSError:
            continue
        for line in lines:
            path = line[line.index(marker) + 1:].rstrip("\n")
            if path.endswith(" (deleted)") or path in found:
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            found[path] = (st.st_dev, st.st_ino)
    return found


def held_by_group(pgid: int) -> dict[str, tuple[int, int]]:
    """The files a SIGKILL of process group ``pgid`` would leave: :func:`held_files` of the
    Hydra proxies among its members' children and :func:`mapped_segments` of their ranks; {} if
    the group is gone (then no ``/proc`` scan)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return {}
    except PermissionError:
        pass
    if not os.path.isdir("/proc/self"):
        return {}
    table = _processes()
    members = {pid for pid, (_, pgrp) in table.items() if pgrp == pgid}
    proxies = {p for p, (pp, _) in table.items() if pp in members and _command(p) == PROXY}
    if not proxies:
        return {}
    ranks = [p for p, (pp, _) in table.items() if pp in proxies]
    return {**held_files(sorted(proxies)), **mapped_segments(ranks)}


SCAN_REUSE_SECONDS = 0.05
"""A burst of SIGKILLs (a lost session's abort kills every task at once) shares one ``/proc``
scan (~8 us a process): a proxy started since has no rank through ``MPI_Init`` yet, so it holds
no file, and a group's older members are in the scan."""
_scan: list[tuple[float, dict[int, tuple[int, int]]]] = [(-SCAN_REUSE_SECONDS, {})]


def _processes() -> dict[int, tuple[int, int]]:
    """{pid: (ppid, pgrp)} of every process, from a scan at most :data:`SCAN_REUSE_SECONDS`
    old."""
    when, table = _scan[0]
    now = time.monotonic()
    if now - when < SCAN_REUSE_SECONDS:
        return table
    table = {}
    for name in os.listdir("/proc"):
        fields = stat_fields(name) if name.isdigit() else None
        if fields is not None and len(fields) > 2:  # after the command name: state, ppid, pgrp
            table[int(name)] = (int(fields[1]), int(fields[2]))
    _scan[0] = (now, table)
    return table


def _command(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/comm", "rb") as fh:
            return fh.read().strip()
    except OSError:
        return b""


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


CTIME_SLACK_SECONDS = 0.05
"""A file's ``ctime`` comes from the kernel's coarse clock (a tick, up to 10 ms, behind the
precise one a process reads): a file made right after ``since`` may seem made before it."""


def segments_made(since: float, until: float, directory: str = SHM_DIR
                  ) -> dict[str, tuple[int, int]]:
    """{path: (device, inode)} of this user's MPICH segment files in ``directory`` last
    changed (made: MPICH sizes it once, then only maps it) between the epoch times ``since``
    and ``until``."""
    found: dict[str, tuple[int, int]] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return found
    for entry in entries:
        if not is_segment_name(entry.name):  # (not another program's file of the prefix)
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if (st.st_uid == os.geteuid()
                and since - CTIME_SLACK_SECONDS <= st.st_ctime <= until + CTIME_SLACK_SECONDS):
            found[entry.path] = (st.st_dev, st.st_ino)
    return found


def mapped_anywhere(paths: Iterable[str]) -> set[str]:
    """Those of ``paths`` a live process (one whose ``/proc/<pid>/maps`` this user can read)
    maps."""
    wanted = {f" {path}\n" for path in paths}
    mapped: set[str] = set()
    for name in os.listdir("/proc") if wanted else ():
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/maps") as fh:
                text = fh.read()
        except OSError:
            continue
        mapped.update(w[1:-1] for w in wanted if w in text)
    return mapped

