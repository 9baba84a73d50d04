"""Which launcher program runs users' MPI tasks: the site's, never silently the wheel's.

The flavour comes from ``settings.yml`` (``mpi:``, the machine profile's by default) and the
program from :func:`choose`, in this order:

1. ``mpi_executable:`` in ``settings.yml`` (a path, or a name looked up on ``PATH``);
2. on the ``local`` profile, for the ``mpich`` flavour: the ``mpich`` wheel's Hydra ``mpiexec``
   installed with this Python (it matches the wheel's MPI that mpi4py loads);
3. the flavour's program (``srun``, ``aprun``, ``jsrun``, the site's ``mpiexec``...) found on
   ``PATH`` *outside* the wheel's bin directory (job scripts put that directory first);
4. for the ``mpich`` flavour only, as the last resort: the wheel's ``mpiexec``.

Anything else is a :class:`~balsam.errors.BalsamError` naming what to load or set. The
:class:`LauncherChoice` carries the reason, which the launcher logs on its first line.
"""
from __future__ import annotations

import csv
import functools
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Optional

from balsam.errors import BalsamError
from balsam.platform import mpi

LOCAL_PROFILE = "local"
"""The one profile whose choice is the wheel's ``mpiexec`` (laptops, workstations, CI)."""


@dataclass(frozen=True)
class LauncherChoice:
    """The flavour, its program (None: the ``direct`` flavour runs none) and why."""

    flavour: str
    executable: Optional[str]
    reason: str

    def describe(self) -> str:
        """One phrase for the log: ``mpich (/usr/bin/mpiexec: found on PATH ...)``."""
        return f"{self.flavour} ({self.executable or 'no launcher'}: {self.reason})"


@functools.cache
def wheel_mpiexec() -> Optional[str]:
    """The ``mpiexec`` the ``mpich`` wheel installed for this Python (absolute path), or None
    when that wheel is not installed. Found as ``importlib.metadata`` would (the first
    ``mpich-*.dist-info`` on ``sys.path``, its ``RECORD``) without importing it (~30 ms of
    the launcher's start-up); cached: the launcher asks three times."""
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        info = next((n for n in sorted(names) if n.endswith(".dist-info")
                     and n.split("-", 1)[0].lower() == "mpich"), None)
        if info is None:
            continue
        try:
            with open(os.path.join(entry or ".", info, "RECORD"), newline="") as fh:
                files = [row[0] for row in csv.reader(fh) if row]
        except OSError:
            return None
        for item in files:
            parts = item.replace("\\", "/").split("/")
            if parts[-1] == "mpiexec" and len(parts) > 1 and parts[-2] == "bin":
                path = os.path.normpath(os.path.join(os.path.abspath(entry or "."), item))
                if os.access(path, os.X_OK):
                    return path
        return None
    return None


def which_outside(program: str, path: str, excluded: Optional[str]) -> Optional[str]:
    """``program`` on ``path`` (a PATH string), skipping the directory of ``excluded`` and any
    entry resolving to the same file as ``excluded``; None if not found."""
    skip_dir = os.path.realpath(os.path.dirname(excluded)) if excluded else None
    for entry in path.split(os.pathsep):
        if not entry or (skip_dir and os.path.realpath(entry) == skip_dir):
            continue
        found = shutil.which(program, path=entry)
        if found and not (excluded and os.path.realpath(found) == os.path.realpath(excluded)):
            return found
    return None


def _configured(configured: str, flavour: str, path: str) -> LauncherChoice:
    if os.sep in configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise BalsamError(f"settings.yml mpi_executable {configured!r} is not an executable "
                              "file")
        found: Optional[str] = configured
    else:
        found = shutil.which(configured, path=path)
        if not found:
            raise BalsamError(f"settings.yml mpi_executable {configured!r} is not on PATH: load "
                              "your MPI module or give its full path")
    return LauncherChoice(flavour, found, "settings.yml mpi_executable")


def choose(flavour: str, machine: str, configured: str, path: str,
           wheel: Optional[str]) -> LauncherChoice:
    """The launcher for ``flavour`` on profile ``machine`` (module docstring for the order).

    ``configured`` is ``settings.yml``'s ``mpi_executable`` ("" = the profile's choice),
    ``path`` the PATH to search, ``wheel`` the wheel's ``mpiexec`` (:func:`wheel_mpiexec`).
    """
    module = mpi.get(flavour)
    if not module.EXECUTABLE:
        if configured:
            raise BalsamError(f"settings.yml mpi_executable {configured!r} is set but the "
                              f"{flavour} flavour runs tasks without a launcher")
        return LauncherChoice(flavour, None, "the direct flavour runs tasks without a launcher")
    if configured:
        return _configured(configured, flavour, path)
    hydra = wheel if flavour == "mpich" else None
    if hydra and machine == LOCAL_PROFILE:
        return LauncherChoice(flavour, hydra, "the local profile uses the mpich wheel's mpiexec "
                                              "installed with this Python")
    site = which_outside(module.EXECUTABLE, path, wheel)
    if site:
        return LauncherChoice(flavour, site, f"the site's {module.EXECUTABLE}, found on PATH "
                                             f"(profile {machine})")
    if hydra:
        return LauncherChoice(flavour, hydra, "last resort: no site mpiexec on PATH, so the "
                                              "mpich wheel's (load your MPI module or set "
                                              "mpi_executable to use the site's)")
    raise BalsamError(f"the MPI launcher {module.EXECUTABLE!r} (settings.yml mpi: {flavour}) is "
                      "not on PATH: load your MPI module, set mpi_executable, or choose another "
                      "flavour")
