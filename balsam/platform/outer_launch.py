"""A launcher started inside another launch, and the environment of the programs it starts.

Sites and users start ``balsam launcher`` under ``srun -n 1`` (every compute-node process a
job step), ``mpiexec -n 1``, or from a Jupyter kernel or workflow driver that an MPI launcher
started. The launcher's environment then carries that *outer* launch's per-process variables:
they describe the launcher's own process, never a process it starts. Measured (session 19):

- a stale PMIx rank (``PMIX_RANK``, ``PMIX_NAMESPACE``, ``PMIX_SERVER_URI*``) reaches the serial
  ensemble's ranks through Hydra, whose ``PMI_SIZE`` then sits beside ``PMIX_NAMESPACE``: the
  mpich wheel's ``MPI_Init`` aborts ("Found both env vars PMI_SIZE and PMIX_NAMESPACE");
- inside a Slurm step, ``SLURM_NNODES=1``, ``SLURM_NTASKS=1``, ``SLURM_DISTRIBUTION``... are
  *input* variables of every ``srun`` the launcher starts (``man srun``: same as ``-N``,
  ``-n``, ``-m``), and the step holds CPUs: an inner ``srun`` (Hydra's ``-launcher slurm``, the
  ``srun`` flavour) waits for ever ("Requested nodes are busy") unless it may overlap.

:func:`inner_environ` is the environment for those programs: without the outer launch's
per-process variables, keeping the allocation-wide ones (``SLURM_JOB_*``, ``PBS_*``,
``COBALT_*``, ``LSB_*``) a site's starter needs, and inside a Slurm step with
``SLURM_OVERLAP=1`` (``srun --overlap``, Slurm >= 20.11: a step sharing the CPUs the launcher's
own step holds). Standard library only: imported by the launcher before anything else.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

PROCESS_VARIABLES = frozenset({
    # Hydra (MPICH, Intel MPI, MVAPICH): measured under the wheel's `mpiexec -n 1`
    "PMI_RANK", "PMI_SIZE", "PMI_FD", "PMI_PORT", "PMI_ID", "PMI_HOSTNAME", "HYDI_CONTROL_FD",
    "MPI_LOCALRANKID", "MPI_LOCALNRANKS",
    # Slurm's PMI-2 (srun --mpi=pmi2)
    "PMI_JOBID", "PMI_SPAWNED", "PMI_APPNUM", "PMI_UNIVERSE_SIZE",
    # Cray ALPS/PALS, IBM JSM, Open MPI
    "ALPS_APP_PE", "ALPS_APP_ID", "PALS_RANKID", "PALS_NODEID", "PALS_LOCAL_RANKID",
    "PALS_LOCAL_SIZE", "PALS_APID", "JSM_NAMESPACE_RANK", "JSM_NAMESPACE_SIZE",
    "JSM_NAMESPACE_LOCAL_RANK", "OMPI_UNIVERSE_SIZE", "OMPI_FIRST_RANKS",
    "OMPI_APP_CTX_NUM_PROCS", "OMPI_MCA_orte_hnp_uri", "OMPI_MCA_ess_base_jobid",
    "OMPI_MCA_ess_base_vpid", "OMPI_MCA_orte_ess_num_procs"})
"""Variables a launch sets in each process it starts (its rank, its server's address)."""

PROCESS_PREFIXES = ("PMIX_", "OMPI_COMM_WORLD_")
"""Prefixes of the same (a PMIx server's client variables; ``PMIX_MCA_*`` is the user's
configuration and kept)."""

KEPT_PREFIXES = ("PMIX_MCA_",)

SLURM_STEP_VARIABLES = frozenset({
    "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_STEP_NODELIST", "SLURM_STEP_NUM_NODES",
    "SLURM_STEP_NUM_TASKS", "SLURM_STEP_TASKS_PER_NODE", "SLURM_STEP_LAUNCHER_PORT",
    "SLURM_STEP_GPUS", "SLURM_STEP_RESV_PORTS", "SLURM_PROCID", "SLURM_LOCALID",
    "SLURM_NODEID", "SLURM_GTIDS", "SLURM_TASK_PID", "SLURM_CPUS_ON_NODE", "SLURM_NNODES",
    "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_TASKS_PER_NODE", "SLURM_DISTRIBUTION",
    "SLURM_CPU_BIND", "SLURM_CPU_BIND_LIST", "SLURM_CPU_BIND_TYPE", "SLURM_CPU_BIND_VERBOSE",
    "SLURM_MEM_BIND", "SLURM_MEM_BIND_LIST", "SLURM_MEM_BIND_TYPE", "SLURM_MEM_BIND_VERBOSE",
    "SLURM_SRUN_COMM_HOST", "SLURM_SRUN_COMM_PORT", "SLURM_LAUNCH_NODE_IPADDR",
    "SLURM_PRIO_PROCESS", "SLURM_UMASK", "SLURM_TOPOLOGY_ADDR",
    "SLURM_TOPOLOGY_ADDR_PATTERN", "SLURM_JOB_CPUS_PER_NODE_PACK_GROUP_0"})
"""What ``srun`` sets in a step's tasks beyond the batch script's environment (measured on
Slurm 22.05: ``env`` in ``salloc -N 2`` against ``srun -n 1 env``). ``SLURM_NNODES``,
``SLURM_NTASKS``, ``SLURM_NPROCS``, ``SLURM_DISTRIBUTION`` and ``SLURM_CPU_BIND`` are also
``srun`` *input* variables: left in place they would shape every step the launcher starts
like the launcher's own one-task step."""

STEP_MARKERS = ("SLURM_STEP_ID", "SLURM_STEPID")


def slurm_step(environ: Mapping[str, str]) -> Optional[str]:
    """``JOB.STEP`` when ``environ`` is a process of a Slurm job step (not the batch script
    itself, which has no step id), else None."""
    step = next((environ[name] for name in STEP_MARKERS if environ.get(name)), None)
    if step is None or not environ.get("SLURM_JOB_ID"):
        return None
    return f"{environ['SLURM_JOB_ID']}.{step}"


def is_process_variable(name: str) -> bool:
    """True if ``name`` is a per-process variable of an enclosing MPI launch."""
    if name in PROCESS_VARIABLES:
        return True
    return name.startswith(PROCESS_PREFIXES) and not name.startswith(KEPT_PREFIXES)


def inner_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for a program the launcher starts (the serial ensemble's starter, an
    MPI-mode launch): ``environ`` without the enclosing launch's per-process variables, and,
    when the launcher runs inside a Slurm step, without that step's variables and with
    ``SLURM_OVERLAP=1``."""
    in_step = slurm_step(environ) is not None
    env = {name: value for name, value in environ.items()
           if not is_process_variable(name)
           and not (in_step and name in SLURM_STEP_VARIABLES)}
    if in_step:
        env["SLURM_OVERLAP"] = "1"
    return env


def outer_tasks(environ: Mapping[str, str]) -> Optional[tuple[int, str]]:
    """(tasks, the variable saying so) when the launcher is one of several processes of an
    enclosing launch (``srun -n 4 balsam launcher``, ``mpiexec -n 4 ...``): each would take
    the whole allocation for itself. None for a single process or no enclosing launch. An MPI
    launcher's own count wins over the Slurm step's: Hydra under Slurm starts its proxies as
    a step, one task per node, whatever the number of ranks."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if name in environ:
            return _count(environ, name)
    if slurm_step(environ) is None:
        return None
    return _count(environ, "SLURM_STEP_NUM_TASKS")


def _count(environ: Mapping[str, str], name: str) -> Optional[tuple[int, str]]:
    value = environ.get(name, "")
    return (int(value), name) if value.isdigit() and int(value) > 1 else None
