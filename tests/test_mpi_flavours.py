"""MPI flavours (balsam.platform.mpi): exact argv per flavour, each argv executed against a
recording fake of its launcher (tests/fakes/bin), and the mpich argv run by the real MPICH
``mpiexec`` on a 2-rank mpi4py program."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from balsam.errors import BalsamError
from balsam.platform import allocation, mpi
from balsam.platform.mpi import FLAVOURS, RunSpec, RunSpecError, aprun, direct, srun

FAKES = Path(__file__).parent / "fakes" / "bin"
APP = ["/bin/sh", "-c", 'echo "ran $T_VALUE" > marker']


def simple(**kw) -> RunSpec:
    """2 ranks on one node, nothing else."""
    return RunSpec(**{"argv": ["app", "-x"], "ranks": 2, "ranks_per_node": 2, "hosts": ["nid00012"],
                      **kw})


def rich(**kw) -> RunSpec:
    """4 ranks over 2 nodes, 4 threads at 2 per core with depth binding, a GPU, env, mpi_flags."""
    return RunSpec(**{"argv": ["app"], "ranks": 4, "ranks_per_node": 2,
                      "hosts": ["nid00012", "nid00101"], "threads_per_rank": 4,
                      "threads_per_core": 2, "cpu_affinity": "depth", "gpus_per_rank": 1,
                      "env": {"A": "1", "B": "x y"}, "extra_flags": ["--flag"], **kw})


# ---- exact command lines -----------------------------------------------------------------------

EXPECTED = {
    ("mpich", "simple"): ["mpiexec", "-n", "2", "-ppn", "2", "-hosts", "nid00012", "-bind-to",
                          "none", "app", "-x"],
    ("mpich", "rich"): ["mpiexec", "-n", "4", "-ppn", "2", "-hosts", "nid00012,nid00101",
                        "-bind-to", "core:2", "-gpus-per-proc", "1", "-genv", "A", "1", "-genv",
                        "B", "x y", "--flag", "app"],
    ("mpich", "core"): ["mpiexec", "-n", "2", "-ppn", "2", "-hosts", "nid00012", "-bind-to",
                        "core", "app", "-x"],
    ("openmpi", "simple"): ["mpirun", "-n", "2", "--map-by", "ppr:2:node", "--host",
                            "nid00012:2", "--bind-to", "none", "app", "-x"],
    ("openmpi", "rich"): ["mpirun", "-n", "4", "--map-by", "ppr:2:node:PE=2", "--host",
                          "nid00012:2,nid00101:2", "--bind-to", "core", "-x", "A=1", "-x", "B=x y",
                          "--flag", "app"],
    ("openmpi", "core"): ["mpirun", "-n", "2", "--map-by", "ppr:2:node", "--host", "nid00012:2",
                          "--bind-to", "core", "app", "-x"],
    ("srun", "simple"): ["srun", "-n", "2", "--ntasks-per-node", "2", "--nodes", "1",
                         "--nodelist", "nid00012", "--cpu-bind", "none", "app", "-x"],
    ("srun", "rich"): ["srun", "-n", "4", "--ntasks-per-node", "2", "--nodes", "2", "--nodelist",
                       "nid00012,nid00101", "--cpu-bind", "cores", "--cpus-per-task", "4",
                       "--threads-per-core", "2", "--gpus-per-task", "1", "--export",
                       "ALL,A=1,B=x y", "--flag", "app"],
    ("srun", "core"): ["srun", "-n", "2", "--ntasks-per-node", "2", "--nodes", "1", "--nodelist",
                       "nid00012", "--cpu-bind", "cores", "app", "-x"],
    ("aprun", "simple"): ["aprun", "-n", "2", "-N", "2", "-L", "12", "-cc", "none", "-d", "1",
                          "-j", "1", "app", "-x"],
    ("aprun", "rich"): ["aprun", "-n", "4", "-N", "2", "-L", "12,101", "-cc", "depth", "-d", "4",
                        "-j", "2", "-e", "A=1", "-e", "B=x y", "--flag", "app"],
    ("aprun", "core"): ["aprun", "-n", "2", "-N", "2", "-L", "12", "-cc", "cpu", "-d", "1", "-j",
                        "1", "app", "-x"],
    ("jsrun", "simple"): ["jsrun", "-n", "2", "-a", "1", "-c", "1", "-g", "0", "-r", "2", "-b",
                          "none", "app", "-x"],
    ("jsrun", "rich"): ["jsrun", "-n", "4", "-a", "1", "-c", "2", "-g", "1", "-r", "2", "-b",
                        "packed:2", "-E", "A=1", "-E", "B=x y", "--flag", "app"],
    ("jsrun", "core"): ["jsrun", "-n", "2", "-a", "1", "-c", "1", "-g", "0", "-r", "2", "-b",
                        "packed:1", "app", "-x"],
    ("pals", "simple"): ["mpiexec", "-n", "2", "--ppn", "2", "--hosts", "nid00012", "--depth",
                         "1", "--cpu-bind", "none", "app", "-x"],
    ("pals", "rich"): ["mpiexec", "-n", "4", "--ppn", "2", "--hosts", "nid00012,nid00101",
                       "--depth", "4", "--cpu-bind", "depth", "--env", "A=1", "--env", "B=x y",
                       "--flag", "app"],
    ("pals", "core"): ["mpiexec", "-n", "2", "--ppn", "2", "--hosts", "nid00012", "--depth", "1",
                       "--cpu-bind", "core", "app", "-x"],
}
SPECS = {"simple": simple, "rich": rich, "core": lambda: simple(cpu_affinity="core")}


@pytest.mark.parametrize("flavour, spec", sorted(EXPECTED))
def test_each_flavour_builds_the_documented_command_line(flavour, spec):
    assert mpi.get(flavour).argv(SPECS[spec]()) == EXPECTED[flavour, spec]


@pytest.mark.parametrize("flavour", [f for f in FLAVOURS if f != "direct"])
def test_executable_replaces_only_the_launcher_program(flavour):
    module = mpi.get(flavour)
    assert module.argv(simple(), "/opt/site/bin/launch") == \
        ["/opt/site/bin/launch"] + EXPECTED[flavour, "simple"][1:]
    assert module.argv(simple())[0] == module.EXECUTABLE


def test_jsrun_rounds_threads_up_to_whole_cores_per_rank():
    spec = simple(threads_per_rank=7, threads_per_core=2, cpu_affinity="depth", hosts=["a", "b"],
                  ranks_per_node=1)
    assert mpi.get("jsrun").argv(spec)[:13] == ["jsrun", "-n", "2", "-a", "1", "-c", "4", "-g",
                                                "0", "-r", "1", "-b", "packed:4"]
    assert spec.cores_per_rank == 4


def test_direct_is_the_application_argv_alone():
    spec = simple(ranks=1, ranks_per_node=1)
    assert direct.argv(spec, "ignored") == ["app", "-x"]
    assert direct.argv(spec) is not spec.argv


@pytest.mark.parametrize("kwargs, message", [
    ({"ranks": 2, "ranks_per_node": 2},
     "the direct flavour runs 1 rank, not 2: choose an MPI flavour in settings.yml"),
    ({"env": {"A": "1"}}, "the direct flavour cannot pass variables; set them in the process "
                          "environment"),
    ({"extra_flags": ["-l", "-v"]}, "the direct flavour has no launcher for mpi_flags '-l -v'"),
])
def test_direct_refuses_what_it_cannot_express(kwargs, message):
    spec = simple(**{"ranks": 1, "ranks_per_node": 1, **kwargs})
    with pytest.raises(RunSpecError) as err:
        direct.argv(spec)
    assert str(err.value) == message


def test_aprun_needs_cray_node_names():
    assert [aprun.node_id(h) for h in ("nid00012", "nid1", "12", "nid00000")] == ["12", "1", "12", "0"]
    with pytest.raises(RunSpecError, match="aprun needs Cray node names like nid00012, not 'login1'"):
        aprun.argv(simple(hosts=["login1"]))


def test_srun_refuses_export_values_with_commas():
    with pytest.raises(RunSpecError, match="srun --export cannot pass a value containing ','"):
        srun.argv(simple(env={"PATHS": "a,b"}))


def test_get_returns_every_flavour_and_rejects_unknown_names():
    for name in FLAVOURS:
        module = mpi.get(name)
        assert module.NAME == name and callable(module.argv)
        lines = Path(module.__file__).read_text().count("\n")  # type: ignore[attr-defined]
        assert lines < 60
    with pytest.raises(RunSpecError) as err:
        mpi.get("mvapich")
    assert str(err.value) == ("unknown MPI flavour 'mvapich' (one of mpich, openmpi, srun, aprun, "
                              "jsrun, pals, direct)")
    assert isinstance(err.value, BalsamError)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"argv": []}, "needs an application command"),
    ({"ranks": 0}, "must be >= 1"),
    ({"threads_per_core": 0}, "must be >= 1"),
    ({"gpus_per_rank": -1}, "gpus_per_rank >= 0"),
    ({"cpu_affinity": "numa"}, "unknown cpu_affinity 'numa' (one of none, core, depth)"),
    ({"ranks": 5}, "5 ranks at 2 per node need 3 host(s), got 1"),
    ({"hosts": []}, "need 1 host(s), got 0"),
    ({"env": {"A=B": "1"}}, "bad environment variable name"),
])
def test_run_spec_rejects_impossible_launches(kwargs, fragment):
    with pytest.raises(RunSpecError) as err:
        simple(**kwargs)
    assert fragment in str(err.value)


# ---- executed against recording fakes ----------------------------------------------------------

FAKE_DIRS = {"pals": FAKES.parent / "pals"}
"""Fakes whose program name collides with another's (PALS's and Hydra's ``mpiexec``)."""


