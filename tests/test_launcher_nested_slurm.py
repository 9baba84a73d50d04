"""On the real Slurm: a launcher started as a job step (``srun -n 1 balsam launcher ...`` in a
batch script, as sites that want every compute-node process to be a step do it). Its own
environment then describes that step (``SLURM_STEP_ID``, ``SLURM_NNODES=1``,
``SLURM_NTASKS=1``, ``SLURM_PROCID``...), and that step holds CPUs the steps it starts need:
the serial ensemble (the wheel's Hydra bootstrapped by ``srun``) and an MPI-mode task's
``srun`` must still run across the allocation. Skipped, with the reason, where no Slurm runs."""
from __future__ import annotations

import os
import shutil
import sys

import pytest
from conftest import make_public_tmpdir
from launcher_support import QUICK, add_app, add_jobs, settings, states, workdir
from slurm_support import (
    Slurm,
    batch_env,
    read_lines,
    slurm_fixture,  # noqa: F401 - the `slurm` fixture
    write_script,
)

from balsam.platform.mpi.choice import wheel_mpiexec

pytestmark = pytest.mark.slow

RANKS = """
import os, socket
from mpi4py import MPI
comm = MPI.COMM_WORLD
with open(f"rank{comm.rank}", "w") as out:
    out.write(f"{comm.size} {comm.allreduce(comm.rank)} {socket.gethostname()}")
"""


@pytest.fixture
def tmp():
    path = make_public_tmpdir("balsam-nested-slurm-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


STARTERS = {"srun": "srun -n 1", "hydra": f"{wheel_mpiexec()} -n 1"}
"""How the batch script starts the launcher: a one-task ``srun`` step, or the wheel's
``mpiexec -n 1`` (whose Hydra reaches the node through ``srun`` too under Slurm: the launcher
then has the step's variables and Hydra's ``PMI_*``)."""


def step_script(tmp: str, mode: str, starter: str) -> str:
    """A batch script starting the launcher with ``STARTERS[starter]``."""
    return write_script(tmp, "launch.sh", f"#!/bin/bash\nexec {STARTERS[starter]} "
                                          f"{sys.executable} -m balsam launcher --job-mode "
                                          f"{mode} --consume-all\n")


def launcher_log(out: list[str]) -> str:
    """The text of the log file the launcher's output names."""
    line = next(line for line in out if ", log " in line)
    return "\n".join(read_lines(line.split(", log ")[-1].strip()))


@pytest.mark.parametrize("starter", sorted(STARTERS))
def test_a_serial_launcher_started_as_a_step_runs_its_ensemble_across_two_nodes(
        slurm: Slurm, db: str, cursor, tmp: str, starter: str) -> None:
    add_app(cursor, "host", "/bin/sh -c 'sleep 0.2; hostname'")
    ids = add_jobs(cursor, [{"name": f"s{i}", "application": "host"} for i in range(8)])
    with settings(db, machine="generic-slurm", mpi="srun", launcher=QUICK):
        job_id = slurm.sbatch(step_script(tmp, "serial", starter), "-N", "2", "-t", "3", "-o",
                              "launcher.out", cwd=tmp, env=batch_env(db))
        info = slurm.wait_done(job_id, timeout=240)
    out = read_lines(os.path.join(tmp, "launcher.out"))
    assert (info.state, info.exit_code) == ("COMPLETED", "0:0"), out
    assert set(states(cursor).values()) == {"JOB_FINISHED"}, out
    seen = {open(os.path.join(workdir(db, cursor, j), f"s{i}.out")).read().strip()
            for i, j in enumerate(ids)}
    assert seen == set(info.nodes)  # a worker on each node of the allocation
    assert f"running inside Slurm step {job_id}." in launcher_log(out)


@pytest.mark.parametrize("starter", sorted(STARTERS))
def test_an_mpi_launcher_started_as_a_step_runs_a_two_node_task_with_srun(
        slurm: Slurm, db: str, cursor, tmp: str, starter: str) -> None:
    program = write_script(tmp, "ranks.py", RANKS)
    add_app(cursor, "ranks", f"{sys.executable} {program}")
    (job,) = add_jobs(cursor, [{"name": "four", "application": "ranks", "num_nodes": 2,
                                "ranks_per_node": 2, "mpi_flags": "--mpi=pmi2"}])
    with settings(db, machine="generic-slurm", mpi="srun", launcher=QUICK):
        job_id = slurm.sbatch(step_script(tmp, "mpi", starter), "-N", "2", "--exclusive", "-t", "3", "-o",
                              "launcher.out", cwd=tmp, env=batch_env(db))
        info = slurm.wait_done(job_id, timeout=240)
    out = read_lines(os.path.join(tmp, "launcher.out"))
    assert (info.state, info.exit_code) == ("COMPLETED", "0:0"), out
    assert states(cursor) == {"four": "JOB_FINISHED"}, out
    ranks = sorted(open(os.path.join(workdir(db, cursor, job), f"rank{r}")).read().split()
                   for r in range(4))
    assert ranks == [["4", "6", node] for node in sorted(info.nodes) for _ in (0, 1)]
