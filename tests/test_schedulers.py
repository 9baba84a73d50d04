"""Scheduler plug-ins (balsam.platform.schedulers): argv builders and parsers against recorded
outputs (tests/data/schedulers/<scheduler>/), the command runner, and the real submit -> status
-> cancel paths of PBS, Cobalt and LSF against the fakes in tests/fakes/bin sharing a state
file. The local scheduler is tested for real in test_schedulers_local.py; Slurm's commands run
for real in the Slurm tests (here only its parsers, plus its final-state fallback against
throwaway per-test fakes)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from balsam.errors import BalsamError
from balsam.platform import machines, schedulers
from balsam.platform.schedulers import (
    BatchJobStatus,
    CommandFailed,
    CommandNotFound,
    CommandTimeout,
    ParseError,
    SchedulerError,
    UnknownScheduler,
    cobalt,
    command,
    lsf,
    pbs,
    slurm,
)

DATA = Path(__file__).parent / "data" / "schedulers"
FAKES = Path(__file__).parent / "fakes" / "bin"


def rec(name: str) -> str:
    """A recorded output."""
    return (DATA / name).read_text()


def S(job_id: str, state: str, raw: str, **kw) -> BatchJobStatus:  # noqa: N802 - reads like a record
    return BatchJobStatus(job_id, state, raw, **kw)


# ---- choosing a plug-in ---------------------------------------------------------------------

def test_get_returns_each_plugin_and_names_the_known_ones_for_a_typo(tmp_path):
    for name in ("slurm", "pbs", "cobalt", "lsf"):
        assert schedulers.get(name).NAME == name
    assert schedulers.get("local", state_dir=str(tmp_path)).NAME == "local"
    with pytest.raises(UnknownScheduler) as err:
        schedulers.get("sge")
    assert str(err.value) == "unknown scheduler 'sge' (one of local, slurm, pbs, cobalt, lsf)"
    assert isinstance(err.value, BalsamError)
    with pytest.raises(SchedulerError, match="needs a directory for its job records"):
        schedulers.get("local")


def test_a_status_record_refuses_a_state_outside_the_normalised_set():
    with pytest.raises(ValueError, match="unknown normalised state 'PENDING'"):
        BatchJobStatus("1", "PENDING", "PENDING")
    assert S("1", "cancelled", "CANCELLED").is_final and not S("1", "held", "H").is_final


# ---- argv builders -----------------------------------------------------------------------------

def test_submit_status_cancel_argv_of_every_cluster_scheduler():
    args = ("/db/qsubmit/qlaunch7.sh", "/db/qsubmit", "qlaunch7", "/db/qsubmit/qlaunch7.out")
    assert slurm.submit_argv(*args) == [
        "sbatch", "--parsable", "--chdir", "/db/qsubmit", "--job-name", "qlaunch7", "--output",
        "/db/qsubmit/qlaunch7.out", "/db/qsubmit/qlaunch7.sh"]
    assert slurm.status_argv("alice") == ["squeue", "--noheader", "--user", "alice", "--format",
                                          "%i|%T|%P|%D|%l|%L|%a|%u|%j"]
    assert slurm.cancel_argv("42") == ["scancel", "42"]
    assert slurm.sacct_argv("42") == ["sacct", "-X", "-n", "-P", "-j", "42", "-o",
                                      "JobID,State,ExitCode"]
    assert slurm.scontrol_argv("42") == ["scontrol", "show", "job", "42"]
    assert pbs.submit_argv(*args) == ["qsub", "-N", "qlaunch7", "-j", "oe", "-o",
                                      "/db/qsubmit/qlaunch7.out", "/db/qsubmit/qlaunch7.sh"]
    assert pbs.status_argv("alice") == ["qstat", "-f", "-F", "json"]
    assert pbs.history_argv("8.s") == ["qstat", "-x", "-f", "-F", "json", "8.s"]
    assert pbs.cancel_argv("8.s") == ["qdel", "8.s"]
    assert cobalt.submit_argv(*args) == ["qsub", "--cwd", "/db/qsubmit", "-O",
                                         "/db/qsubmit/qlaunch7", "/db/qsubmit/qlaunch7.sh"]
    assert cobalt.status_argv("alice") == ["qstat", "-u", "alice"]
    assert cobalt.QSTAT_HEADER == "JobID:User:WallTime:TimeRemaining:State:Queue:Nodes:Project:JobName"
    assert cobalt.cancel_argv("9") == ["qdel", "9"]
    assert lsf.submit_argv(*args) == ["bsub", "-cwd", "/db/qsubmit", "-J", "qlaunch7", "-o",
                                      "/db/qsubmit/qlaunch7.out"]
    assert lsf.status_argv("alice") == [
        "bjobs", "-u", "alice", "-json", "-o",
        "jobid stat user queue job_name proj_name nexec_host runtimelimit time_left exit_code"]
    assert lsf.cancel_argv("5") == ["bkill", "5"]


# ---- submit output ----------------------------------------------------------------------------

def test_submit_output_gives_the_job_id():
    assert slurm.parse_submit(rec("slurm/sbatch.txt")) == "4242"
    assert slurm.parse_submit(rec("slurm/sbatch_cluster.txt")) == "4243"
    assert pbs.parse_submit(rec("pbs/qsub.txt")) == "8123.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"
    assert cobalt.parse_submit(rec("cobalt/qsub.txt")) == "358925"
    assert lsf.parse_submit(rec("lsf/bsub.txt")) == "991234"


@pytest.mark.parametrize("module, name", [(slurm, "slurm/sbatch_error.txt"),
                                          (pbs, "pbs/qsub_error.txt"),
                                          (cobalt, "cobalt/qsub_error.txt"),
                                          (lsf, "lsf/bsub_error.txt")])
def test_submit_output_without_an_id_is_a_one_line_parse_error(module, name):
    with pytest.raises(ParseError) as err:
        module.parse_submit(rec(name))
    assert "printed no job id" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ParseError):
        module.parse_submit("")


# ---- status output: Slurm ---------------------------------------------------------------------

def test_squeue_output_is_parsed_field_by_field():
    assert slurm.parse_status(rec("slurm/squeue.txt")) == {
        "4242": S("4242", "running", "RUNNING", queue="debug", nodes=2, wall_minutes=30.0,
                  minutes_left=pytest.approx(28 + 41 / 60), project="datascience", name="qlaunch1",
                  owner="alice"),
        "4243": S("4243", "queued", "PENDING", queue="debug", nodes=4, wall_minutes=1440.0,
                  minutes_left=1440.0, project="datascience", name="qlaunch2", owner="alice"),
        "4250": S("4250", "running", "RUNNING", queue="regular", nodes=128, wall_minutes=3600.0,
                  minutes_left=pytest.approx(2879 + 10 / 60), project="m1234_g", name="my own job",
                  owner="alice"),
    }


def test_squeue_empty_and_header_only_output_mean_no_jobs():
    assert slurm.parse_status(rec("slurm/squeue_empty.txt")) == {}
    assert slurm.parse_status(rec("slurm/squeue_header.txt")) == {}


def test_squeue_odd_states_blank_lines_and_bars_in_names():
    jobs = slurm.parse_status(rec("slurm/squeue_odd.txt"))
    assert {j: (s.state, s.raw_state) for j, s in jobs.items()} == {
        "4301": ("finishing", "COMPLETING"), "4302": ("running", "CONFIGURING"),
        "4303": ("failed", "PREEMPTED"), "4304": ("failed", "NODE_FAIL"),
        "4305": ("held", "REQUEUE_HOLD"), "4306": ("held", "SUSPENDED"),
        "4307": ("held", "RESV_DEL_HOLD"), "4308": ("unknown", "POWER_UP_NODE"),
        "4309_7": ("queued", "PENDING")}
    assert jobs["4303"].name == "a|name|with|bars" and jobs["4303"].minutes_left is None
    assert jobs["4302"].wall_minutes is None and jobs["4302"].project == ""
    assert jobs["4304"].wall_minutes == 5.0 and jobs["4305"].wall_minutes == 1800.0


def test_squeue_in_another_format_is_a_clear_error():
    with pytest.raises(ParseError) as err:
        slurm.parse_status(rec("slurm/squeue_garbage.txt"))
    assert str(err.value).startswith("squeue line 1 is not 9 '|'-separated fields: ")


def test_slurm_final_states_from_sacct_and_scontrol():
    assert slurm.parse_sacct(rec("slurm/sacct_completed.txt"), "4242") == S(
        "4242", "finished", "COMPLETED", exit_code=0)
    assert slurm.parse_sacct(rec("slurm/sacct_cancelled.txt"), "4243") == S(
        "4243", "cancelled", "CANCELLED", exit_code=-15)
    assert slurm.parse_sacct(rec("slurm/sacct_failed.txt"), "4244") == S(
        "4244", "failed", "FAILED", exit_code=3)
    assert slurm.parse_sacct("", "4242") is None
    assert slurm.parse_scontrol(rec("slurm/scontrol_show_job.txt")) == S(
        "4244", "failed", "FAILED", queue="debug", nodes=2, wall_minutes=30.0,
        project="datascience", name="qlaunch5", owner="alice", exit_code=3)
    assert slurm.parse_scontrol("") is None


def fake_tool(bin_dir: Path, name: str, stdout: str = "", stderr: str = "", code: int = 0) -> None:
    """A throwaway executable printing fixed output (for one test's PATH only)."""
    script = bin_dir / name
    script.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({stdout!r})\n"
                      f"sys.stderr.write({stderr!r})\nsys.exit({code})\n")
    script.chmod(0o755)


