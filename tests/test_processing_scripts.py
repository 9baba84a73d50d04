"""balsam.processing.scripts: preprocess / postprocess scripts run for real in temp dirs."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from balsam.core.jobenv import job_variables
from balsam.processing.scripts import (
    ScriptError,
    ScriptResult,
    failure_message,
    run_script,
    script_environment,
)

BASE_ENV = {"PATH": os.environ["PATH"], "HOME": "/home/someone", "PMI_RANK": "3",
            "HYDRA_CONTROL_FD": "9", "LANG": "C"}


def make_script(path: Path, body: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(mode)
    return path


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != b"Z"


def wait_for_file(path: Path, seconds: float = 5.0) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.01)
    raise AssertionError(f"{path} never written")


def body_of(log: str) -> list[str]:
    """The log's lines without the header/footer comment lines."""
    return [line for line in log.splitlines() if not line.startswith("# ")]


def test_script_environment_is_the_clean_caller_environment_plus_job_variables_plus_extra():
    job_vars = job_variables({"job_id": "abc", "environ_vars": "A=1:HOME=/job/home"}, ["p1"], "/db")
    env = script_environment(BASE_ENV, job_vars, {"BALSAM_JOB_ERROR": "TRUE", "A": "2"})
    assert env == {"PATH": os.environ["PATH"], "HOME": "/job/home", "LANG": "C", "A": "2",
                   "BALSAM_JOB_ID": "abc", "BALSAM_PARENT_IDS": '["p1"]', "BALSAM_DB_PATH": "/db",
                   "BALSAM_JOB_ERROR": "TRUE"}


def test_a_successful_script_writes_header_and_output_and_sees_path_home_and_job_variables(tmp_path):
    make_script(tmp_path / "bin" / "pre.sh",
                'echo "args: $*"; echo "id=$BALSAM_JOB_ID home=$HOME pmi=${PMI_RANK-unset}"\n'
                'echo "cwd=$(pwd)"; echo to-stderr >&2; cat; which bash >/dev/null && echo has-path\n')
    workdir = tmp_path / "work"
    env = script_environment(BASE_ENV, job_variables({"job_id": "J1"}, [], "/db"))
    result = run_script("preprocess", f"{tmp_path}/bin/pre.sh 'a b' c", str(workdir), env,
                        timeout=10, header=["# Invoked to handle RUN_ERROR"])
    assert (result.returncode, result.timed_out, result.aborted, result.ok) == (0, False, False, True)
    assert result.log_path == str(workdir / "preprocess.log")
    log = (workdir / "preprocess.log").read_text().splitlines()
    assert log[0] == f"# Balsam Preprocessor: {tmp_path}/bin/pre.sh 'a b' c"
    assert re.fullmatch(rf"# Started \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00 in {workdir}", log[1])
    assert log[2] == "# Invoked to handle RUN_ERROR"
    output = ["args: a b c", "id=J1 home=/home/someone pmi=unset", f"cwd={workdir}", "to-stderr",
              "has-path"]
    assert log[3:8] == output
    assert re.fullmatch(r"# preprocess exited with code 0 after \d+\.\d s", log[8])
    assert len(log) == 9
    assert result.tail == "\n".join(output)
    assert 0 <= result.seconds < 5


def test_a_failing_script_reports_code_and_tail_and_the_log_keeps_every_run(tmp_path):
    make_script(tmp_path / "post.sh", "for i in $(seq 1 50); do echo line$i; done; exit 3\n")
    env = script_environment(BASE_ENV, {})
    for _ in range(2):
        result = run_script("postprocess", "post.sh", str(tmp_path), env, timeout=10, tail_lines=4)
    assert result.returncode == 3 and not result.ok
    assert result.tail == "line47\nline48\nline49\nline50"
    log = (tmp_path / "postprocess.log").read_text()
    assert log.count("# Balsam Postprocessor: post.sh\n") == 2
    assert body_of(log) == [f"line{i}" for i in range(1, 51)] * 2
    message = failure_message("postprocess", result)
    assert re.fullmatch(r"postprocess exited with code 3 after \d\.\d s; log tail "
                        rf"\({tmp_path}/postprocess\.log\):\nline47\nline48\nline49\nline50", message)


def test_the_command_is_found_relative_to_workdir_on_path_or_in_workdir(tmp_path):
    make_script(tmp_path / "scripts" / "rel.sh", "echo rel $1\n")
    make_script(tmp_path / "local.sh", "echo local\n")
    env = script_environment(BASE_ENV, {})
    assert run_script("preprocess", "scripts/rel.sh x", str(tmp_path), env, timeout=10).tail == "rel x"
    assert run_script("preprocess", "./local.sh", str(tmp_path), env, timeout=10).tail == "local"
    assert run_script("preprocess", "local.sh", str(tmp_path), env, timeout=10).tail == "local"
    result = run_script("preprocess", "echo from PATH", str(tmp_path), env, timeout=10)
    assert result.tail == "from PATH"


@pytest.mark.parametrize("command, message", [
    ("/no/such/script.sh arg", "preprocess script /no/such/script.sh not found in {w}"),
    ("missing.sh", "preprocess script missing.sh not found on PATH or in {w}"),
    ("sub/missing.sh", "preprocess script sub/missing.sh not found in {w}"),
    ("noexec.sh", "preprocess script {w}/noexec.sh is not executable"),
    ("'unclosed", "cannot parse the preprocess command \"'unclosed\": No closing quotation"),
    ("   ", "the preprocess command is empty"),
])
def test_a_command_that_cannot_run_raises_a_one_line_script_error_and_writes_no_log(
        tmp_path, command, message):
    make_script(tmp_path / "noexec.sh", "echo hi\n", mode=0o644)
    with pytest.raises(ScriptError) as err:
        run_script("preprocess", command, str(tmp_path), script_environment(BASE_ENV, {}), timeout=5)
    assert str(err.value) == message.format(w=tmp_path)
    assert not (tmp_path / "preprocess.log").exists()


