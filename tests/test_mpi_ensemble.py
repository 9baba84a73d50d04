"""How the serial-mode ensemble starts per scheduler (balsam.platform.mpi.ensemble): the mpich
wheel's Hydra with the scheduler's bootstrap (fork, slurm, pbs_tmrsh or ssh), the tasks'
launcher on Cobalt/LSF or without the wheel, and a layout that puts the master and worker 1 on
the first node and worker i on node i-1. The commands are checked against the recording fakes'
grammars, and the local one is run for real. (The Slurm one runs on the real Slurm in
tests/test_slurm_mpi.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from balsam.platform.mpi.choice import LauncherChoice, wheel_mpiexec
from balsam.platform.mpi.ensemble import ensemble_command, ensemble_mpi_environ, starts_with_hydra

FAKES = Path(__file__).parent / "fakes" / "bin"
RANK = ["python", "-m", "ranks"]
HYDRA = LauncherChoice("mpich", "/site/mpiexec", "the site's mpiexec")


def command(scheduler, hosts, task=HYDRA, wheel="/venv/bin/mpiexec", path=""):
    return ensemble_command(scheduler, hosts, RANK, task, wheel, path)


@pytest.mark.parametrize("scheduler, bootstrap", [("local", "fork"), ("slurm", "slurm"),
                                                  ("pbs", "ssh")])
def test_the_wheels_hydra_starts_the_ensemble_with_the_schedulers_bootstrap(scheduler, bootstrap):
    argv, why = command(scheduler, ["n1", "n2", "n3"])
    assert argv == ["/venv/bin/mpiexec", "-launcher", bootstrap, "-n", "4", "-hosts",
                    "n1:2,n2:1,n3:1", "-bind-to", "none", *RANK]
    assert why == (f"the mpich wheel's Hydra (matches this Python's mpi4py) with {bootstrap} "
                   f"under {scheduler}")


def test_emulated_local_nodes_are_one_host_holding_every_rank():
    argv, _ = command("local", ["vm", "vm", "vm"])
    assert argv[3:7] == ["-n", "4", "-hosts", "vm:4"]


def test_under_pbs_hydra_reaches_the_nodes_through_pbs_tmrsh_when_it_is_there(tmp_path):
    tmrsh = tmp_path / "pbs_tmrsh"
    tmrsh.write_text("#!/bin/sh\n")
    tmrsh.chmod(0o755)
    argv, why = command("pbs", ["x1", "x2"], path=str(tmp_path))
    assert argv[:8] == ["/venv/bin/mpiexec", "-launcher", "rsh", "-launcher-exec", str(tmrsh),
                        "-n", "3", "-hosts"]
    assert why.endswith(f"with rsh -launcher-exec {tmrsh} under pbs")


@pytest.mark.parametrize("scheduler, task, expected", [
    ("cobalt", LauncherChoice("aprun", "/usr/bin/aprun", "the site's aprun"),
     ["/usr/bin/aprun", "-n", "3", "-N", "1", "-L", "1,1,2", "-cc", "none", "-d", "1", "-j", "1"]),
    ("lsf", LauncherChoice("jsrun", "/opt/jsrun", "the site's jsrun"),
     ["/opt/jsrun", "-n", "3", "-a", "1", "-c", "1", "-g", "0", "-r", "1", "-b", "none"]),
])
def test_cobalt_and_lsf_start_the_ensemble_with_the_tasks_launcher(scheduler, task, expected):
    argv, why = command(scheduler, ["nid00001", "nid00002"], task=task, wheel=None)
    assert argv == expected + RANK
    assert why == f"the tasks' launcher {task.describe()}"
    # With the wheel installed, its MPICH cannot be started that way: the log line says so.
    assert command(scheduler, ["nid00001", "nid00002"], task=task)[1] == (
        f"the tasks' launcher {task.describe()}; warning: the mpich wheel is installed with "
        "this Python, so its ranks may start as singletons: use an environment whose mpi4py "
        "is built against the site's MPI")


def test_without_the_wheel_slurm_places_the_ranks_with_srun_arbitrary_distribution():
    task = LauncherChoice("srun", "/usr/bin/srun", "the site's srun")
    argv, why = command("slurm", ["n1", "n2"], task=task, wheel=None)
    assert argv == ["/usr/bin/srun", "-O", "-n", "3", "-m", "arbitrary", "-w", "n1,n1,n2",
                    "--cpu-bind", "none", *RANK]
    assert why == "the tasks' srun (the site's srun), no mpich wheel beside this Python"


def test_without_the_wheel_a_local_ensemble_uses_the_tasks_mpiexec():
    argv, why = command("local", ["vm"], wheel=None)
    assert argv[:3] == ["/site/mpiexec", "-n", "2"] and "the tasks' launcher" in why


def run_fake(argv, tmp_path):
    log = tmp_path / "launches.jsonl"
    env = dict(os.environ, PATH=f"{FAKES}:{os.environ['PATH']}", BALSAM_FAKE_LOG=str(log))
    proc = subprocess.run([argv[0].rsplit("/", 1)[-1], *argv[1:]], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("scheduler, task, wheel", [
    ("slurm", HYDRA, "/venv/bin/mpiexec"), ("pbs", HYDRA, "/venv/bin/mpiexec"),
    ("slurm", LauncherChoice("srun", "/usr/bin/srun", "site"), None),
])
def test_the_ensemble_commands_are_accepted_by_their_launchers_grammar(scheduler, task, wheel,
                                                                       tmp_path):
    tmrsh = tmp_path / "pbs_tmrsh"
    tmrsh.write_text("#!/bin/sh\n")
    tmrsh.chmod(0o755)
    argv, _ = ensemble_command(scheduler, ["n1", "n2"], ["/bin/true"], task, wheel, str(tmp_path))
    (call,) = run_fake(argv, tmp_path)
    assert call["argv"] == argv[1:] and call["app"] == ["/bin/true"]


PROGRAM = """
import socket, sys
from mpi4py import MPI
comm = MPI.COMM_WORLD
with open(f"{sys.argv[1]}/rank{comm.rank}", "w") as out:
    out.write(f"{comm.size} {socket.gethostname()}")
