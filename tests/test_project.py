"""A project (allocation) is optional where the site allows it (generic Slurm and PBS, local) and
required where the profile says so (theta, polaris, summit, perlmutter): the service and
``balsam submit-launch`` submit without ``-A`` when none is configured and none is required,
on the fake PBS and on the real Slurm (skipped, with the reason, where none runs)."""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from launcher_support import settings
from slurm_support import Slurm, batch_env, slurm_fixture  # noqa: F401 - the `slurm` fixture

from balsam.core import schema
from balsam.errors import BalsamError
from balsam.platform import machines, schedulers
from balsam.service import submitter
from tests.conftest import run_balsam

QL = schema.QLAUNCH_TABLE
FAKES = Path(__file__).parent / "fakes" / "bin"
LOG = logging.getLogger("test-project")
REQUIRED = {"theta", "polaris", "summit", "perlmutter-gpu"}
PBS_QUEUES = {"workq": {"min_nodes": 1, "max_nodes": 4, "min_minutes": 1, "max_minutes": 60,
                       "max_queued": 1, "max_running": 1, "max_total_nodes": 4}}


@contextlib.contextmanager
def profile(db: str, name: str, **values: object) -> Iterator[None]:
    """The DB's settings.yml and job-template.sh as ``balsam init --machine name`` writes them
    (plus ``values``), put back afterwards."""
    path = Path(db, "job-template.sh")
    original = path.read_text()
    machine = machines.load(name)
    path.write_text(machine.template_text())
    values.setdefault("queues", machine.queue_settings())
    try:
        with settings(db, machine=name, scheduler=machine.scheduler, **values):
            yield
    finally:
        path.write_text(original)


def render(name: str, project: str) -> str:
    machine = machines.load(name)
    values = machines.template_values(machine, project=project, queue="q", nodes=1, time_minutes=10,
                                      job_mode="mpi", db_path="/db", balsam_bin="/b", python="/p")
    return machines.render(machine.template_text(), values)


@pytest.mark.parametrize("name", machines.names())
def test_profiles_say_whether_the_site_requires_a_project(name):
    assert machines.load(name).project_required == (name in REQUIRED)


@pytest.mark.parametrize("name,directive", [("generic-slurm", "#SBATCH --account="),
                                            ("generic-pbs", "#PBS -A ")])
def test_without_a_project_the_script_has_no_project_directive_and_is_valid_bash(
        name, directive, tmp_path):
    text = render(name, "")
    assert not any(line.startswith(directive.strip()) for line in text.splitlines())
    assert "# (no project: the scheduler's default account)" in text.splitlines()
    (tmp_path / "job.sh").write_text(text)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")], timeout=30).returncode == 0
    assert directive + "P1" in render(name, "P1").splitlines()


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_a_site_that_requires_a_project_keeps_the_clear_error(name):
    with pytest.raises(machines.MachineError, match=f"a project \\(allocation\\) is needed to "
                                                    f"submit on {name}: set `project` in settings.yml"):
        render(name, "")


def test_an_old_db_template_passing_project_to_a_directive_is_refused_without_a_project(tmp_path):
    (tmp_path / "job-template.sh").write_text("#!/bin/bash\n#PBS -A {{ project }}\n#PBS -q {{ queue }}\n")
    conf = {"machine": "generic-pbs", "scheduler": "pbs"}
    with pytest.raises(BalsamError, match="job-template.sh line 2 passes {{ project }} to the "
                                          "scheduler but no project is set"):
        submitter.render_script(str(tmp_path), conf, project="", queue="workq", nodes=1,
                                minutes=5, job_mode="mpi")
    text = submitter.render_script(str(tmp_path), conf, project="P9", queue="workq", nodes=1,
                                   minutes=5, job_mode="mpi")
    assert "#PBS -A P9" in text.splitlines()


