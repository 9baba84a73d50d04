"""The real-Slurm test infrastructure works: batch jobs get several emulated nodes, srun and the
mpich wheel's mpiexec place processes on each of them, scancel ends a running job and Slurm
records it CANCELLED, and Balsam launchers (MPI and serial mode) inside an ``sbatch -N 2``
allocation run jobs of the test DB across both nodes. Skipped, with the reason, where no Slurm runs (see
``tests/slurm_support.py``; ``tests/run.sh`` starts one when it can)."""
from __future__ import annotations

import os
import sys

import pytest
from conftest import make_public_tmpdir
from launcher_support import QUICK, add_app, add_jobs, settings, states, wait_for, workdir
from slurm_support import (
    Slurm,
    batch_env,
    read_lines,
    slurm_command,
    slurm_fixture,  # noqa: F401 - the `slurm` fixture
    write_script,
)

from balsam.core import schema
from balsam.launcher.context import FINISHED_REASON

pytestmark = pytest.mark.slow


@pytest.fixture
def tmp() -> str:
    """A 0755 directory every node (and the DB server account) can reach."""
    return make_public_tmpdir("balsam-slurm-")


def accounting_state(job_id: str) -> str:
    """The final state in Slurm's accounting: plain ``sacct`` when slurmdbd runs, else the job
    completion log (``sacct -c``); "" when neither knows the job yet."""
    for argv in (["sacct", "-X"], ["sacct", "-c"]):
        out = slurm_command(*argv, "-j", job_id, "-n", "-P", "-o", "jobid,state", check=False)
        rows = [r.split("|") for r in out.stdout.splitlines() if r.startswith(f"{job_id}|")]
        if out.returncode == 0 and rows:
            return rows[-1][1].split()[0]  # "CANCELLED by 0" -> CANCELLED
    return ""


NODE_REPORT = """#!/bin/bash
echo "nodelist $SLURM_JOB_NODELIST"
srun -N 2 -n 2 bash -c 'echo "task $SLURM_PROCID node $SLURMD_NODENAME host $(hostname -s)"' | sort
"""


def test_a_two_node_batch_job_gets_two_nodes_and_srun_runs_a_task_on_each(slurm: Slurm,
                                                                          tmp: str) -> None:
    script = write_script(tmp, "nodes.sh", NODE_REPORT)
    job_id = slurm.sbatch(script, "-N", "2", "-n", "2", "-t", "2", "-o", "nodes.out", cwd=tmp)
    info = slurm.wait_done(job_id, timeout=60)
    assert (info.state, info.exit_code) == ("COMPLETED", "0:0")
    lines = read_lines(os.path.join(tmp, "nodes.out"))
    nodes = slurm_command("scontrol", "show", "hostnames", lines[0].split()[1]).stdout.split()
    assert len(nodes) == 2 and len(set(nodes)) == 2 and nodes == info.nodes
    # Each task runs on its own node, whose host name is the node's name.
    assert lines[1:] == [f"task {i} node {n} host {n}" for i, n in enumerate(nodes)]


MPI_RANKS = """
import os
import socket
from mpi4py import MPI
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.rank)
with open(f"rank{comm.rank}", "w") as out:
    out.write(f"{comm.size} {os.environ['SLURMD_NODENAME']} {socket.gethostname()} {total}")
"""


def test_the_mpich_wheel_mpiexec_runs_four_mpi4py_ranks_across_a_two_node_allocation(
        slurm: Slurm, tmp: str) -> None:
    program = write_script(tmp, "ranks.py", MPI_RANKS)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    script = write_script(tmp, "mpi.sh", f"#!/bin/bash\nexec {mpiexec} -n 4 {sys.executable} "
                                         f"{program}\n")
    job_id = slurm.sbatch(script, "-N", "2", "-n", "4", "-t", "2", "-o", "mpi.out", cwd=tmp)
    info = slurm.wait_done(job_id, timeout=90)
    assert (info.state, info.exit_code) == ("COMPLETED", "0:0"), read_lines(
        os.path.join(tmp, "mpi.out"))
    ranks = []
    for rank in range(4):
        with open(os.path.join(tmp, f"rank{rank}")) as fh:
            ranks.append(fh.read().split())
    # 4 ranks in one communicator (allreduce of 0+1+2+3), 2 on each node of the allocation.
    assert [r[0] for r in ranks] == ["4"] * 4 and [r[3] for r in ranks] == ["6"] * 4
    assert sorted(r[1] for r in ranks) == sorted(info.nodes * 2)
    assert all(node == host for _, node, host, _ in ranks)


SLEEPER = """#!/bin/bash
echo $$ > pid
sleep 300
"""