def test_an_executable_the_kernel_cannot_exec_is_reported_as_not_started(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF not really")
    garbage.chmod(0o755)
    result = run_script("preprocess", "garbage", str(tmp_path), dict(BASE_ENV), timeout=5)
    assert result.returncode is None and not result.timed_out and not result.aborted
    assert result.tail == f"cannot run {garbage}: Exec format error"
    assert failure_message("preprocess", result) == \
        f"preprocess could not start: cannot run {garbage}: Exec format error"
    last = (tmp_path / "preprocess.log").read_text().splitlines()[-1]  # the time: any, under load
    assert re.fullmatch(r"# preprocess did not start after \d+\.\d s", last), last


def test_the_envscript_is_sourced_before_the_script_and_the_workdir_is_created(tmp_path):
    envscript = tmp_path / "env.sh"
    envscript.write_text("export FROM_ENVSCRIPT=yes\nexport PATH=/opt/fake:$PATH\n")
    make_script(tmp_path / "s.sh", 'echo "$FROM_ENVSCRIPT ${PATH%%:*} $1"\n')
    workdir = tmp_path / "a" / "b"
    result = run_script("postprocess", f"{tmp_path}/s.sh 'x y'", str(workdir),
                        script_environment(BASE_ENV, {}), envscript=str(envscript), timeout=10)
    assert result.ok and result.tail == "yes /opt/fake x y"
    log = (workdir / "postprocess.log").read_text().splitlines()
    assert log[2] == f"# Sourcing envscript {envscript}"


def test_a_timeout_kills_the_whole_group_even_a_child_ignoring_sigterm(tmp_path):
    pids = tmp_path / "pids"
    make_script(tmp_path / "slow.sh",
                f"(trap '' TERM; sleep 60) & echo $$ $! > {pids}; echo started; sleep 60\n")
    start = time.monotonic()
    result = run_script("preprocess", "slow.sh", str(tmp_path), dict(BASE_ENV), timeout=0.5,
                        kill_grace=0.5)
    elapsed = time.monotonic() - start
    assert result.timed_out and not result.aborted and result.returncode == -15
    assert 0.9 <= elapsed < 20  # the time-out and the grace, not the 60-s sleeps
    assert result.tail == "started"
    assert [alive(int(p)) for p in pids.read_text().split()] == [False, False]
    assert failure_message("preprocess", result) == (
        f"preprocess timed out after 0.5 s and was killed; log tail ({tmp_path}/preprocess.log):\n"
        "started")


def test_should_abort_stops_a_running_script_and_its_children(tmp_path):
    pids = tmp_path / "pids"
    make_script(tmp_path / "slow.sh", f"sleep 60 & echo $$ $! > {pids}; wait\n")
    calls = []

    def should_abort() -> bool:
        calls.append(time.monotonic())
        return pids.exists() and len(calls) >= 3

    start = time.monotonic()
    result = run_script("preprocess", "slow.sh", str(tmp_path), dict(BASE_ENV), timeout=30,
                        should_abort=should_abort, poll_seconds=0.05, kill_grace=2)
    assert result.aborted and not result.timed_out and result.returncode == -15
    assert time.monotonic() - start < 20  # stopped, not its 60-s sleep
    assert [alive(int(p)) for p in wait_for_file(pids).split()] == [False, False]
    assert re.fullmatch(r"preprocess was stopped after \d\.\d s \(abort requested\); log tail "
                        r"\(.*\):\n\(no output\)", failure_message("preprocess", result))


def test_an_abort_requested_before_the_start_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    make_script(tmp_path / "s.sh", f"touch {marker}\n")
    result = run_script("preprocess", "s.sh", str(tmp_path), dict(BASE_ENV), timeout=5,
                        should_abort=lambda: True)
    assert (result.returncode, result.aborted, result.tail) == (None, True, "")
    assert not marker.exists()


def test_processes_a_script_leaves_in_the_background_are_stopped_when_it_exits(tmp_path):
    pids = tmp_path / "pids"
    make_script(tmp_path / "s.sh", f"sleep 60 & echo $! > {pids}; echo done\n")
    result = run_script("postprocess", "s.sh", str(tmp_path), dict(BASE_ENV), timeout=10,
                        kill_grace=2)
    assert result.ok and result.tail == "done"
    assert not alive(int(pids.read_text()))


def test_a_script_killed_by_a_signal_is_reported_by_name(tmp_path):
    make_script(tmp_path / "s.sh", "echo boom; kill -SEGV $$\n")
    result = run_script("postprocess", "s.sh", str(tmp_path), dict(BASE_ENV), timeout=10)
    assert result.returncode == -11
    assert failure_message("postprocess", result).startswith(
        "postprocess was killed by SIGSEGV after ")


def test_failure_message_rounds_long_durations_and_marks_an_empty_tail():
    result = ScriptResult(returncode=1, timed_out=False, aborted=False, log_path="/w/preprocess.log",
                          tail="", seconds=12.34, timeout=300)
    assert failure_message("preprocess", result) == \
        "preprocess exited with code 1 after 12 s; log tail (/w/preprocess.log):\n(no output)"


def test_an_unknown_kind_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError):
        run_script("midprocess", "true", str(tmp_path), dict(BASE_ENV), timeout=1)
