"""Which MPI launcher runs users' tasks (balsam.platform.mpi.choice): the site's, found on PATH
past the mpich wheel's bin directory, for every shipped profile; the wheel's mpiexec only on the
local profile or as the logged last resort; ``mpi_executable`` overrides. Proved twice: on the
pure function with throwaway directories, and with real launchers whose "site" launchers are
the recording fakes of tests/fakes (they record argv and environment)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, settings, states

from balsam.errors import BalsamError
from balsam.platform import machines
from balsam.platform.mpi.choice import LauncherChoice, choose, wheel_mpiexec, which_outside

FAKES = Path(__file__).parent / "fakes" / "bin"
PALS_FAKES = Path(__file__).parent / "fakes" / "pals"

SITE_PROGRAM = {"local": None, "generic-slurm": "srun", "generic-pbs": "mpiexec",
                "polaris": "mpiexec", "theta": "aprun", "summit": "jsrun",
                "perlmutter-gpu": "srun"}
"""What each shipped profile runs users' MPI tasks with (None: the mpich wheel's mpiexec)."""


def program(directory: Path, name: str) -> str:
    """An executable file ``directory/name``; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def dirs(tmp_path):
    """(wheel bin dir with mpiexec + mpirun, site bin dir with every launcher program)."""
    wheel, site = tmp_path / "venv" / "bin", tmp_path / "site" / "bin"
    program(wheel, "mpirun")
    for name in ("mpiexec", "mpirun", "srun", "aprun", "jsrun"):
        program(site, name)
    return program(wheel, "mpiexec"), site


def test_every_shipped_profile_has_an_expected_launcher():
    assert sorted(SITE_PROGRAM) == machines.names()


@pytest.mark.parametrize("machine", sorted(SITE_PROGRAM))
def test_each_profile_takes_the_site_launcher_even_with_the_wheel_first_on_path(machine, dirs):
    wheel, site = dirs
    flavour = machines.load(machine).mpi
    got = choose(flavour, machine, "", f"{os.path.dirname(wheel)}:{site}", wheel)
    if SITE_PROGRAM[machine] is None:
        assert got == LauncherChoice("mpich", wheel, "the local profile uses the mpich wheel's "
                                                     "mpiexec installed with this Python")
    else:
        assert got.executable == str(site / SITE_PROGRAM[machine])
        assert got.reason == f"the site's {SITE_PROGRAM[machine]}, found on PATH (profile {machine})"


def test_the_wheels_mpiexec_is_the_logged_last_resort_when_no_site_mpiexec_is_there(dirs):
    wheel, _ = dirs
    got = choose("mpich", "generic-pbs", "", f"{os.path.dirname(wheel)}:/nonexistent", wheel)
    assert got.executable == wheel and got.reason.startswith("last resort: no site mpiexec")


@pytest.mark.parametrize("machine", ["generic-slurm", "theta", "summit", "polaris"])
def test_a_missing_site_launcher_of_another_flavour_is_an_error_never_the_wheel(machine, dirs):
    wheel, _ = dirs
    flavour = machines.load(machine).mpi
    with pytest.raises(BalsamError) as err:
        choose(flavour, machine, "", os.path.dirname(wheel), wheel)
    assert str(err.value) == (f"the MPI launcher {SITE_PROGRAM[machine]!r} (settings.yml mpi: "
                              f"{flavour}) is not on PATH: load your MPI module, set "
                              "mpi_executable, or choose another flavour")


def test_openmpi_on_the_local_profile_never_takes_the_wheels_mpirun(dirs):
    wheel, site = dirs
    got = choose("openmpi", "local", "", f"{os.path.dirname(wheel)}:{site}", wheel)
    assert got.executable == str(site / "mpirun")


def test_mpi_executable_overrides_the_profile_by_path_or_by_name(dirs, tmp_path):
    wheel, site = dirs
    own = program(tmp_path / "opt", "my-mpiexec")
    path = f"{os.path.dirname(wheel)}:{site}:{tmp_path / 'opt'}"
    for configured in (own, "my-mpiexec"):
        assert choose("mpich", "local", configured, path, wheel) == \
            LauncherChoice("mpich", own, "settings.yml mpi_executable")
    # A name resolves on the whole PATH, the wheel's directory included: the user asked for it.
    assert choose("mpich", "generic-pbs", "mpiexec", path, wheel).executable == wheel


@pytest.mark.parametrize("flavour, configured, message", [
    ("mpich", "/no/such/mpiexec", "settings.yml mpi_executable '/no/such/mpiexec' is not an "
                                  "executable file"),
    ("srun", "nosuchrun", "settings.yml mpi_executable 'nosuchrun' is not on PATH: load your MPI "
                          "module or give its full path"),
    ("direct", "srun", "settings.yml mpi_executable 'srun' is set but the direct flavour runs "
                       "tasks without a launcher"),
])
def test_a_bad_mpi_executable_is_one_clear_error(flavour, configured, message, dirs):
    wheel, site = dirs
    with pytest.raises(BalsamError) as err:
        choose(flavour, "generic-slurm", configured, str(site), wheel)
    assert str(err.value) == message


