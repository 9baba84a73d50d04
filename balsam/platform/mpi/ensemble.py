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

Each rank learns its rank from the program that started it before ``MPI_Init``
(:func:`rank_evidence`: rank 0 then connects to the database while MPI initialises, a worker's
watchdog is up before MPI makes its shared-memory file), but only from the one variable that
program sets (``PMI_RANK`` under Hydra, ``SLURM_PROCID`` under ``srun``, ``ALPS_APP_PE``,
``JSM_NAMESPACE_RANK``, ``OMPI_COMM_WORLD_RANK``, ``PALS_RANKID``), and only when it provably
comes from this launch: the launcher removes that variable and its count variable from the
environment it starts the program with and adds a random launch id, which the ranks compare
with the one in their command line (:mod:`balsam.platform.early_rank`). A value inherited
from an enclosing job step (``SLURM_PROCID=0`` in a batch script, an outer ``mpiexec``'s
``PMI_RANK``) never reaches a rank, so it cannot make every rank rank 0.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from itertools import groupby
from typing import Optional

from balsam.platform import mpi
from balsam.platform.mpi.choice import LauncherChoice

HYDRA_BOOTSTRAP = {"local": "fork", "slurm": "slurm", "pbs": "ssh"}
"""Hydra's ``-launcher`` per scheduler; schedulers absent here use the task launcher."""
PBS_RSH = "pbs_tmrsh"
"""PBS's rsh-compatible task spawner (TM interface), used as Hydra's rsh under PBS."""
LOCAL_MPI_ENV = {"MPIR_CVAR_CH4_NETMOD": "ofi"}
"""The ensemble's own MPI settings when every rank runs on this one host (``local``, Hydra's
fork bootstrap), each unless the environment sets it: the wheel's MPICH (``ch4:ucx,ofi``)
loads and initialises its OFI network module (libfabric) in ~15 ms less CPU per rank than its
default UCX one, and finalizes ~5 ms sooner (benchmarks/README.md, "Issue 16, session 19");
ranks on one host exchange their messages through MPICH's shared memory whichever module is
loaded. Not under a scheduler: which module serves a site's network is the site's question.
The tasks never see these (:func:`balsam.launcher.serial_mode.SerialConfig` lists them)."""


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


def ensemble_mpi_environ(scheduler: str, wheel: Optional[str], path: str,
                         environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add to the ensemble's environment for its own MPI library
    (:data:`LOCAL_MPI_ENV` when the wheel's Hydra starts every rank on this host and the wheel
    ships libfabric), without those ``environ`` already sets (the user's choice wins)."""
    if scheduler != "local" or not starts_with_hydra(scheduler, wheel, path):
        return {}
    if not wheel or not _ships_libfabric(wheel):  # (MPICH without OFI crashes on "ofi")
        return {}
    return {name: value for name, value in LOCAL_MPI_ENV.items() if name not in environ}


def _ships_libfabric(wheel: str) -> bool:
    """Whether the MPICH beside the wheel's ``mpiexec`` (``<prefix>/bin``) has libfabric
    (``<prefix>/lib/mpich/libfabric.so*``): an MPICH built without the OFI module segfaults
    in ``MPI_Init`` when asked for it (measured with an unknown module name)."""
    lib = os.path.join(os.path.dirname(os.path.dirname(wheel)), "lib", "mpich")
    try:
        return any(name.startswith("libfabric.so") for name in os.listdir(lib))
    except OSError:
        return False


def starter(scheduler: str, task: LauncherChoice, wheel: Optional[str], path: str) -> str:
    """The flavour of the program :func:`ensemble_command` starts the ensemble with (``mpich``
    for the wheel's Hydra)."""
    if wheel and hydra_bootstrap(scheduler, path) is not None:
        return "mpich"
    return "srun" if task.flavour == "srun" and task.executable else task.flavour


def rank_evidence(scheduler: str, task: LauncherChoice, wheel: Optional[str],
                  path: str) -> dict[str, str]:
    """What tells a rank its rank before ``MPI_Init`` in the ensemble :func:`ensemble_command`
    starts (the ranks get it in their command line): ``rank`` and ``size``, the variables the
    starting program sets (``RANK_VARIABLE``, ``SIZE_VARIABLE`` of its flavour), and ``id``,
    this launch's random id, which :func:`balsam.platform.early_rank.ensemble_environ`
    puts in the program's environment. Empty when that program sets no rank variable."""
    flavour = mpi.get(starter(scheduler, task, wheel, path))
    if not flavour.RANK_VARIABLE:
        return {}
    return {"rank": flavour.RANK_VARIABLE, "size": flavour.SIZE_VARIABLE,
            "id": os.urandom(8).hex()}


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
    if task.executable and starter(scheduler, task, wheel, path) == "srun":
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
