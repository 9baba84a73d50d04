"""balsam.core.jobenv: job variables, the cleaned task environment and envscript wrapping."""
from __future__ import annotations

import json
import subprocess

from balsam.core.jobenv import job_variables, task_environment, with_envscript
from balsam.core.schema import app_command


def test_job_variables_are_classic_get_envs_plus_launcher_variables_only_when_given():
    row = {"job_id": "J", "environ_vars": "X=1:Y=a=b", "threads_per_rank": 4}
    assert job_variables(row, ["P1", "P2"], "/db") == {
        "X": "1", "Y": "a=b", "BALSAM_JOB_ID": "J", "BALSAM_PARENT_IDS": '["P1", "P2"]',
        "BALSAM_DB_PATH": "/db", "OMP_NUM_THREADS": "4"}
    launcher = job_variables({"job_id": "J"}, [], "/db", launcher_nodes=3, job_mode="mpi")
    assert (launcher["BALSAM_LAUNCHER_NODES"], launcher["BALSAM_JOB_MODE"]) == ("3", "mpi")
    assert "OMP_NUM_THREADS" not in launcher
    for parents in ([], (), ["P1"]):  # no parents: "[]" without json.dumps, the same text
        assert job_variables({"job_id": "J"}, parents, "/db")["BALSAM_PARENT_IDS"] == \
            json.dumps(list(parents))


def test_app_command_expands_a_tilde_only_where_there_is_one(monkeypatch):
    monkeypatch.setenv("HOME", "/home/u")
    assert app_command("/bin/sim", "  -n 3   x ") == "/bin/sim -n 3 x"
    assert app_command("~/bin/sim", "~/in.dat a~b") == "/home/u/bin/sim /home/u/in.dat a~b"
    assert app_command("/bin/sim", "") == "/bin/sim"


def test_task_environment_drops_launcher_only_variables_and_restores_the_users_path():
    base = {"PATH": "/balsam/bin:/usr/bin", "BALSAM_ORIGINAL_PATH": "/usr/bin", "PMI_RANK": "0",
            "HYDRA_X": "1", "OMPI_COMM_WORLD_SIZE": "4", "BALSAM_LAUNCHER_INTERNAL_FD": "5",
            "HOME": "/h"}
    assert task_environment(base, {"HOME": "/job"}) == {"PATH": "/usr/bin", "HOME": "/job"}


def test_with_envscript_sources_the_script_then_execs_the_quoted_command(tmp_path):
    envscript = tmp_path / "env's.sh"
    envscript.write_text("export GREETING=hello\n")
    assert with_envscript(["a", "b"], None) == ["a", "b"]
    argv = with_envscript(["/bin/sh", "-c", 'echo "$GREETING" "$0"', "$HOME;x"], str(envscript))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True).stdout
    assert out == "hello $HOME;x\n"
