"""A rank knows its rank before ``MPI_Init`` from the program that started the ensemble -- Hydra,
``srun``, ``aprun``, ``jsrun``, Open MPI's ``mpirun`` -- and only from this launch: a variable
inherited stale from an enclosing launch never makes a rank take a role early
(:mod:`balsam.platform.early_rank`, :func:`balsam.platform.mpi.ensemble.rank_evidence`).

The launches run real ensembles of ``balsam.launcher.serial_ranks`` (a real database, the mpich
wheel's MPICH) started through rank-starting fakes of the site launchers (``tests/fakes/ranks``:
they set each rank's variables as the real ones do and run the ranks under the wheel's Hydra),
with stale rank variables in the launcher's environment. A ``sitecustomize`` notes, the moment
``mpi4py.MPI`` is imported (``MPI_Init`` done), what the rank had started before: rank 0's
database boot (its logger exists) and a worker's watchdog (a child process). Nothing is timed.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from balsam.launcher.serial_mode import SerialConfig, ensemble_argv
from balsam.launcher.serial_ranks import EXIT_WRONG_WORLD
from balsam.platform.early_rank import LAUNCH_ID, ensemble_environ, rank_announced
from balsam.platform.mpi.choice import LauncherChoice, wheel_mpiexec
from balsam.platform.mpi.ensemble import rank_evidence

FAKES = Path(__file__).parent / "fakes" / "ranks"
HYDRA = LauncherChoice("mpich", "/site/mpiexec", "the site's mpiexec")
STALE = {"SLURM_PROCID": "0", "SLURM_NTASKS": "3", "SLURM_STEP_ID": "0", "PMI_RANK": "0",
         "PMI_SIZE": "3", "ALPS_APP_PE": "0", "JSM_NAMESPACE_RANK": "0",
         "JSM_NAMESPACE_SIZE": "3", "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "3",
         "PMIX_RANK": "0", "PALS_RANKID": "0", LAUNCH_ID: "0123456789abcdef"}
"""What an enclosing launch leaves in a launcher's environment (a batch script's step 0, an
outer mpiexec's rank 0, an outer Balsam ensemble), each naming rank 0 of 3."""


@pytest.mark.parametrize("scheduler, task, wheel, rank, size", [
    ("local", HYDRA, "/venv/bin/mpiexec", "PMI_RANK", "PMI_SIZE"),
    ("slurm", HYDRA, "/venv/bin/mpiexec", "PMI_RANK", "PMI_SIZE"),  # Hydra's proxies by srun
    ("slurm", LauncherChoice("srun", "/usr/bin/srun", "site"), None, "SLURM_PROCID",
     "SLURM_NTASKS"),
    ("cobalt", LauncherChoice("aprun", "/usr/bin/aprun", "site"), None, "ALPS_APP_PE", ""),
    ("lsf", LauncherChoice("jsrun", "/opt/jsrun", "site"), None, "JSM_NAMESPACE_RANK",
     "JSM_NAMESPACE_SIZE"),
    ("local", LauncherChoice("openmpi", "/opt/mpirun", "site"), None, "OMPI_COMM_WORLD_RANK",
     "OMPI_COMM_WORLD_SIZE"),
    ("pbs", LauncherChoice("pals", "/opt/pals/mpiexec", "site"), None, "PALS_RANKID", ""),
])
def test_each_ensemble_trusts_only_the_variable_of_the_program_that_starts_it(
        scheduler, task, wheel, rank, size):
    # Under Hydra's slurm bootstrap the ranks also see SLURM_PROCID (their proxy's step task
    # number, the same on a node): only PMI_RANK counts there.
    evidence = rank_evidence(scheduler, task, wheel, "")
    assert (evidence["rank"], evidence["size"]) == (rank, size)
    assert len(evidence["id"]) == 16
    assert rank_evidence(scheduler, task, wheel, "")["id"] != evidence["id"]  # one per launch


def test_an_ensemble_without_a_launcher_program_has_no_early_rank():
    assert rank_evidence("local", LauncherChoice("direct", None, "x"), None, "") == {}


