"""A launcher started inside another launch: ``mpiexec -n 1 balsam launcher ...`` under the
mpich wheel's Hydra, and a launcher whose environment holds a stale PMIx rank (a Jupyter
kernel or a workflow driver started by ``srun --mpi=pmix`` or Open MPI). The launcher's own
environment then describes the *outer* launch's process; the serial ensemble it starts and
the MPI-mode launches of its tasks must not believe they belong to that launch."""
from __future__ import annotations

import shutil
import sys

import pytest
from conftest import make_public_tmpdir
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, settings, states, workdir, write_script

from balsam.platform.mpi.choice import wheel_mpiexec

pytestmark = pytest.mark.slow

RANKS = """
import os
from mpi4py import MPI
comm = MPI.COMM_WORLD
with open(f"rank{comm.rank}", "w") as out:
    out.write(f"{comm.size} {comm.allreduce(comm.rank)}")
"""

STALE_PMIX = {"PMIX_RANK": "0", "PMIX_NAMESPACE": "outer-launch", "PMIX_SIZE": "1",
              "PMIX_SERVER_URI2": "pmix-server.1;tcp4://127.0.0.1:1",
              "PMIX_SERVER_URI3": "pmix-server.1;tcp4://127.0.0.1:1",
              "PMIX_SERVER_URI4": "pmix-server.1;tcp4://127.0.0.1:1",
              "PMIX_SERVER_URI21": "pmix-server.1;tcp4://127.0.0.1:1",
              "PMIX_SERVER_URI41": "pmix-server.1;tcp4://127.0.0.1:1",
              "PMIX_SECURITY_MODE": "native", "PMIX_GDS_MODULE": "hash"}
"""What an enclosing PMIx launch (``srun --mpi=pmix``, Open MPI's ``mpirun``, PALS) leaves in a
process it started, pointing at a server that is gone."""


@pytest.fixture
def scripts():
    path = make_public_tmpdir("balsam-nested-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def outer(how: str) -> tuple[tuple[str, ...], dict[str, str]]:
    """(prefix, extra environment) of the enclosing launch ``how``."""
    if how == "hydra":
        return (wheel_mpiexec(), "-n", "1"), {}
    return (), dict(STALE_PMIX)


@pytest.mark.parametrize("how", ["hydra", "pmix"])
def test_a_serial_launcher_inside_a_launch_runs_its_ensemble(db, cursor, how):
    add_app(cursor, "hello", "/bin/echo hello")
    add_jobs(cursor, [{"name": f"h{i}", "application": "hello"} for i in range(4)])
    prefix, env = outer(how)
    with settings(db, local_nodes=2, mpi="mpich", launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "serial", env=env, prefix=prefix)
        assert launcher.wait(90) == 0, launcher.diagnosis()
    assert set(states(cursor).values()) == {"JOB_FINISHED"}


@pytest.mark.parametrize("how", ["hydra", "pmix"])
def test_an_mpi_launcher_inside_a_launch_runs_a_two_rank_mpi4py_task(db, cursor, scripts,
                                                                       how):
    program = write_script(scripts, "ranks.py", RANKS)
    add_app(cursor, "ranks", f"{sys.executable} {program}")
    (job,) = add_jobs(cursor, [{"name": "two", "application": "ranks", "num_nodes": 1,
                                "ranks_per_node": 2}])
    prefix, env = outer(how)
    with settings(db, local_nodes=2, mpi="mpich", launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "mpi", env=env, prefix=prefix)
        assert launcher.wait(90) == 0, launcher.diagnosis()
    assert states(cursor) == {"two": "JOB_FINISHED"}, launcher.diagnosis()
    ranks = sorted(open(f"{workdir(db, cursor, job)}/rank{r}").read() for r in range(2))
    assert ranks == ["2 1", "2 1"]


def test_a_launcher_that_is_one_of_two_processes_of_an_outer_launch_refuses_to_start(db):
    with launchers() as start:
        launcher = start("--consume-all", "--job-mode", "mpi",
                         prefix=(wheel_mpiexec(), "-n", "2"))
        status = launcher.wait(60)
        out, err = launcher.output()
    assert status == 2, launcher.diagnosis()
    lines = err.strip().splitlines()
    assert lines == ["balsam launcher: error: this launcher is one of 2 processes of an enclosing "
                     "launch (PMI_SIZE=2); start one launcher per allocation (srun -n 1, "
                     "mpiexec -n 1)"] * 2, err