def test_scancel_ends_a_running_batch_job_and_slurm_records_it_cancelled(slurm: Slurm,
                                                                         tmp: str) -> None:
    script = write_script(tmp, "sleeper.sh", SLEEPER)
    job_id = slurm.sbatch(script, "-N", "1", "-t", "5", "-o", "/dev/null", cwd=tmp)
    assert slurm.wait_running(job_id).state == "RUNNING"
    assert slurm.jobs_from(tmp) == [job_id] and slurm.jobs_from(tmp + "-other") == []
    pid = int(wait_for(lambda: os.path.exists(os.path.join(tmp, "pid"))
                       and read_lines(os.path.join(tmp, "pid")), 10, "the job's pid")[0])
    slurm.cancel(job_id)
    info = slurm.wait_done(job_id, timeout=30)
    assert (info.state, info.source) == ("CANCELLED", "scontrol")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, "the batch script to exit")
    if os.geteuid() == 0 or os.access(job_info_log(), os.W_OK):
        assert wait_for(lambda: accounting_state(job_id), 10, "accounting") == "CANCELLED"


def job_info_log() -> str:
    """The job completion log ``sacct -c`` reads (it opens it for appending)."""
    out = slurm_command("scontrol", "show", "config").stdout
    return next((line.split("=", 1)[1].strip() for line in out.splitlines()
                 if line.startswith("JobCompLoc")), "")


HOSTNAME_AND_RANKS = """
import socket
from mpi4py import MPI
comm = MPI.COMM_WORLD
with open(f"rank{comm.rank}", "w") as out:
    out.write(f"{comm.size} {socket.gethostname()}")
"""


def test_a_balsam_launcher_in_a_two_node_sbatch_allocation_runs_jobs_on_both_nodes(
        slurm: Slurm, db: str, cursor, tmp: str) -> None:
    program = write_script(tmp, "where.py", HOSTNAME_AND_RANKS)
    add_app(cursor, "where", f"{sys.executable} {program}")
    add_app(cursor, "host", "/bin/hostname")
    two, one = add_jobs(cursor, [{"name": "two_nodes", "application": "where", "num_nodes": 2},
                                 {"name": "one_node", "application": "host"}])
    script = write_script(tmp, "launch.sh", f"#!/bin/bash\nexec {sys.executable} -m balsam "
                                            "launcher --job-mode mpi --consume-all\n")
    with settings(db, mpi="mpich", launcher=QUICK):
        job_id = slurm.sbatch(script, "-N", "2", "-t", "5", "-o", "launcher.out", cwd=tmp,
                              env=batch_env(db))
        info = slurm.wait_done(job_id, timeout=120)
    out = read_lines(os.path.join(tmp, "launcher.out"))
    assert (info.state, info.exit_code) == ("COMPLETED", "0:0"), out
    assert out[0].startswith("Balsam launcher: mpi mode, 2 node(s) (slurm), session "), out
    assert states(cursor) == {"two_nodes": "JOB_FINISHED", "one_node": "JOB_FINISHED"}
    ranks = []
    for rank in (0, 1):
        with open(os.path.join(workdir(db, cursor, two), f"rank{rank}")) as fh:
            ranks.append(fh.read())
    assert sorted(ranks) == [f"2 {node}" for node in sorted(info.nodes)]
    with open(os.path.join(workdir(db, cursor, one), "one_node.out")) as fh:
        assert fh.read().strip() in info.nodes
    cursor.execute(f"SELECT hostname, scheduler_id, num_nodes, end_reason FROM "
                   f"{schema.SESSION_TABLE} WHERE job_mode <> 'processing'")
    ((hostname, scheduler_id, num_nodes, end_reason),) = cursor.fetchall()
    # The launcher ran on the allocation's first node, not on the machine running the tests.
    assert (hostname, scheduler_id, num_nodes) == (info.nodes[0], job_id, 2)
    assert end_reason == FINISHED_REASON  # its work done: no idling


def test_a_serial_mode_launcher_in_a_two_node_sbatch_allocation_uses_both_nodes(
        slurm: Slurm, db: str, cursor, tmp: str) -> None:
    add_app(cursor, "host", "/bin/sh -c 'sleep 0.5; hostname'")
    ids = add_jobs(cursor, [{"name": f"s{i}", "application": "host"} for i in range(6)])
    script = write_script(tmp, "launch.sh", f"#!/bin/bash\nexec {sys.executable} -m balsam "
                                            "launcher --job-mode serial --consume-all\n")
    with settings(db, launcher=QUICK):
        job_id = slurm.sbatch(script, "-N", "2", "-t", "5", "-o", "launcher.out", cwd=tmp,
                              env=batch_env(db))
        info = slurm.wait_done(job_id, timeout=120)
    out = read_lines(os.path.join(tmp, "launcher.out"))
    assert (info.state, info.exit_code) == ("COMPLETED", "0:0"), out
    assert out[0].startswith("Balsam launcher: serial mode, 2 node(s) (slurm), session "), out
    assert set(states(cursor).values()) == {"JOB_FINISHED"}
    hosts = []
    for i, balsam_id in enumerate(ids):
        with open(os.path.join(workdir(db, cursor, balsam_id), f"s{i}.out")) as fh:
            hosts.append(fh.read().strip())
    # One worker per node, 2 slots each: the 6 tasks ran on both nodes of the allocation.
    assert sorted(set(hosts)) == sorted(info.nodes)
