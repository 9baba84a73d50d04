"""``balsam service``: one per database (advisory lock), --status/--stop, restart after kill -9,
a failing scheduler command logged and survived, and end to end on the ``local`` scheduler:
jobs added -> the service plans and submits a local batch job running a launcher -> all
JOB_FINISHED -> the service records the batch job's end; killed and restarted mid-run, it
submits nothing twice."""
from __future__ import annotations

import os
import signal
import socket
import time

from conftest import run_balsam
from launcher_support import process_gone, settings
from service_support import pid_file, services

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
        assert lines[2] == "last cycle counts: sync 0, sweep 0, advance 0, plan 0, submit 0"
        assert lines[4] == f"log: {rec['log']}"
        began = time.monotonic()
        stop = run_balsam("service", "--stop")
        assert (stop.returncode, stop.stdout) == (
            0, f"stopped the service (pid {svc.pid} on host {HOST})\n")
        assert time.monotonic() - began < 15
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