def run_with_fakes(argv, tmp_path, flavour=""):
    """Run ``argv`` in ``tmp_path`` with the fakes (for ``flavour``) first on PATH; (process,
    recorded lines)."""
    log = tmp_path / "launches.jsonl"
    fakes = f"{FAKE_DIRS[flavour]}{os.pathsep}{FAKES}" if flavour in FAKE_DIRS else str(FAKES)
    env = dict(os.environ, PATH=f"{fakes}{os.pathsep}{os.environ['PATH']}",
               BALSAM_FAKE_LOG=str(log), T_VALUE="from-process-env")
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, lines


VALID_EXTRA = {"mpich": ["-prepend-rank"], "openmpi": ["--oversubscribe"], "srun": ["--overlap"],
               "aprun": ["-q"], "jsrun": ["--smpiargs", "-gpu"], "pals": ["--label"]}


@pytest.mark.parametrize("flavour", [f for f in FLAVOURS if f != "direct"])
@pytest.mark.parametrize("shape", ["simple", "rich", "core"])
def test_each_flavours_argv_is_accepted_by_its_launcher_and_runs_the_app(flavour, shape, tmp_path):
    spec = SPECS[shape]()
    spec.argv = list(APP)
    if shape == "rich":
        spec.env = {"T_VALUE": "from-launcher-flag"}
        spec.extra_flags = VALID_EXTRA[flavour]
    argv = mpi.get(flavour).argv(spec)
    proc, lines = run_with_fakes(argv, tmp_path, flavour)
    assert proc.returncode == 0, proc.stderr
    assert [{k: line[k] for k in ("launcher", "argv", "app")} for line in lines] == \
        [{"launcher": argv[0], "argv": argv[1:], "app": APP}]
    if spec.extra_flags:  # parsed as the launcher's own option, right before the app
        assert lines[0]["options"][-1] == spec.extra_flags
    expected = "from-launcher-flag" if shape == "rich" else "from-process-env"
    assert (tmp_path / "marker").read_text() == f"ran {expected}\n"


