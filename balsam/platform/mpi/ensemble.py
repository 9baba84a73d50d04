"""How the serial-mode ensemble starts: master + one worker rank per node, per scheduler.

The ensemble's ranks run this Python and the MPI library its mpi4py loads. With the ``mpich``
wheel installed that is the wheel's MPICH, and the only launcher that always speaks its PMI is
the wheel's own Hydra ``mpiexec``; what must come from the site is how Hydra reaches the
nodes (its *bootstrap*), so the scheduler decides:

========  ====================================================================================
local     Hydra ``-launcher fork`` (every emulated node is this machine)
slurm     Hydra ``-launcher slurm``: one ``srun`` step starts Hydra's proxy on each node.
          Measured on the 4-node test Slurm: ranks land exactly as laid out. Plain
          ``srun`` would need ``--mpi=pmi2`` (with ``MpiDefault=none`` it silently starts N
          singletons) and a site whose Slurm built that plug-in.
pbs       Hydra ``-launcher rsh -launcher-exec pbs_tmrsh`` when ``pbs_tmrsh`` is on PATH (the
          ranks stay under PBS's control, as Intel MPI does it), else ``-launcher ssh``
cobalt,   the profile's task launcher (``aprun``, ``jsrun``): those compute nodes are reached
lsf       no other way, so mpi4py must be built against the site's MPI there
========  ====================================================================================

Without the wheel, the profile's task launcher starts the ensemble (``srun -m arbitrary`` on
Slurm). Hydra's ``-hosts h1:2,h2:1`` puts ranks 0 and 1 on the first node and rank i on node
i-1; the flavours' ``-ppn 1`` with a repeated host would not (Hydra wraps round-robin).
"""
from __future__ import annotations

import shutil
from itertools import groupby
from typing import Optional

from balsam.platform import mpi
from balsam.platform.mpi.choice import LauncherChoice

HYDRA_BOOTSTRAP = {"local": "fork", "slurm": "slurm", "pbs": "ssh"}
"""Hydra's ``-launcher`` per scheduler; schedulers absent here use the task launcher."""
PBS_RSH = "pbs_tmrsh"
"""PBS's rsh-compatible task spawner (TM interface), used as Hydra's rsh under PBS."""


def layout(hosts: list[str]) -> list[str]:
    """One host per rank: the master shares the first node with worker 1, worker i runs on
    node i-1."""
    return [hosts[0], *hosts]


def hydra_argv(mpiexec: str, bootstrap: list[str], hosts: list[str],
               rank_argv: list[str]) -> list[str]:
    """Hydra's command placing one rank per entry of :func:`layout` (consecutive repeats of a
    host become one ``host:count``)."""
    counts = [f"{host}:{len(list(group))}" for host, group in groupby(layout(hosts))]
    return [mpiexec, *bootstrap, "-n", str(len(hosts) + 1), "-hosts", ",".join(counts),
            "-bind-to", "none", *rank_argv]


def srun_argv(srun: str, hosts: list[str], rank_argv: list[str]) -> list[str]:
    """``srun`` placing one rank per entry of :func:`layout` (``-m arbitrary``); ``-O`` lets
    the first node hold two ranks when the allocation holds one CPU per node."""
    return [srun, "-O", "-n", str(len(hosts) + 1), "-m", "arbitrary",
            "-w", ",".join(layout(hosts)), "--cpu-bind", "none", *rank_argv]


def hydra_bootstrap(scheduler: str, path: str) -> Optional[list[str]]:
    """Hydra's bootstrap flags under ``scheduler`` (None: not started by Hydra there)."""
    launcher = HYDRA_BOOTSTRAP.get(scheduler)
    if launcher is None:
        return None
    if scheduler == "pbs":
        tmrsh = shutil.which(PBS_RSH, path=path)
        if tmrsh:
            return ["-launcher", "rsh", "-launcher-exec", tmrsh]
    return ["-launcher", launcher]


def starts_with_hydra(scheduler: str, wheel: Optional[str], path: str) -> bool:
    """Whether :func:`ensemble_command` starts the ensemble with the wheel's Hydra there
    (Hydra forwards its stdin to rank 0, which the launcher relies on to start the ensemble
    before its session is open)."""
    return bool(wheel) and hydra_bootstrap(scheduler, path) is not None


def ensemble_command(scheduler: str, hosts: list[str], rank_argv: list[str],
                     task: LauncherChoice, wheel: Optional[str],
                     path: str) -> tuple[list[str], str]:
    """(argv starting ``1 + len(hosts)`` ranks of ``rank_argv``, why this way) for an
    allocation of ``scheduler`` whose tasks use ``task``; ``wheel`` is the wheel's mpiexec."""
    bootstrap = hydra_bootstrap(scheduler, path)
    if wheel and bootstrap is not None:
        return (hydra_argv(wheel, bootstrap, hosts, rank_argv),
                f"the mpich wheel's Hydra (matches this Python's mpi4py) with "
                f"{' '.join(bootstrap[1:])} under {scheduler}")
    if task.flavour == "srun" and task.executable:
        return (srun_argv(task.executable, hosts, rank_argv),
                f"the tasks' srun ({task.reason}), no mpich wheel beside this Python")
    spec = mpi.RunSpec(argv=rank_argv, ranks=len(hosts) + 1, ranks_per_node=1,
                       hosts=layout(hosts), cpu_affinity="none")
    why = f"the tasks' launcher {task.describe()}"
    if wheel:  # mpi4py here loads the wheel's MPICH, whose PMI aprun/jsrun do not serve
        why += ("; warning: the mpich wheel is installed with this Python, so its ranks may "
                "start as singletons: use an environment whose mpi4py is built against the "
                "site's MPI")
    return mpi.get(task.flavour).argv(spec, task.executable), why
