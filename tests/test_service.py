"""``balsam service``: one per database (advisory lock), --status/--stop, restart after kill -9,
a failing scheduler command logged and survived, and end to end on the ``local`` scheduler:
jobs added -> the service plans and submits a local batch job running a launcher -> all
JOB_FINISHED -> the service records the batch job's end; killed and restarted mid-run, it
submits nothing twice."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest
from conftest import make_public_tmpdir, run_balsam
from launcher_support import QUICK, add_app, add_jobs, process_gone, settings, states, wait_for
from service_support import launches, local_jobs, pid_file, services

pytestmark = pytest.mark.slow

FAST = {"cycle_seconds": 0.5, "transition_threads": 1}
HOST = socket.gethostname()


def test_a_second_service_on_the_same_database_is_refused_naming_the_first(db: str) -> None:
    with settings(db, service=FAST), services(db) as start:
        first = start()
        rec = first.wait_started()
        assert (rec["pid"], rec["host"]) == (first.pid, HOST)
        message = (f"balsam service: error: another service (pid {first.pid} on host {HOST}) "
                   "is running on this database\n")
        foreground = run_balsam("service", "--foreground")
        assert (foreground.returncode, foreground.stderr) == (2, message)
        detached = run_balsam("service")  # the detached start reports its child's refusal
        assert (detached.returncode, detached.stderr) == (2, message)
        assert pid_file(db)["pid"] == first.pid and first.proc.poll() is None


def test_status_and_stop_report_and_end_the_running_service_cleanly(db: str) -> None:
    with settings(db, service=FAST), services(db) as start:
        svc = start()
        svc.wait_started()
        rec = svc.wait_cycles(2)
        status = run_balsam("service", "--status")
        lines = status.stdout.splitlines()
        assert status.returncode == 0, status.stderr
        assert lines[0] == f"running: pid {svc.pid} on host {HOST}, since {rec['started']}"
        assert lines[1].startswith("last cycle: 20") and "cycle(s))" in lines[1]
        assert lines[2] == "last cycle counts: cancel 0, sync 0, sweep 0, advance 0, plan 0, submit 0"
        assert lines[4] == f"log: {rec['log']}"
        began = time.monotonic()
        stop = run_balsam("service", "--stop")
        assert (stop.returncode, stop.stdout) == (
            0, f"stopped the service (pid {svc.pid} on host {HOST})\n")
        assert time.monotonic() - began < 60  # a stop, not a wait for a timeout
        assert svc.proc.wait(timeout=5) == 0
        assert pid_file(db) is None
        assert "received SIGTERM: stopping after this step" in svc.log()
        after = run_balsam("service", "--status")
        assert (after.returncode, after.stdout) == (1, "not running\n")
        again = run_balsam("service", "--stop")
        assert (again.returncode, again.stdout) == (0, "no service is running on this database\n")


def test_a_detached_service_prints_its_pid_and_log_and_stops(db: str) -> None:
    with settings(db, service=FAST):
        out = run_balsam("service")
        assert out.returncode == 0, out.stderr
        rec = pid_file(db)
        assert out.stdout == f"service started: pid {rec['pid']}, log {rec['log']}\n"
        assert os.path.basename(rec["log"]).startswith("service_")
        try:
            assert run_balsam("service", "--status").returncode == 0
        finally:
            stop = run_balsam("service", "--stop")
        assert stop.returncode == 0 and process_gone(rec["pid"])


def test_a_service_killed_with_sigkill_is_replaced_its_lock_freed_by_postgresql(db: str) -> None:
    with settings(db, service=FAST), services(db) as start:
        first = start()
        first.wait_started()
        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
        assert pid_file(db)["pid"] == first.pid  # stale
        status = run_balsam("service", "--status")
        assert (status.returncode, status.stdout) == (1, "not running (stale PID file)\n")
        second = start()
        # The dead service's connection (and with it the lock) is gone at once.
        assert second.wait_started()["pid"] == second.pid
        second.wait_cycles(1)
        assert f"replacing the stale PID file of pid {first.pid} on {HOST}" in second.log()


def submitted_since(db: str, since: float) -> list[dict]:
    return [rec for rec in local_jobs(db).values() if rec["submitted"] >= since]


def test_end_to_end_the_service_submits_a_local_batch_job_that_finishes_every_job(
        db: str, cursor) -> None:
    began = time.time()
    with settings(db, service=FAST, launcher=QUICK), services(db) as start:
        svc = start()
        svc.wait_started()
        add_app(cursor, "say", "echo hello")
        t0 = time.monotonic()
        ids = add_jobs(cursor, [{"name": f"j{i}", "application": "say"} for i in range(12)])
        row = wait_for(lambda: [r for r in launches(cursor) if r["scheduler_id"]], 30,
                       "a batch job to be submitted")[0]
        t_submit = time.monotonic() - t0
        wait_for(lambda: set(states(cursor).values()) == {"JOB_FINISHED"}, 60,
                 "every job to finish")
        t_done = time.monotonic() - t0
        (final,) = wait_for(lambda: [r for r in launches(cursor) if r["state"] == "finished"],
                            30, "the service to see the batch job end")
        t_seen = time.monotonic() - t0
        print(f"\nlocal: 12 jobs -> submitted {t_submit:.1f} s, all finished {t_done:.1f} s, "
              f"batch job seen finished {t_seen:.1f} s")
    assert len(ids) == 12 and len(launches(cursor)) == 1
    assert (final["id"], final["queue"], final["job_mode"]) == (row["id"], "local", "serial")
    (rec,) = submitted_since(db, began)
    assert rec["script"].startswith(os.path.join(db, "qsubmit"))
    log = svc.log()
    assert f"submitted batch job {row['id']}: scheduler id {row['scheduler_id']}" in log


def test_a_service_killed_and_restarted_mid_run_submits_nothing_twice(db: str, cursor) -> None:
    began = time.time()
    # Two batch jobs may queue and run at once: only the planner's coverage of the backlog by
    # the running batch job (found again after the restart) keeps the second service from
    # submitting another.
    queues = {"local": {"min_nodes": 1, "max_nodes": 1, "min_minutes": 1, "max_minutes": 60,
                        "max_queued": 2, "max_running": 2, "max_total_nodes": 2}}
    with settings(db, service=FAST, launcher=QUICK, queues=queues), services(db) as start:
        first = start()
        first.wait_started()
        add_app(cursor, "nap", "sleep 1")
        add_jobs(cursor, [{"name": f"n{i}", "application": "nap", "node_packing_count": 2}
                          for i in range(8)])
        wait_for(lambda: "RUNNING" in states(cursor).values(), 40, "a job to run")
        os.kill(first.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
        second = start()
        second.wait_started()
        wait_for(lambda: set(states(cursor).values()) == {"JOB_FINISHED"}, 90,
                 "every job to finish")
        wait_for(lambda: [r["state"] for r in launches(cursor)] == ["finished"], 30,
                 "the restarted service to see the batch job end")
        second.wait_cycles(3)
        assert "submitted batch job" not in second.log()
    assert len(submitted_since(db, began)) == 1
FAILING = "#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n"


def test_a_failing_scheduler_command_is_logged_and_retried_while_other_steps_go_on(
        db: str, cursor) -> None:
    fake = make_public_tmpdir("balsam-fake-slurm-")
    for name in ("squeue", "sbatch", "scancel", "sacct", "scontrol"):
        path = os.path.join(fake, name)
        with open(path, "w") as fh:
            fh.write(FAILING)
        os.chmod(path, 0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}"}
    with settings(db, service=FAST, scheduler="slurm"), services(db) as start:
        svc = start(env=env)
        svc.wait_started()
        svc.wait_cycles(3)
        add_app(cursor, "echo", "echo")
        (job,) = add_jobs(cursor, [{"name": "a", "application": "echo"}])
        # Processing is not held up by the scheduler: the job becomes runnable.
        wait_for(lambda: states(cursor) == {"a": "PREPROCESSED"}, 20, "the job to be processed")
        log = svc.log()
        assert "sync failed (" in log and "Unable to contact slurm controller" in log
        assert "retrying in" in log
        assert svc.proc.poll() is None


def test_a_database_outage_is_survived_and_the_lock_taken_again(restart_db: str) -> None:
    from balsam.db import cluster
    from balsam.db.connect import connect

    with settings(restart_db, service=FAST), services(restart_db) as start:
        svc = start()
        svc.wait_started()
        svc.wait_cycles(1)
        cluster.stop(restart_db)
        time.sleep(3)  # several cycles without a server
        assert svc.proc.poll() is None
        cluster.start(restart_db)
        conn = connect(restart_db, autocommit=True)
        try:
            with conn.cursor() as cur:
                add_app(cur, "echo", "echo")
                add_jobs(cur, [{"name": "after", "application": "echo"}])
                wait_for(lambda: states(cur) == {"after": "PREPROCESSED"}, 30,
                         "the service to process a job after the outage")
        finally:
            conn.close()
        wait_for(lambda: "service lock re-taken" in svc.log(), 20, "the lock to be re-taken")
        status = run_balsam("service", "--status", env={"BALSAM_DB_PATH": restart_db})
        assert status.returncode == 0 and status.stdout.startswith(f"running: pid {svc.pid} ")
        assert "database" in svc.log() and svc.proc.poll() is None


def test_with_the_database_unreachable_a_pid_file_naming_another_process_is_no_service(tmp_path):
    """The PID file keeps the service's start time: a pid reused since a crash is not taken for
    the service, nor sent --stop's SIGTERM."""
    from balsam.platform.process import start_time
    from balsam.service import control

    (tmp_path / "server-info").write_text(json.dumps({"host": "", "port": ""}))  # stopped
    proc = subprocess.Popen(["sleep", "600"])
    try:
        rec = {"pid": proc.pid, "host": socket.gethostname(), "proc_start": start_time(proc.pid)}
        control.write_pid_file(str(tmp_path), rec)
        assert control.status(str(tmp_path)) == (True, rec, "database unreachable; checked the "
                                                            "process")
        rec["proc_start"] -= 1  # as if the service had been an earlier process with this pid
        control.write_pid_file(str(tmp_path), rec)
        assert control.status(str(tmp_path))[0] is False
        stopped, message = control.stop(str(tmp_path), 1.0)
        assert (stopped, message) == (False, "no service is running on this database (database "
                                             "unreachable; checked the process)")
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