def test_direct_argv_runs_the_app_itself(tmp_path):
    argv = direct.argv(RunSpec(argv=list(APP), ranks=1, ranks_per_node=1, hosts=["h"]))
    proc, lines = run_with_fakes(argv, tmp_path)
    assert proc.returncode == 0 and lines == []
    assert (tmp_path / "marker").read_text() == "ran from-process-env\n"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_apps_exit_status_comes_back_through_the_launcher(flavour, tmp_path):
    spec = RunSpec(argv=["/bin/sh", "-c", "exit 3"], ranks=1, ranks_per_node=1, hosts=["nid00001"])
    proc, _ = run_with_fakes(mpi.get(flavour).argv(spec), tmp_path, flavour)
    assert proc.returncode == 3


def test_the_fakes_reject_flags_their_launcher_does_not_have(tmp_path):
    spec = simple(argv=list(APP), extra_flags=["--no-such-flag"])
    for flavour in ("mpich", "openmpi", "srun", "aprun", "jsrun", "pals"):
        proc, lines = run_with_fakes(mpi.get(flavour).argv(spec), tmp_path, flavour)
        assert (proc.returncode, lines) == (97, []), flavour
        assert "unknown option '--no-such-flag'" in proc.stderr


# ---- the real MPICH mpiexec --------------------------------------------------------------------

PROGRAM = """
import os, sys
from mpi4py import MPI
comm = MPI.COMM_WORLD
cpus = sorted(os.sched_getaffinity(0))
with open(f"rank{comm.Get_rank()}", "w") as out:
    out.write(f"{comm.Get_size()} {os.environ.get('T_VALUE')} {cpus}")
"""


def run_real_mpiexec(spec, tmp_path):
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # the mpich wheel's
    executable = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    assert executable, "the mpich wheel's mpiexec must be installed beside this Python or on PATH"
    argv = mpi.get("mpich").argv(spec, executable)
    proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [(tmp_path / f"rank{r}").read_text().split(" ", 2) for r in range(spec.ranks)]


def test_real_mpiexec_runs_two_ranks_on_this_host(tmp_path):
    spec = RunSpec(argv=[sys.executable, "-c", PROGRAM], ranks=2, ranks_per_node=2,
                   hosts=[socket.gethostname()], env={"T_VALUE": "via-genv"})
    ranks = run_real_mpiexec(spec, tmp_path)
    assert [r[:2] for r in ranks] == [["2", "via-genv"], ["2", "via-genv"]]


def test_real_mpiexec_runs_on_two_emulated_local_nodes(tmp_path):
    hosts = list(allocation.detect({}, local_nodes=2).hosts)
    spec = RunSpec(argv=[sys.executable, "-c", PROGRAM], ranks=2, ranks_per_node=1, hosts=hosts)
    ranks = run_real_mpiexec(spec, tmp_path)
    assert [r[0] for r in ranks] == ["2", "2"]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="core binding of 2 ranks needs 2 cores")
def test_real_mpiexec_core_binding_gives_ranks_distinct_cores(tmp_path):
    spec = RunSpec(argv=[sys.executable, "-c", PROGRAM], ranks=2, ranks_per_node=2,
                   hosts=[socket.gethostname()], cpu_affinity="core")
    first, second = (set(json.loads(r[2])) for r in run_real_mpiexec(spec, tmp_path))
    assert first and second and not first & second