def test_which_outside_skips_a_symlinked_copy_of_the_wheels_directory(dirs, tmp_path):
    wheel, site = dirs
    alias = tmp_path / "alias"
    alias.symlink_to(os.path.dirname(wheel))
    assert which_outside("mpiexec", f"{alias}:{site}", wheel) == str(site / "mpiexec")
    assert which_outside("mpiexec", str(alias), wheel) is None


def test_wheel_mpiexec_is_the_mpich_wheels_program_installed_with_this_python():
    found = wheel_mpiexec()
    assert found == os.path.join(sys.prefix, "bin", "mpiexec") and os.access(found, os.X_OK)


# ---- real launchers, fake site launchers -------------------------------------------------------

ALLOCATION_ENV = {"theta": {"COBALT_JOBID": "1", "COBALT_PARTNAME": "12"}}
"""Scheduler variables a profile's flavour needs (aprun takes only Cray node ids)."""


@pytest.mark.parametrize("machine", sorted(SITE_PROGRAM))
@pytest.mark.slow
def test_a_launcher_on_each_profile_runs_mpi_tasks_with_the_site_launcher_and_logs_why(
        machine, db, cursor, tmp_path):
    add_app(cursor, "hello", "/bin/echo hello")
    (job_id,) = add_jobs(cursor, [{"name": "mpi2", "application": "hello", "ranks_per_node": 2}])
    record = tmp_path / "launches.jsonl"
    site = f"{PALS_FAKES}:{FAKES}" if machine == "polaris" else str(FAKES)
    wheel_bin = os.path.dirname(wheel_mpiexec() or "")
    # Job scripts put the wheel's directory first; on `local` a site mpiexec comes first here.
    first = [site, wheel_bin] if machine == "local" else [wheel_bin, site]
    env = {"PATH": ":".join([*first, os.environ["PATH"]]), "BALSAM_FAKE_LOG": str(record),
           **ALLOCATION_ENV.get(machine, {})}
    profile = machines.load(machine)
    with settings(db, machine=machine, mpi=profile.mpi, cores_per_node=2,
                  launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "mpi", env=env)
        assert launcher.wait(60) == 0, launcher.output()
        out, _ = launcher.output()
    assert states(cursor) == {"mpi2": "JOB_FINISHED"}
    log_path = out.split(" log ")[-1].strip()
    with open(log_path) as fh:
        first = fh.readline()
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    if SITE_PROGRAM[machine] is None:
        assert calls == []  # the fake mpiexec first on PATH was passed over for the wheel's
        assert f"MPI mpich ({wheel_mpiexec()}: the local profile uses the mpich wheel's" in first
        return
    fake = os.path.join(site.split(":")[0], SITE_PROGRAM[machine])
    (call,) = calls
    assert (call["path"], call["app"]) == (fake, ["/bin/echo", "hello"])
    assert call["env"]["BALSAM_JOB_ID"] == job_id  # the task's environment reached the launcher
    assert f"MPI {profile.mpi} ({fake}: the site's {SITE_PROGRAM[machine]}, found on PATH " \
           f"(profile {machine}))" in first


@pytest.mark.slow
def test_settings_mpi_executable_names_the_launcher_and_a_wrong_one_is_one_line_exit_2(
        db, cursor, tmp_path):
    add_app(cursor, "hello", "/bin/echo hello")
    add_jobs(cursor, [{"name": "one", "application": "hello"}])
    record = tmp_path / "launches.jsonl"
    env = {"BALSAM_FAKE_LOG": str(record)}  # the fakes are not on PATH: only the setting names one
    mine = str(FAKES / "srun")
    with settings(db, machine="generic-slurm", mpi="srun", mpi_executable="/no/srun",
                  launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "mpi", env=env)
        assert launcher.wait(60) == 2
        assert launcher.output() == ("", "balsam launcher: error: settings.yml mpi_executable "
                                         "'/no/srun' is not an executable file\n")
    with settings(db, machine="generic-slurm", mpi="srun", mpi_executable=mine,
                  launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "mpi", env=env)
        assert launcher.wait(60) == 0, launcher.output()
    assert states(cursor) == {"one": "JOB_FINISHED"}
    (call,) = [json.loads(line) for line in record.read_text().splitlines()]
    assert call["path"] == mine


def test_a_new_settings_file_documents_mpi_executable_and_it_defaults_to_the_profiles(tmp_path):
    from balsam.db import dbsettings

    text = dbsettings.render_default(str(tmp_path), "polaris")
    assert "\nmpi: pals " in text and '\nmpi_executable: "" ' in text
    (tmp_path / "settings.yml").write_text(text)
    loaded = dbsettings.load(str(tmp_path))
    assert (loaded["mpi"], loaded["mpi_executable"]) == ("pals", "")
    (tmp_path / "settings.yml").write_text("mpi_executable: 5\n")
    with pytest.raises(BalsamError, match="mpi_executable"):  # the wording is the schema's
        dbsettings.load(str(tmp_path))
