"""On the real Slurm (4 emulated nodes, each with its own host name): the generic-slurm job
script (whole nodes) runs a launcher that runs a 2-node, 4-rank mpi4py task with the site's
``srun`` although the script puts the mpich wheel's ``mpiexec`` first on PATH; a serial-mode
launcher starts its ensemble across all 4 nodes (the wheel's Hydra bootstrapped by ``srun``)
with every worker rank on the node it serves; a SIGTERM to that launcher alone stops the tasks
on every node. Skipped, with the reason, where no Slurm runs."""
from __future__ import annotations

import os
import re
import shutil
import sys

import pytest
from conftest import make_public_tmpdir
from launcher_support import QUICK, add_app, add_jobs, settings, states, wait_for, workdir
from slurm_support import (
    USABLE_NODE_STATES,
    Slurm,
    batch_env,
    read_lines,
    slurm_command,
    slurm_fixture,  # noqa: F401 - the `slurm` fixture
    write_script,
)

from balsam.platform import machines
from balsam.platform.mpi.choice import wheel_mpiexec

pytestmark = pytest.mark.slow


@pytest.fixture
def tmp() -> str:
    """A 0755 directory every node (and the DB server account) can reach."""
    return make_public_tmpdir("balsam-slurm-mpi-")


def launcher_log(out_lines: list[str]) -> list[str]:
    """The lines of the log file named on the launcher's first output line."""
    return read_lines(out_lines[0].split(" log ")[-1].strip())


def usable_nodes() -> int:
    """Nodes that take jobs (busy ones too: a job for them just queues)."""
    out = slurm_command("sinfo", "-h", "-N", "-o", "%N %t").stdout.splitlines()
    return sum(1 for line in out if line.split()[-1:] and line.split()[-1] in USABLE_NODE_STATES)


RANKS = """
import socket
from mpi4py import MPI
comm = MPI.COMM_WORLD
with open(f"rank{comm.rank}", "w") as out:
    out.write(f"{comm.size} {comm.allreduce(comm.rank)} {socket.gethostname()}")
"""


def test_the_generic_slurm_job_script_runs_a_two_node_mpi4py_task_with_the_sites_srun(
        slurm: Slurm, db: str, cursor, tmp: str) -> None:
    program = write_script(tmp, "ranks.py", RANKS)
    add_app(cursor, "ranks", f"{sys.executable} {program}")
    # This test Slurm has MpiDefault=none: the wheel's MPICH needs srun's PMI-2 server.
    (job,) = add_jobs(cursor, [{"name": "four", "application": "ranks", "num_nodes": 2,
                                "ranks_per_node": 2, "mpi_flags": "--mpi=pmi2"}])
    # The profile's own job template (whole nodes; the wheel's bin directory first on PATH).
    profile = machines.load("generic-slurm")
    text = machines.render(profile.template_text(), machines.template_values(
        profile, project="test", queue="debug", nodes=2, time_minutes=5, job_mode="mpi",
        db_path=db, balsam_bin=os.path.dirname(sys.executable), python=sys.executable))
    script = write_script(tmp, "job.sh", text)
    with settings(db, machine="generic-slurm", mpi="srun", launcher=QUICK):
        job_id = slurm.sbatch(script, "-o", "launcher.out", cwd=tmp, env=batch_env(db))
        info = slurm.wait_done(job_id, timeout=120)
    out = read_lines(os.path.join(tmp, "launcher.out"))
    assert (info.state, info.exit_code) == ("COMPLETED", "0:0"), out
    assert states(cursor) == {"four": "JOB_FINISHED"}, out
    srun = shutil.which("srun")
    assert f"MPI srun ({srun}: the site's srun, found on PATH (profile generic-slurm))" in \
        launcher_log(out)[0]
    ranks = sorted(open(os.path.join(workdir(db, cursor, job), f"rank{r}")).read().split()
                   for r in range(4))
    # One MPI job of 4 ranks (allreduce 0+1+2+3), two on each node, on that node's host.
    assert ranks == [["4", "6", node] for node in sorted(info.nodes) for _ in (0, 1)]