def test_slurm_final_status_falls_back_to_scontrol_then_to_none(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    fake_tool(tmp_path, "sacct", stderr=rec("slurm/sacct_disabled.txt"), code=1)
    fake_tool(tmp_path, "scontrol", stdout=rec("slurm/scontrol_show_job.txt"))
    assert slurm.final_status("4244").state == "failed"
    fake_tool(tmp_path, "scontrol", stderr=rec("slurm/scontrol_invalid.txt"), code=1)
    assert slurm.final_status("4244") is None
    fake_tool(tmp_path, "sacct", stdout=rec("slurm/sacct_completed.txt"))
    assert slurm.final_status("4242") == S("4242", "finished", "COMPLETED", exit_code=0)


def test_slurm_cancel_of_an_ended_job_is_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    fake_tool(tmp_path, "scancel", stderr="scancel: error: Kill job error on job id 7: Job/step "
              "already completing or completed\n", code=1)
    slurm.cancel("7")
    fake_tool(tmp_path, "scancel", stderr="scancel: error: Unable to contact slurm controller\n",
              code=1)
    with pytest.raises(CommandFailed, match="Unable to contact slurm controller"):
        slurm.cancel("7")


# ---- status output: PBS -----------------------------------------------------------------------

POLARIS = "polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"


def test_pbs_json_is_parsed_with_nodes_walltime_and_time_left():
    jobs = pbs.parse_status(rec("pbs/qstat.json"))
    assert jobs == {
        f"8123.{POLARIS}": S(f"8123.{POLARIS}", "queued", "Q", queue="debug", nodes=2,
                             wall_minutes=60.0, project="datascience", name="qlaunch1",
                             owner="alice"),
        f"8124.{POLARIS}": S(f"8124.{POLARIS}", "running", "R", queue="prod", nodes=10,
                             wall_minutes=180.0, minutes_left=162.5, project="datascience",
                             name="qlaunch2", owner="alice"),
        f"8125.{POLARIS}": S(f"8125.{POLARIS}", "held", "H", queue="prod", nodes=14,
                             wall_minutes=360.0, project="climate", name="other", owner="bob"),
    }


def test_pbs_empty_queue_and_odd_states_and_invalid_escapes():
    assert pbs.parse_status(rec("pbs/qstat_empty.json")) == {}
    assert pbs.parse_status("") == {}
    jobs = pbs.parse_status(rec("pbs/qstat_odd.json"))  # has "\u@\h" in a Variable_List
    assert {j.split(".")[0]: (s.state, s.raw_state, s.exit_code) for j, s in jobs.items()} == {
        "9001": ("finishing", "E", None), "9002": ("finished", "F", 0),
        "9003": ("cancelled", "F", -15), "9004": ("failed", "F", 1), "9005": ("failed", "F", -29),
        "9006": ("queued", "W", None), "9007": ("held", "S", None), "9008": ("unknown", "M", None),
        "9009[]": ("running", "B", None), "9010": ("queued", "Q", None)}
    assert jobs["9006.pbs01"].wall_minutes == 7200.0


def test_pbs_tabular_or_broken_output_is_a_clear_error():
    with pytest.raises(ParseError, match="qstat printed invalid JSON"):
        pbs.parse_status(rec("pbs/qstat_garbage.txt"))
    with pytest.raises(ParseError, match="no mapping of job ids under 'Jobs'"):
        pbs.parse_status('{"Jobs": [1, 2]}')


# ---- status output: Cobalt --------------------------------------------------------------------

def test_cobalt_fixed_header_columns_are_parsed():
    assert cobalt.parse_status(rec("cobalt/qstat.txt")) == {
        "358925": S("358925", "running", "running", queue="debug-flat-quad", nodes=8,
                    wall_minutes=30.0, minutes_left=pytest.approx(21 + 7 / 60),
                    project="datascience", name="qlaunch1", owner="alice"),
        "358926": S("358926", "queued", "queued", queue="default", nodes=128, wall_minutes=60.0,
                    project="datascience", name="qlaunch2", owner="alice"),
    }


def test_cobalt_empty_header_only_and_odd_states():
    assert cobalt.parse_status(rec("cobalt/qstat_empty.txt")) == {}
    assert cobalt.parse_status(rec("cobalt/qstat_header.txt")) == {}
    jobs = cobalt.parse_status(rec("cobalt/qstat_odd.txt"))
    assert {j: s.state for j, s in jobs.items()} == {
        "358930": "held", "358931": "held", "358932": "finishing", "358933": "running",
        "358934": "finishing", "358935": "unknown"}
    assert jobs["358934"].name == "two words" and jobs["358933"].project == ""
    assert jobs["358935"].raw_state == "preempted" and jobs["358935"].wall_minutes == 1440.0


def test_cobalt_output_in_another_header_is_a_clear_error():
    with pytest.raises(ParseError) as err:
        cobalt.parse_status(rec("cobalt/qstat_garbage.txt"))
    assert str(err.value) == ("qstat printed the columns JobID User WallTime Nodes State Location, "
                              "not QSTAT_HEADER=JobID:User:WallTime:TimeRemaining:State:Queue:"
                              "Nodes:Project:JobName")
    with pytest.raises(ParseError, match="^qstat line 2 is not the 9 columns of QSTAT_HEADER="):
        cobalt.parse_status("\n358925  alice  00:30:00  8  running  3824-3831\n")


# ---- status output: LSF -----------------------------------------------------------------------

def test_lsf_json_records_are_parsed():
    assert lsf.parse_status(rec("lsf/bjobs.json")) == {
        "991234": S("991234", "running", "RUN", queue="batch", nodes=3, wall_minutes=120.0,
                    minutes_left=103.0, project="CSC123", name="qlaunch1", owner="alice"),
        "991235": S("991235", "queued", "PEND", queue="batch", wall_minutes=60.0,
                    project="CSC123", name="qlaunch2", owner="alice"),
    }


def test_lsf_empty_odd_states_and_error_records():
    assert lsf.parse_status(rec("lsf/bjobs_empty.json")) == {}
    jobs = lsf.parse_status(rec("lsf/bjobs_odd.json"))
    assert {j: (s.state, s.exit_code) for j, s in jobs.items()} == {
        "1": ("finished", 0), "2": ("failed", 130), "3": ("held", None), "4": ("held", None),
        "5": ("held", None), "6": ("finishing", None), "7": ("unknown", None),
        "8": ("queued", None), "9": ("running", None)}
    assert jobs["9"].wall_minutes is None and jobs["4"].minutes_left == 5.0


def test_lsf_tabular_output_is_a_clear_error():
    with pytest.raises(ParseError, match="bjobs printed invalid JSON"):
        lsf.parse_status(rec("lsf/bjobs_garbage.txt"))
    with pytest.raises(ParseError, match="no list of job records under 'RECORDS'"):
        lsf.parse_status('{"COMMAND": "bjobs"}')


# ---- the command runner ------------------------------------------------------------------------

def test_run_returns_output_and_passes_env_input_and_cwd(tmp_path):
    result = command.run(["/bin/sh", "-c", 'cat; echo "$X"; pwd; echo err >&2'], 10,
                         input="in\n", env={"X": "x-value"}, cwd=str(tmp_path))
    assert result.stdout == f"in\nx-value\n{tmp_path}\n" and result.stderr == "err\n"
    assert result.returncode == 0 and result.argv[0] == "/bin/sh"


def test_run_failures_are_one_line_scheduler_errors():
    with pytest.raises(CommandNotFound) as err:
        command.run(["no-such-qstat-xyz"], 5)
    assert str(err.value) == ("no-such-qstat-xyz: command not found (is the scheduler's bin "
                              "directory on PATH?)")
    with pytest.raises(CommandFailed) as failed:
        command.run(["/bin/sh", "-c", "echo; echo 'qstat: cannot connect' >&2; echo more >&2; exit 3"])
    assert str(failed.value) == ("`/bin/sh -c echo; echo 'qstat: cannot connect' >&2; echo more "
                                 ">&2; exit 3` failed with exit status 3: qstat: cannot connect")
    assert failed.value.returncode == 3 and failed.value.stderr.endswith("more\n")
    assert command.run(["/bin/sh", "-c", "exit 4"], check=False).returncode == 4


def test_a_hanging_command_is_killed_with_its_children_at_the_timeout(tmp_path):
    pidfile = tmp_path / "child"
    start = time.monotonic()
    with pytest.raises(CommandTimeout, match="did not finish within 0.5 s"):
        command.run(["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], 0.5)
    assert time.monotonic() - start < 20  # killed at its time-out, not after its 60-s sleep
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and alive(child):
        time.sleep(0.05)
    assert not alive(child)


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_retry_backs_off_then_succeeds_or_reraises_the_last_error():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise CommandFailed(f"failure {len(calls)}")
        return "ok"

    assert command.retry(flaky, attempts=3, delay=1, factor=3, sleep=sleeps.append) == "ok"
    assert sleeps == [1, 3]
    calls.clear()
    with pytest.raises(CommandFailed, match="failure 2"):
        command.retry(flaky, attempts=2, sleep=sleeps.append)
    with pytest.raises(CommandTimeout):  # not retried: a timed-out submit may have queued a job
        command.retry(lambda: (_ for _ in ()).throw(CommandTimeout("t")),
                      retry_on=(CommandFailed,), sleep=pytest.fail)


def test_backoff_doubles_to_a_cap_and_resets_on_success():
    backoff = command.Backoff(initial=10, factor=2, maximum=35)
    assert backoff.ready(0)
    assert [backoff.failed(now) for now in (0, 10, 30, 60)] == [10, 20, 35, 35]
    assert not backoff.ready(94) and backoff.ready(95)
    for _ in range(5000):
        backoff.failed(0)  # never overflows
    backoff.succeeded()
    assert backoff.ready(0) and backoff.failures == 0


# ---- end to end against the fake PBS, Cobalt and LSF ------------------------------------------

SITES = {"pbs": "polaris", "cobalt": "theta", "lsf": "summit"}


@pytest.fixture
def fake_scheduler(tmp_path, monkeypatch):
    """Puts tests/fakes/bin first on PATH with a fresh state file; returns a setter of the
    PBS/Cobalt dialect."""
    monkeypatch.setenv("PATH", f"{FAKES}:{os.environ['PATH']}")
    monkeypatch.setenv("BALSAM_FAKE_SCHED_STATE", str(tmp_path / "fake-state.json"))
    for var in ("BALSAM_FAKE_SCHED_FAIL", "BALSAM_FAKE_SCHED_HANG", "BALSAM_FAKE_SCHED_QUEUES"):
        monkeypatch.delenv(var, raising=False)
    return lambda name: monkeypatch.setenv("BALSAM_FAKE_SCHED", name)


def rendered_script(tmp_path: Path, machine_name: str, queue: str) -> str:
    machine = machines.load(machine_name)
    values = machines.template_values(
        machine, project="CSC123", queue=queue, nodes=3, time_minutes=45, job_mode="mpi",
        db_path="/db", balsam_bin="/opt/bin", python="/opt/bin/python3")
    script = tmp_path / "qlaunch1.sh"
    script.write_text(machines.render(machine.template_text(), values))
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize("name", ["pbs", "cobalt", "lsf"])
def test_submit_status_cancel_end_to_end(name, tmp_path, fake_scheduler, monkeypatch):
    fake_scheduler(name)
    sched = schedulers.get(name)
    queue = machines.load(SITES[name]).default_queue
    script = rendered_script(tmp_path, SITES[name], queue)
    job_id = sched.submit(script, str(tmp_path), "qlaunch1", str(tmp_path / "qlaunch1.out"))
    user = json.loads((tmp_path / "fake-state.json").read_text())["jobs"]["1000"]["owner"]
    assert job_id == ("1000.fakepbs" if name == "pbs" else "1000")
    first = sched.status(user)
    assert list(first) == [job_id]
    job = first[job_id]
    # bjobs knows no node count before a job starts, and then counts Summit's launch node too
    assert (job.state, job.queue, job.nodes, job.wall_minutes, job.project) == (
        "queued", queue, None if name == "lsf" else 3, 45.0, "CSC123")
    assert job.name == "qlaunch1" and job.owner == user
    second = sched.status(user)[job_id]
    assert second.state == "running" and 44 <= second.minutes_left <= 45
    assert second.nodes == (4 if name == "lsf" else 3)
    assert sched.status("somebody-else") == {}
    sched.cancel(job_id)
    sched.cancel(job_id)  # cancelling an ended job is not an error
    after = sched.status(user)
    final = sched.final_status(job_id)
    if name == "lsf":  # bjobs lists ended jobs for a while; killed jobs EXIT
        assert after[job_id].state == "failed" and final.state == "failed"
        assert final.exit_code == 130
    else:
        assert after == {}
        if name == "pbs":
            assert (final.state, final.exit_code) == ("cancelled", -15)
        else:
            assert final is None


@pytest.mark.parametrize("name, tool", [("pbs", "qstat"), ("cobalt", "qstat"), ("lsf", "bjobs")])
def test_status_failures_and_hangs_raise_one_line_errors(name, tool, fake_scheduler, monkeypatch):
    fake_scheduler(name)
    sched = schedulers.get(name)
    assert sched.status("alice") == {}  # empty queue (bjobs: "No unfinished job found", 255)
    monkeypatch.setenv("BALSAM_FAKE_SCHED_FAIL", tool)
    with pytest.raises(CommandFailed) as err:
        sched.status("alice")
    assert str(err.value).endswith(
        f"failed with exit status 1: {tool}: cannot connect to server fakeserver (errno=111)")
    monkeypatch.setenv("BALSAM_FAKE_SCHED_HANG", tool)
    monkeypatch.delenv("BALSAM_FAKE_SCHED_FAIL")
    start = time.monotonic()
    with pytest.raises(CommandTimeout):
        sched.status("alice", timeout=0.5)
    assert time.monotonic() - start < 20  # the time-out, not the hang


@pytest.mark.parametrize("name", ["pbs", "cobalt", "lsf"])
def test_a_rejected_submission_is_a_command_failure(name, tmp_path, fake_scheduler, monkeypatch):
    fake_scheduler(name)
    monkeypatch.setenv("BALSAM_FAKE_SCHED_QUEUES", "prod")
    script = rendered_script(tmp_path, SITES[name], "debug")
    with pytest.raises(CommandFailed, match="Unknown queue debug"):
        schedulers.get(name).submit(script, str(tmp_path), "qlaunch1", str(tmp_path / "o.out"))
    with pytest.raises(SchedulerError):
        schedulers.get(name).submit(str(tmp_path / "missing.sh"), str(tmp_path), "q", "o.out")


def test_a_missing_scheduler_command_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CommandNotFound, match="^qstat: command not found"):
        schedulers.get("pbs").status("alice")