def test_the_launch_environment_drops_the_stale_rank_and_carries_this_launchs_id():
    evidence = {"rank": "SLURM_PROCID", "size": "SLURM_NTASKS", "id": "feed"}
    env = ensemble_environ({**STALE, "PATH": "/bin"}, evidence)
    assert "SLURM_PROCID" not in env and "SLURM_NTASKS" not in env
    assert env[LAUNCH_ID] == "feed" and env["PATH"] == "/bin"
    assert env["PMI_RANK"] == "0"  # left alone: not what srun's ranks are read from
    assert ensemble_environ({"PATH": "/bin"}, {}) == {"PATH": "/bin"}


def test_a_task_never_sees_the_launch_id():
    # (A task that is itself a serial-mode launcher starts its own launch with its own id.)
    from balsam.core.jobenv import task_environment

    env = task_environment({LAUNCH_ID: "feed", "PATH": "/bin"}, {"BALSAM_JOB_ID": "j"})
    assert LAUNCH_ID not in env and env["PATH"] == "/bin"


@pytest.mark.parametrize("environ, expected", [
    ({LAUNCH_ID: "feed", "SLURM_PROCID": "2", "SLURM_NTASKS": "3"}, 2),
    ({LAUNCH_ID: "feed", "SLURM_PROCID": "0", "SLURM_NTASKS": "3"}, 0),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "3"}, None),  # not through this launch's environment
    ({LAUNCH_ID: "0123456789abcdef", "SLURM_PROCID": "0", "SLURM_NTASKS": "3"}, None),  # an outer one's
    ({LAUNCH_ID: "feed", "SLURM_PROCID": "0", "SLURM_NTASKS": "64"}, None),  # another step's count
    ({LAUNCH_ID: "feed", "SLURM_PROCID": "0"}, None),  # no count
    ({LAUNCH_ID: "feed", "SLURM_PROCID": "3", "SLURM_NTASKS": "3"}, None),  # out of range
    ({LAUNCH_ID: "feed", "SLURM_PROCID": "-1", "SLURM_NTASKS": "3"}, None),
    ({LAUNCH_ID: "feed", "SLURM_NTASKS": "3", "PMI_RANK": "0"}, None),  # another launcher's
])
def test_a_rank_is_read_only_with_this_launchs_id_and_count(environ, expected):
    evidence = {"rank": "SLURM_PROCID", "size": "SLURM_NTASKS", "id": "feed"}
    assert rank_announced(environ, evidence, 3) == expected


def test_without_a_count_variable_the_launch_id_and_the_range_decide():
    evidence = {"rank": "ALPS_APP_PE", "size": "", "id": "feed"}
    assert rank_announced({LAUNCH_ID: "feed", "ALPS_APP_PE": "1"}, evidence, 3) == 1
    assert rank_announced({LAUNCH_ID: "feed", "ALPS_APP_PE": "5"}, evidence, 3) is None
    assert rank_announced({"ALPS_APP_PE": "0"}, evidence, 3) is None
    assert rank_announced({LAUNCH_ID: "", "ALPS_APP_PE": "0"}, {}, 3) is None


SITE = textwrap.dedent('''
    import builtins, json, logging, os, sys
    MARKS = os.environ.get("BALSAM_TEST_MARKS", "")
    real_import = builtins.__import__

    depth = [0]

    def noting_import(*args, **kwargs):
        # At the first outermost import that returns once MPI_Init ran (mpi4py.MPI's own
        # imports are nested): what this rank started before it
        depth[0] += 1
        try:
            module = real_import(*args, **kwargs)
        finally:
            depth[0] -= 1
        if (not depth[0] and "mpi4py.MPI" in sys.modules and builtins.__import__ is noting_import
                and sys.argv[0].endswith("serial_ranks.py")):  # (set after sitecustomize)
            builtins.__import__ = real_import
            children = []
            for tid in os.listdir("/proc/self/task"):
                try:  # (rank 0's boot thread may end meanwhile)
                    with open(f"/proc/self/task/{tid}/children") as fh:
                        children += fh.read().split()
                except OSError:
                    pass
            rank = sys.modules["mpi4py.MPI"].COMM_WORLD.Get_rank()
            note = {"rank": rank, "watchdog": bool(children),
                    "boot": bool(logging.getLogger("balsam.serial.master").handlers)}
            with open(os.path.join(MARKS, f"{rank}.tmp"), "w") as fh:
                json.dump(note, fh)
            os.replace(os.path.join(MARKS, f"{rank}.tmp"), os.path.join(MARKS, str(rank)))
        return module

    if MARKS:
        builtins.__import__ = noting_import
''')