def test_a_serial_ensemble_starts_across_four_nodes_with_each_worker_on_its_own_node(
        slurm: Slurm, db: str, cursor, tmp: str) -> None:
    if usable_nodes() < 4:
        pytest.skip(f"the test Slurm has {usable_nodes()} usable node(s), this test needs 4")
    add_app(cursor, "host", "/bin/sh -c 'sleep 0.3; hostname'")
    ids = add_jobs(cursor, [{"name": f"s{i}", "application": "host"} for i in range(16)])
    script = write_script(tmp, "launch.sh", f"#!/bin/bash\nexec {sys.executable} -m balsam "
                                            "launcher --job-mode serial --consume-all\n")
    with settings(db, machine="generic-slurm", mpi="srun", launcher=QUICK):
        job_id = slurm.sbatch(script, "-N", "4", "-t", "5", "-o", "launcher.out", cwd=tmp,
                              env=batch_env(db))
        info = slurm.wait_done(job_id, timeout=240)  # it may queue behind other tests' jobs
    out = read_lines(os.path.join(tmp, "launcher.out"))
    assert (info.state, info.exit_code) == ("COMPLETED", "0:0"), out
    assert set(states(cursor).values()) == {"JOB_FINISHED"}
    log = launcher_log(out)
    started = next(line for line in log if "serial mode: 1 master + 4 worker rank(s)" in line)
    assert (f"started by {wheel_mpiexec()} -launcher slurm ... (before the session opens): "
            "the mpich wheel's Hydra") in started  # early: rank 0 gets the session id on stdin
    master = next(line for line in log if "serial master on host" in line)
    assert f"serial master on host {info.nodes[0]}:" in master
    # Its rank from Hydra's PMI_RANK before MPI_Init, though the batch step's environment and
    # Hydra's srun-started proxies give the ranks SLURM_* variables too (ignored under Hydra)
    assert master.endswith("rank 0 known before MPI_Init (PMI_RANK)"), master
    workers = dict(re.findall(r"serial worker (\d) \(node (\S+), host", "\n".join(log)))
    hosts = dict(re.findall(r"serial worker (\d) \(node \S+, host (\S+)\)", "\n".join(log)))
    # Worker i serves node i-1 and runs there (the old -ppn 1 layout put them round-robin).
    assert workers == hosts == {str(i + 1): node for i, node in enumerate(info.nodes)}
    seen = {open(os.path.join(workdir(db, cursor, j), f"s{i}.out")).read().strip()
            for i, j in enumerate(ids)}
    assert seen == set(info.nodes)


def sleepers_alive(seconds: str) -> list[int]:
    """Pids of ``sleep SECONDS`` processes on this machine (every emulated node's, too)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if fh.read().split(b"\0")[:2] == [b"/bin/sleep", seconds.encode()]:
                    pids.append(int(entry))
        except (OSError, ValueError):
            continue
    return pids


def test_a_sigterm_to_the_launcher_stops_the_ensembles_tasks_on_every_node(
        slurm: Slurm, db: str, cursor, tmp: str) -> None:
    add_app(cursor, "nap", "/bin/sleep 987")
    ids = add_jobs(cursor, [{"name": f"n{i}", "application": "nap", "node_packing_count": 2}
                            for i in range(4)])
    script = write_script(tmp, "launch.sh", f"#!/bin/bash\nexec {sys.executable} -m balsam "
                                            "launcher --job-mode serial --consume-all\n")
    with settings(db, machine="generic-slurm", mpi="srun", cores_per_node=2, launcher=QUICK):
        job_id = slurm.sbatch(script, "-N", "2", "-t", "5", "-o", "launcher.out", cwd=tmp,
                              env=batch_env(db))
        wait_for(lambda: len(sleepers_alive("987")) == 4, 60, "4 tasks to run on 2 nodes")
        # Only the launcher (the batch shell) is signalled: it must stop the ranks itself,
        # through Hydra and its srun step.
        slurm_command("scancel", "--batch", "--signal=TERM", job_id)
        info = slurm.wait_done(job_id, timeout=60)
    out = read_lines(os.path.join(tmp, "launcher.out"))
    assert (info.state, info.exit_code) == ("COMPLETED", "0:0"), out
    for job in ids:
        cursor.execute("SELECT from_state, message FROM core_jobevent WHERE job_id = %s "
                       "AND to_state = 'RUN_TIMEOUT'", [job])
        assert cursor.fetchall() == [("RUNNING", "stopped by the launcher: the launcher "
                                                 "received SIGTERM")]
    assert sleepers_alive("987") == []
    log = "\n".join(launcher_log(out))
    assert set(re.findall(r"serial worker \d \(node \S+, host (\S+)\)", log)) == set(info.nodes)