"""


def test_the_local_ensemble_command_runs_its_ranks_in_one_mpi_job(tmp_path):
    wheel = wheel_mpiexec()
    assert wheel, "the mpich wheel must be installed for the tests"
    argv, _ = ensemble_command("local", ["h", "h", "h"], [sys.executable, "-c", PROGRAM,
                                                         str(tmp_path)], HYDRA, wheel, "")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    sizes = [(tmp_path / f"rank{r}").read_text().split()[0] for r in range(4)]
    assert sizes == ["4"] * 4


@pytest.mark.parametrize("scheduler, wheel, early", [
    ("local", "/venv/bin/mpiexec", True), ("slurm", "/venv/bin/mpiexec", True),
    ("pbs", "/venv/bin/mpiexec", True), ("cobalt", "/venv/bin/mpiexec", False),
    ("lsf", "/venv/bin/mpiexec", False), ("slurm", None, False), ("local", None, False)])
def test_only_a_hydra_started_ensemble_can_start_before_the_session(scheduler, wheel, early):
    """The launcher hands the session id to rank 0 on mpiexec's stdin, which Hydra forwards;
    exactly the schedulers whose command is the wheel's Hydra qualify."""
    assert starts_with_hydra(scheduler, wheel, "") is early
    argv, _ = command(scheduler, ["n1", "n2"], wheel=wheel)
    assert (argv[0] == wheel) is early


@pytest.mark.parametrize("scheduler, environ, expected", [
    ("local", {}, {"MPIR_CVAR_CH4_NETMOD": "ofi"}),
    ("local", {"MPIR_CVAR_CH4_NETMOD": "ucx"}, {}),  # the user's choice
    ("slurm", {}, {}),  # a site's network: the site's choice
    ("pbs", {}, {}),
])
def test_only_a_local_ensemble_of_the_wheel_gets_the_ofi_network_module(tmp_path, scheduler,
                                                                        environ, expected):
    wheel = tmp_path / "bin" / "mpiexec"  # the wheel's layout: <prefix>/lib/mpich/libfabric.so.1
    (tmp_path / "lib" / "mpich").mkdir(parents=True)
    (tmp_path / "lib" / "mpich" / "libfabric.so.1").touch()
    assert ensemble_mpi_environ(scheduler, str(wheel), "", environ) == expected
    assert ensemble_mpi_environ(scheduler, None, "", environ) == {}  # not the wheel's MPICH


def test_no_ofi_module_is_asked_of_an_mpich_without_libfabric(tmp_path):
    assert ensemble_mpi_environ("local", str(tmp_path / "bin" / "mpiexec"), "", {}) == {}
    real = wheel_mpiexec()
    if real:  # this environment's wheel ships it (the serial tests run with it)
        assert ensemble_mpi_environ("local", real, "", {}) == {"MPIR_CVAR_CH4_NETMOD": "ofi"}