def run_ensemble(db: str, tmp_path: Any, scheduler: str, flavour: str, launcher: str,
                 through_launcher: bool = True, **env: str) -> tuple[list[dict[str, Any]],
                                                                   list[dict[str, Any]], str]:
    """1 master + 2 workers of an ensemble started before a session (stdin at end of file: no
    session, every rank exits), by the fake ``launcher`` for ``flavour``, from a launcher
    environment holding :data:`STALE` (passed through ``ensemble_environ`` as the launcher
    does, unless ``through_launcher`` is False); (each rank's note, the fake's records, the
    output)."""
    notes, records, output, _ = launch_ensemble(db, tmp_path, scheduler, flavour, launcher,
                                                through_launcher, **env)
    assert len(notes) == 3, output
    assert "Traceback" not in output, output
    return notes, records, output


def launch_ensemble(db: str, tmp_path: Any, scheduler: str, flavour: str, launcher: str,
                    through_launcher: bool = True, **env: str
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str, int]:
    """:func:`run_ensemble` without its checks; also the launch's exit status."""
    wheel = wheel_mpiexec()
    site, marks = tmp_path / "site", tmp_path / "marks"
    site.mkdir()
    marks.mkdir()
    (site / "sitecustomize.py").write_text(SITE)
    config = SerialConfig(db_path=db, session_id=0, settings={"launcher": {}},
                          hosts=["nid00001", "nid00002"], cores_per_node=2, gpus_per_node=0,
                          scheduler=scheduler, log_path=str(tmp_path / "ranks.log"),
                          watch_dir=str(tmp_path / "watch"))
    path = f"{FAKES}{os.pathsep}{os.environ['PATH']}"
    argv, _ = ensemble_argv(config, LauncherChoice(flavour, str(FAKES / launcher), "test"),
                            path, None)
    assert config.rank_evidence, "the fake's flavour names a rank variable"
    environ = {**os.environ, **STALE, "PATH": path, "BALSAM_FAKE_HYDRA": str(wheel),
               "BALSAM_FAKE_LOG": str(tmp_path / "fake.jsonl"), "BALSAM_TEST_MARKS": str(marks),
               "PYTHONPATH": os.pathsep.join([str(site)] + [p for p in
                                                            [os.environ.get("PYTHONPATH")] if p]),
               **env}
    out_path = tmp_path / "ensemble.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=ensemble_environ(environ, config.rank_evidence)
                                if through_launcher else environ)
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
    output = "\n".join(p.read_text(errors="replace") for p in (out_path, tmp_path / "ranks.log")
                       if p.exists())
    notes = [json.loads((marks / str(rank)).read_text()) for rank in range(3)
             if (marks / str(rank)).exists()]
    records = [json.loads(line) for line in (tmp_path / "fake.jsonl").read_text().splitlines()]
    return notes, records, output, proc.returncode


pytestmark_ensembles = pytest.mark.skipif(wheel_mpiexec() is None,
                                          reason="the fakes run the ranks under the mpich wheel")


@pytestmark_ensembles
@pytest.mark.slow
@pytest.mark.parametrize("scheduler, flavour, launcher, variable", [
    ("slurm", "srun", "srun", "SLURM_PROCID"), ("cobalt", "aprun", "aprun", "ALPS_APP_PE"),
    ("lsf", "jsrun", "jsrun", "JSM_NAMESPACE_RANK"),
    ("local", "openmpi", "mpirun", "OMPI_COMM_WORLD_RANK")])
