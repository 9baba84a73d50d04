"""The local scheduler for real: job scripts run as process groups on this machine, their states
from the group's liveness and the wrapper's exit file, cancel by SIGTERM then SIGKILL, records
shared through the state directory; and the shipped local job template run through it."""
from __future__ import annotations

import json
import os
import pwd
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import pytest
from gates import forever_sh, gate_sh

from balsam.platform import machines, schedulers
from balsam.platform.process import start_time
from balsam.platform.procgroup import signal_group
from balsam.platform.schedulers import BatchJobStatus, SchedulerError
from balsam.platform.schedulers.local import LocalScheduler, group_alive

USER = pwd.getpwuid(os.getuid()).pw_name


def write_script(path: Path, body: str, executable: bool = True) -> str:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755 if executable else 0o644)
    return str(path)


def wait_for(sched: LocalScheduler, job_id: str, check: Callable[[BatchJobStatus], bool],
             timeout: float = 60) -> BatchJobStatus:
    deadline = time.monotonic() + timeout
    while True:
        job = sched.status(USER)[job_id]
        if check(job) or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def until_exists(path: Path, timeout: float = 60) -> None:
    """Wait until a job script has created ``path`` (a loaded machine may take seconds)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {path}"
        time.sleep(0.05)


def pgid_of(sched: LocalScheduler, job_id: str) -> int:
    state = json.loads(Path(sched.state_dir, "local-jobs.json").read_text())
    return state["jobs"][job_id]["pid"]


@pytest.fixture
def sched(tmp_path) -> Iterator[LocalScheduler]:
    """The scheduler; at teardown, whatever its jobs left running is SIGKILLed (a test that
    failed midway never released or cancelled them)."""
    scheduler = LocalScheduler(str(tmp_path / "qsubmit"), kill_grace=0.5)
    yield scheduler
    try:
        jobs = json.loads(Path(scheduler.state_dir, "local-jobs.json").read_text())["jobs"]
    except FileNotFoundError:
        return
    for job in jobs.values():
        if job.get("pid") and job.get("started"):  # only while the number names the wrapper
            signal_group(job["pid"], signal.SIGKILL, job["started"])


def test_a_job_runs_in_its_cwd_then_finishes_with_its_exit_code(sched, tmp_path):
    release = tmp_path / "release"  # the job runs until the test has seen it running
    ok = write_script(tmp_path / "ok.sh", f'echo "in $PWD"; echo oops >&2\n'
                                          f'{gate_sh(str(release))}\n')
    bad = write_script(tmp_path / "bad.sh", "exit 3\n", executable=False)  # run with /bin/sh
    first = sched.submit(ok, str(tmp_path), "qlaunch1", str(tmp_path / "ok.out"))
    second = sched.submit(bad, str(tmp_path), "qlaunch2", str(tmp_path / "bad.out"))
    assert (first, second) == ("1", "2")
    running = sched.status(USER)[first]
    assert (running.state, running.raw_state, running.name, running.queue, running.owner,
            running.exit_code) == ("running", "RUNNING", "qlaunch1", "local", USER, None)
    release.touch()
    done = wait_for(sched, first, lambda j: j.is_final)
    assert (done.state, done.raw_state, done.exit_code) == ("finished", "EXITED", 0)
    assert (tmp_path / "ok.out").read_text() == f"in {tmp_path}\noops\n"
    failed = wait_for(sched, second, lambda j: j.is_final)
    assert (failed.state, failed.exit_code) == ("failed", 3)
    assert not group_alive(pgid_of(sched, first))
    assert sched.final_status(first) == done
    assert sched.status("somebody-else") == {}


def test_cancel_terminates_the_whole_process_group(sched, tmp_path):
    script = write_script(tmp_path / "sleepy.sh", "sleep 100 &\nsleep 100\n")
    job_id = sched.submit(script, str(tmp_path), "sleepy", str(tmp_path / "sleepy.out"))
    pgid = pgid_of(sched, job_id)
    assert wait_for(sched, job_id, lambda j: j.state == "running").state == "running"
    sched.cancel(job_id)
    job = wait_for(sched, job_id, lambda j: j.is_final)
    assert (job.state, job.raw_state, job.exit_code) == ("cancelled", "CANCELLED", None)
    assert not group_alive(pgid)
    sched.cancel(job_id)  # an ended job: nothing to do
    sched.cancel("999")   # an unknown one: nothing either


def test_a_job_ignoring_sigterm_is_killed_after_the_grace_period(sched, tmp_path):
    marker, ready = tmp_path / "trapped", tmp_path / "ready"
    script = write_script(tmp_path / "stubborn.sh", f"trap 'touch {marker}' TERM\ntouch {ready}\n"
                                                    f"{forever_sh()}\n")
    job_id = sched.submit(script, str(tmp_path), "stubborn", str(tmp_path / "s.out"))
    until_exists(ready)  # bash has installed its trap
    sched.cancel(job_id)
    until_exists(marker)  # no status read meanwhile: only a status read escalates to SIGKILL
    finishing = sched.status(USER)[job_id]
    assert (finishing.state, finishing.raw_state) == ("finishing", "CANCELLING")
    job = wait_for(sched, job_id, lambda j: j.is_final)
    assert job.state == "cancelled" and not group_alive(pgid_of(sched, job_id))


def test_leftover_processes_keep_a_job_finishing_and_an_outside_kill_is_a_failure(sched, tmp_path):
    release = tmp_path / "release"  # the leftover lives until the test has seen it finishing
    script = write_script(tmp_path / "bg.sh", f"({gate_sh(str(release))}) &\n"
                                              "exit 0\n")
    job_id = sched.submit(script, str(tmp_path), "bg", str(tmp_path / "bg.out"))
    job = wait_for(sched, job_id, lambda j: j.state != "running")
    # (Its output says why if the leftover died early: a fork failure would show there; a kill
    # from outside -- once a stale pid signalled by another test -- would not.)
    assert (job.state, job.raw_state) == ("finishing", "EXITING"), (tmp_path / "bg.out").read_text()
    release.touch()
    assert wait_for(sched, job_id, lambda j: j.is_final).state == "finished"

    victim = write_script(tmp_path / "victim.sh", "sleep 100\n")
    job_id = sched.submit(victim, str(tmp_path), "victim", str(tmp_path / "v.out"))
    os.killpg(pgid_of(sched, job_id), signal.SIGKILL)
    job = wait_for(sched, job_id, lambda j: j.is_final)
    assert (job.state, job.raw_state, job.exit_code) == ("failed", "VANISHED", None)


def test_a_job_whose_group_id_names_another_process_has_ended_and_is_never_signalled(
        sched, tmp_path):
    """The group id is the wrapper's pid: once that number names a process started at another
    time (reused after the job's group ended), the job is over and cancel leaves that group be."""
    ready = tmp_path / "ready"
    script = write_script(tmp_path / "loop.sh", f"touch {ready}\n"
                                                f"{forever_sh(0.05)}\n")
    job_id = sched.submit(script, str(tmp_path), "loop", str(tmp_path / "loop.out"))
    until_exists(ready)
    state_file = Path(sched.state_dir, "local-jobs.json")
    state = json.loads(state_file.read_text())
    pgid, started = state["jobs"][job_id]["pid"], state["jobs"][job_id]["started"]
    try:
        assert started == start_time(pgid)  # recorded by the starter (the wrapper still runs)
        assert sched.status(USER)[job_id].state == "running"
        # As if the job's wrapper had been an earlier process with the same pid: the live
        # group holding the number now is another one.
        state["jobs"][job_id]["started"] = started - 1
        state_file.write_text(json.dumps(state))
        job = sched.status(USER)[job_id]
        assert (job.state, job.raw_state) == ("failed", "VANISHED")
        sched.cancel(job_id)
        assert json.loads(state_file.read_text())["jobs"][job_id]["cancelled_at"] is None
        assert group_alive(pgid, started)  # not signalled: the "other" group runs on
    finally:
        signal_group(pgid, signal.SIGKILL, started)
    deadline = time.monotonic() + 60
    while group_alive(pgid, started):
        assert time.monotonic() < deadline, "the job's group did not die of SIGKILL"
        time.sleep(0.05)


def test_records_are_shared_through_the_directory_and_pruned_after_keep_seconds(tmp_path):
    state_dir = str(tmp_path / "qsubmit")
    one = schedulers.get("local", state_dir=state_dir)
    script = write_script(tmp_path / "quick.sh", "true\n")
    job_id = one.submit(script, str(tmp_path), "quick", str(tmp_path / "q.out"))
    other = LocalScheduler(state_dir, keep_seconds=0)
    assert other.submit(script, str(tmp_path), "quick2", str(tmp_path / "q2.out")) == "2"
    assert wait_for(other, job_id, lambda j: j.is_final).state == "finished"
    time.sleep(0.01)
    deadline = time.monotonic() + 10
    while other.status(USER) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert other.status(USER) == {} and one.final_status(job_id) is None
    assert not list(Path(state_dir).glob("local-*.exit"))


def test_bad_submissions_are_one_line_errors(sched, tmp_path):
    with pytest.raises(SchedulerError, match="job script .*missing.sh does not exist"):
        sched.submit(str(tmp_path / "missing.sh"), str(tmp_path), "x", str(tmp_path / "x.out"))
    script = write_script(tmp_path / "s.sh", "true\n")
    with pytest.raises(SchedulerError, match="working directory /nonexistent-dir does not exist"):
        sched.submit(script, "/nonexistent-dir", "x", str(tmp_path / "x.out"))
    with pytest.raises(SchedulerError) as err:
        sched.submit(script, str(tmp_path), "x", "/nonexistent-dir/x.out")
    assert str(err.value) == (f"local job x: cannot start {script}: [Errno 2] No such file or "
                              "directory: '/nonexistent-dir/x.out'")


FAKE_PYTHON = """#!/bin/bash
# Stands in for the Python that would run `balsam launcher`: records what it was given.
printf '%s\\n' "$@" > {out}/argv
printf 'BALSAM_DB_PATH=%s\\nBALSAM_ORIGINAL_PATH=%s\\nPATH=%s\\n' \\
    "$BALSAM_DB_PATH" "$BALSAM_ORIGINAL_PATH" "$PATH" > {out}/env
trap 'echo TERM >> {out}/signals; exit 5' TERM
touch {out}/started
sleep "${{FAKE_LAUNCHER_SECONDS:-0}}" & wait $!
"""


def test_the_local_job_template_runs_the_launcher_on_this_machine(tmp_path, monkeypatch):
    out = tmp_path / "rec"
    out.mkdir()
    python = tmp_path / "py thon"
    python.write_text(FAKE_PYTHON.format(out=out))
    python.chmod(0o755)
    machine = machines.load("local")
    values = machines.template_values(
        machine, project="anything", queue="debug", nodes=1, time_minutes=10, job_mode="serial",
        db_path=str(tmp_path / "my db"), balsam_bin="/opt/balsam/bin", python=str(python),
        wf_filter="my wf")
    script = tmp_path / "qlaunch1.sh"
    script.write_text(machines.render(machine.template_text(), values))
    sched = LocalScheduler(str(tmp_path / "qsubmit"), kill_grace=5)
    job_id = sched.submit(str(script), str(tmp_path), "qlaunch1", str(tmp_path / "q.out"))
    assert wait_for(sched, job_id, lambda j: j.is_final).state == "finished"
    assert (out / "argv").read_text().splitlines() == [
        "-m", "balsam", "launcher", "--wf-filter", "my wf", "--job-mode", "serial",
        "--time-limit-minutes", "8"]
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines())
    assert env["BALSAM_DB_PATH"] == str(tmp_path / "my db")
    assert env["PATH"] == f"/opt/balsam/bin:{env['BALSAM_ORIGINAL_PATH']}"

    monkeypatch.setenv("FAKE_LAUNCHER_SECONDS", "100")
    (out / "started").unlink()
    job_id = sched.submit(str(script), str(tmp_path), "qlaunch2", str(tmp_path / "q2.out"))
    until_exists(out / "started")
    sched.cancel(job_id)
    job = wait_for(sched, job_id, lambda j: j.is_final)
    assert job.state == "cancelled" and "TERM" in (out / "signals").read_text()


def test_a_job_ending_while_its_state_is_read_is_finished_not_vanished(sched, tmp_path, monkeypatch):
    """The wrapper writes the exit file, then its group ends: a status read that sees the group
    dead must read the file after that, or a job exiting 0 at that instant looks VANISHED."""
    from balsam.platform.schedulers import local

    script = write_script(tmp_path / "slow.sh", "sleep 30\n")
    job_id = sched.submit(script, str(tmp_path), "racer", str(tmp_path / "racer.out"))
    exit_file = Path(sched.state_dir) / f"local-{job_id}.exit"

    def ends_now(pgid: int, leader_start: Optional[int] = None) -> bool:  # the job's last
        # moment falls between the two reads
        exit_file.write_text("0\n")
        signal_group(pgid, signal.SIGKILL)
        return False

    monkeypatch.setattr(local, "group_alive", ends_now)
    assert sched.status(USER)[job_id].state == "finished"