@pytest.fixture
def fake_pbs(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKES}:{os.environ['PATH']}")
    monkeypatch.setenv("BALSAM_FAKE_SCHED", "pbs")
    monkeypatch.setenv("BALSAM_FAKE_SCHED_STATE", str(tmp_path / "fake-state.json"))
    for var in ("BALSAM_FAKE_SCHED_FAIL", "BALSAM_FAKE_SCHED_HANG", "BALSAM_FAKE_SCHED_QUEUES"):
        monkeypatch.delenv(var, raising=False)
    return schedulers.get("pbs")


def test_the_service_submits_a_planned_batch_job_without_a_project_on_generic_pbs(
        db, cursor, tmp_path, fake_pbs):
    from balsam.db.database import Database
    from balsam.service.planner import plan
    from tests.cli_support import add_app, add_jobs

    add_app(cursor)
    add_jobs(cursor, 2, application="hello", state="PREPROCESSED")
    conf = {"machine": "generic-pbs", "scheduler": "pbs", "project": "", "queues": PBS_QUEUES}
    database = Database(db, "test-project")
    try:
        planned = database.run(plan, conf)
        assert len(planned) == 1
        # tmp_path: a DB directory without a job-template.sh of its own (the profile's is used)
        done = submitter.submit_pending(database, str(tmp_path), conf, fake_pbs, LOG)
    finally:
        database.close()
    assert [sched_id for _, sched_id in done] == ["1000.fakepbs"]
    cursor.execute(f"SELECT state, project, command, message FROM {QL}")
    (state, project, command, message), = cursor.fetchall()
    assert (state, project, message) == ("submitted", "", "")
    lines = Path(command).read_text().splitlines()
    assert not any(line.startswith("#PBS -A") for line in lines) and "#PBS -q workq" in lines


def test_submit_launch_without_a_project_submits_on_generic_pbs_and_takes_the_settings_one(
        db, cursor, tmp_path, fake_pbs):
    with profile(db, "generic-pbs", queues=PBS_QUEUES):
        proc = run_balsam("submit-launch", "-n", "1", "-t", "5", "-q", "workq", "--job-mode", "mpi")
        assert proc.returncode == 0, proc.stderr
        with settings(db, project="CSC9"):
            assert run_balsam("submit-launch", "-n", "1", "-t", "5", "-q", "workq",
                              "--job-mode", "mpi").returncode == 0
    cursor.execute(f"SELECT project, state, command FROM {QL} ORDER BY id")
    (p1, s1, c1), (p2, s2, c2) = cursor.fetchall()
    assert (p1, s1, p2, s2) == ("", "submitted", "CSC9", "submitted")
    assert not any(line.startswith("#PBS -A") for line in Path(c1).read_text().splitlines())
    assert "#PBS -A CSC9" in Path(c2).read_text().splitlines()


def test_submit_launch_without_a_project_where_one_is_required_is_one_line(db, cursor, fake_pbs):
    with profile(db, "polaris"):
        proc = run_balsam("submit-launch", "-n", "1", "-t", "5", "-q", "debug", "--job-mode", "mpi")
    assert proc.returncode == 2 and proc.stderr == (
        "balsam submit-launch: error: a project (allocation) is needed to submit on polaris: "
        "set `project` in settings.yml\n")
    cursor.execute(f"SELECT count(*) FROM {QL}")
    assert cursor.fetchone()[0] == 0


def test_submit_launch_without_a_project_is_accepted_by_the_real_slurm(db, cursor, slurm: Slurm):
    slurm.watch(os.path.join(db, "qsubmit"))
    queues = {"debug": dict(PBS_QUEUES["workq"], max_minutes=5)}
    with profile(db, "generic-slurm", queues=queues):
        proc = run_balsam("submit-launch", "-n", "1", "-t", "2", "-q", "debug", "--job-mode",
                          "serial", env=batch_env(db))
    assert proc.returncode == 0, proc.stderr
    cursor.execute(f"SELECT project, state, scheduler_id, command FROM {QL}")
    (project, state, sched_id, command), = cursor.fetchall()
    assert (project, state) == ("", "submitted") and sched_id.isdigit()
    assert not any("--account" in line for line in Path(command).read_text().splitlines())