def test_site_launched_ranks_take_their_role_before_mpi_init_despite_stale_variables(
        db, tmp_path, scheduler, flavour, launcher, variable):
    notes, records, output = run_ensemble(db, tmp_path, scheduler, flavour, launcher)
    # The workers' watchdogs start before MPI_Init; rank 0 boots after it under these
    # programs (their ranks may run a site's MPI: no thread beside its MPI_Init,
    # rank_boot.BOOT_DURING_INIT), and only rank 0 is the master.
    assert notes == [{"rank": 0, "watchdog": False, "boot": False},
                     {"rank": 1, "watchdog": True, "boot": False},
                     {"rank": 2, "watchdog": True, "boot": False}], output
    (record,) = records
    # The site launcher was started without the stale value of its own variable, with this
    # launch's id; other launchers' stale variables are left (and ignored)
    assert variable not in record["env"] and record["env"]["PMI_RANK"] == "0"
    assert record["env"][LAUNCH_ID] != STALE[LAUNCH_ID] and len(record["env"][LAUNCH_ID]) == 16
    assert "MPI's rank decides" not in output, output


@pytestmark_ensembles
@pytest.mark.slow
@pytest.mark.parametrize("through_launcher", [True, False])
def test_a_stale_rank_variable_alone_gives_no_rank_an_early_role(db, tmp_path, through_launcher):
    # A launcher that sets no variable of its own: every rank sees only what the launcher's
    # environment held. Through the launcher's environment the stale SLURM_PROCID=0 is gone;
    # passed on untouched (a caller that skipped ensemble_environ) it reaches every rank, but
    # without this launch's id. Either way no rank starts a database boot or a watchdog before
    # MPI_Init (before: every rank would have booted as rank 0), and MPI gives the roles.
    notes, records, output = run_ensemble(db, tmp_path, "slurm", "srun", "srun",
                                          through_launcher, BALSAM_FAKE_SILENT="1")
    assert notes == [{"rank": r, "watchdog": False, "boot": False} for r in range(3)], output
    (record,) = records
    assert ("SLURM_PROCID" in record["env"]) is not through_launcher


@pytestmark_ensembles
@pytest.mark.slow
def test_ranks_whose_mpi_makes_worlds_of_one_take_no_role(db, tmp_path):
    # The launcher started 3 ranks (aprun: ALPS_APP_PE 0, 1, 2), but each rank's MPI_Init made
    # a world of its own (mpi4py's MPI does not speak the site launcher's process manager:
    # the mpich wheel under aprun or jsrun, ensemble.py warns). MPI then said "rank 0" to
    # every rank: before, each ran the master (a database connection each, at scale thousands;
    # 3 masters here, each reading the session on stdin). Now a rank whose world is not the
    # ensemble's size says so and exits without a role; the launch fails.
    notes, _, output, status = launch_ensemble(db, tmp_path, "cobalt", "aprun", "aprun",
                                               BALSAM_FAKE_SINGLETONS="1")
    assert [note["rank"] for note in notes] == [0], output  # (each world's only rank)
    assert "serial master" not in output, output
    assert output.count("not one MPI job of 3 ranks") == 3, output
    assert status == EXIT_WRONG_WORLD, output
    assert "Traceback" not in output, output


@pytestmark_ensembles
@pytest.mark.slow
def test_ranks_of_a_launch_with_another_rank_count_take_no_role(db, tmp_path):
    # srun started 4 ranks for an ensemble of 3 (its task count changed on the way): its
    # SLURM_NTASKS gives no rank an early role, and a world of 4 is not the ensemble either
    # (before: a 4th worker rank with no node of its own). Every rank exits without a role.
    notes, _, output, status = launch_ensemble(db, tmp_path, "slurm", "srun", "srun",
                                               BALSAM_FAKE_RANKS="4")
    assert notes == [{"rank": r, "watchdog": False, "boot": False} for r in range(3)], output
    assert "serial master" not in output and "serial worker" not in output, output
    assert output.count("not one MPI job of 3 ranks") == 4, output
    assert status == EXIT_WRONG_WORLD, output
