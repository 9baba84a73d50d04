"""Serial-mode launcher, when things end early: a launcher killed with its ranks (swept after
its lease and retried, a start it never wrote recorded by the sweep), the launcher's time limit
(running tasks stopped as RUN_TIMEOUT, jobs too long never started), the database restarted
during a run, and a database that cannot be reached when the session opens. Real launchers,
real MPICH, real PostgreSQL. Split from ``tests/test_launcher_serial.py`` (session 21), so that
neither file takes minutes on its own."""
from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import time
from typing import Optional

import pytest
from conftest import make_public_tmpdir, run_balsam
from launcher_procs import launchers
from launcher_support import (
    QUICK,
    SLOW_APPEND,
    add_app,
    add_jobs,
    events,
    job_row,
    process_gone,
    settings,
    states,
    wait_for,
    write_script,
)
from once_support import descendants
from test_launcher_serial import SERIAL, pids_of, sleepers, to_states

from balsam.core import schema, serial_reports
from balsam.db.connect import connect

pytestmark = pytest.mark.slow


# ---- a launcher killed with its ranks ---------------------------------------------------------

def in_group(pid: int, pgid: int) -> bool:
    try:
        return os.getpgid(pid) == pgid
    except ProcessLookupError:
        return False


def is_watchdog(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"balsam.launcher.watchdog" in fh.read()
    except OSError:
        return False


def test_a_killed_launcher_and_its_ranks_are_swept_after_the_lease_and_retried(db, cursor,
                                                                                scripts):
    (job_id,), (pid_file,) = sleepers(db, cursor, scripts, 1)
    with settings(db, launcher=dict(QUICK, lease_seconds=3)), launchers() as start:
        first = start(*SERIAL)
        leader, _ = wait_for(lambda: pids_of(pid_file), 30, "the task to start")
        # The start written first (a start not written yet: the next test).
        wait_for(lambda: job_row(cursor, job_id)["state"] == "RUNNING", 30, "RUNNING written")
        everything = kill_launcher_side(first.pid, leader)
        first.wait(120)
        # Each worker rank's watchdog stops the tasks its rank started.
        wait_for(lambda: all(process_gone(p) for p in everything), 10, "everything to die")
        assert job_row(cursor, job_id)["state"] == "RUNNING"
        second = start(*SERIAL, "--persistent")
        # (the lease is raised to its floor: balsam.launcher.fence.effective_lease)
        wait_for(lambda: job_row(cursor, job_id)["state"] == "JOB_FINISHED", 180,
                 "the sweep, the retry and the second run")
        second.signal(signal.SIGTERM)
        assert second.wait(120) == 0
    evs = events(cursor, job_id)
    assert to_states(evs)[-6:] == ["RUNNING", "RUN_TIMEOUT", "RESTART_READY", "RUNNING",
                                   "RUN_DONE", "JOB_FINISHED"]
    assert "lost its lease: no heartbeat since" in evs[-5][3]


def kill_launcher_side(launcher_pid: int, leader: int) -> list[int]:
    """SIGKILL the launcher, mpiexec and every rank (not the watchdogs, not the task group);
    returns every process that was there."""
    everything = [launcher_pid] + descendants(launcher_pid)  # mpiexec, ranks, watchdogs, task
    assert any(is_watchdog(p) for p in everything)
    for pid in [p for p in everything if not in_group(p, leader) and not is_watchdog(p)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return everything


def reported_starts(directory: str) -> Optional[list[str]]:
    """The starts the worker ranks' reports in ``directory`` name, once every one is final."""
    started: list[str] = []
    try:
        for name in os.listdir(directory):
            with open(os.path.join(directory, name)) as fh:
                report = json.load(fh)
            if report.get("state") not in ("stopped", "alive"):
                return None
            started += report["started"]
    except (OSError, ValueError):
        return None
    return started


def test_a_start_never_written_by_a_launcher_killed_with_its_ranks_is_recorded_by_the_sweep(
        db, cursor, scripts):
    (job_id,), (pid_file,) = sleepers(db, cursor, scripts, 1, state="PREPROCESSED")
    # The launcher's own first tasks (warm_start.py) take node 1: this job, not fitting beside
    # the filler, goes to a worker rank (rank 2, or rank 1 once the filler ended).
    add_app(cursor, "hello", "/bin/echo hi")
    add_jobs(cursor, [{"name": "filler", "application": "hello", "priority": 1,
                       "state": "PREPROCESSED"}])
    # The test holds the job row (KEY SHARE: the claim's NO KEY UPDATE passes, a state move's
    # FOR UPDATE waits), so the master's RUNNING write waits until everything is killed.
    lock = connect(db)
    with lock.cursor() as held:
        held.execute(f"SELECT 1 FROM {schema.JOB_TABLE} WHERE job_id = %s FOR KEY SHARE",
                     [job_id])
    try:
        with settings(db, local_nodes=2, launcher=dict(QUICK, lease_seconds=3)), \
                launchers() as start:
            first = start(*SERIAL)
            leader, _ = wait_for(lambda: pids_of(pid_file), 60, "the task to start")
            everything = kill_launcher_side(first.pid, leader)
            first.wait(120)
            wait_for(lambda: all(process_gone(p) for p in everything), 60, "everything to die")
            (mine,) = serial_reports.launcher_dirs(db, socket.gethostname(), first.pid)
            reports = os.path.join(mine, "0")
            assert wait_for(lambda: reported_starts(reports), 60, "the watchdogs' reports"
                            ) == [job_id]
            lock.rollback()  # the master's blocked write goes on, to a closed connection
            assert job_row(cursor, job_id)["state"] == "PREPROCESSED"
            second = start(*SERIAL, "--persistent")
            wait_for(lambda: job_row(cursor, job_id)["state"] == "JOB_FINISHED", 180,
                     "the sweep, the retry and the second run")
            second.signal(signal.SIGTERM)
            assert second.wait(120) == 0
            log = second.log()
    finally:
        lock.close()
    assert "1 start(s) its watchdogs reported and its history lacked recorded" in log, log
    assert not os.path.exists(os.path.dirname(reports))  # removed after the sweep's commit
    evs = events(cursor, job_id)
    assert to_states(evs) == ["PREPROCESSED", "RUNNING", "RUN_TIMEOUT", "RESTART_READY",
                              "RUNNING", "RUN_DONE", "JOB_FINISHED"]
    assert evs[1][3].endswith("(recorded after the run)")
    assert "read by the lease sweep): outcome unknown" in evs[2][3]
    assert evs[1][3].split(" (")[0] != evs[4][3]  # the retry: the second launcher's session


# ---- the time limit and the database ---------------------------------------------------------

def test_the_time_limit_stops_running_tasks_as_run_timeout_and_skips_jobs_too_long(
        db, cursor, scripts):
    (short,), (pid_file,) = sleepers(db, cursor, scripts, 1, nap=300)
    add_app(cursor, "hello", "/bin/echo hi")
    (long_,) = add_jobs(cursor, [{"name": "too_long", "application": "hello",
                                  "wall_time_minutes": 2}])
    with settings(db, local_nodes=2, launcher=dict(QUICK, walltime_margin_seconds=3)), \
            launchers() as start:
        # Tasks stop at 69 s; the 1-minute job fits while the launcher has more than a minute
        # left: if claimed within 9 s of its start (1.08 minutes left only 1.8 s: a start-up
        # slower than that under load left it unclaimed, and the test waited in vain).
        first = start(*SERIAL, "--time-limit-minutes", "1.2")
        began = time.time()
        leader, child = wait_for(lambda: pids_of(pid_file), 120, "the task to start")
        assert first.wait(240) == 0
        assert process_gone(leader) and process_gone(child)
        stopped = events(cursor, short)
        assert to_states(stopped)[-2:] == ["RUNNING", "RUN_TIMEOUT"]
        assert stopped[-1][3] == "stopped by the launcher: the launcher's time limit was reached"
        # Not before the limit; and at it, counted from the launcher's start (its first log
        # line: on a loaded machine its start-up alone can take seconds), give or take the
        # stop's own work.
        started = datetime.datetime.strptime(first.log()[:23], "%Y-%m-%d %H:%M:%S,%f")
        assert began + 68 < stopped[-1][0].timestamp() < started.timestamp() + 69 + 15
        assert to_states(events(cursor, long_)) == ["PREPROCESSED"]  # never started
        cursor.execute(f"SELECT end_reason FROM {schema.SESSION_TABLE} "
                   "WHERE job_mode <> 'processing'")
        assert cursor.fetchall() == [("the launcher's time limit was reached",)]
        assert start(*SERIAL).wait(60) == 0
    assert states(cursor) == {"s0": "JOB_FINISHED", "too_long": "JOB_FINISHED"}


def test_a_database_restart_during_a_run_loses_no_state_change(restart_db, scripts):
    import socket

    from balsam.db import cluster, serverinfo
    from balsam.db.connect import connect

    markers = make_public_tmpdir("balsam-l2-markers-")
    conn = connect(restart_db, autocommit=True)
    cur = conn.cursor()
    add_app(cur, "append", write_script(scripts, "append.sh", SLOW_APPEND))
    ids = add_jobs(cur, [{"name": f"r{i}", "application": "append",
                          "environ_vars": f"MARKERS={markers}"} for i in range(8)])
    with settings(restart_db, local_nodes=2, launcher=QUICK), launchers() as start:
        launcher = start(*SERIAL, env={"BALSAM_DB_PATH": restart_db})
        wait_for(lambda: "RUNNING" in states(cur).values(), 30, "a task to run")
        conn.close()
        old_port = serverinfo.read(restart_db)["port"]
        cluster.stop(restart_db)
        with socket.socket() as hold:  # the old port stays taken: the server moves
            hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            hold.bind(("", old_port))
            time.sleep(1.5)  # tasks end and start while the server is down
            cluster.start(restart_db)
        assert launcher.wait(90) == 0, launcher.output()
        assert "reconnected to the database" in launcher.log()
    conn = connect(restart_db, autocommit=True)
    cur = conn.cursor()
    try:
        assert set(states(cur).values()) == {"JOB_FINISHED"}
        for job_id in ids:
            assert to_states(events(cur, job_id)) == ["PREPROCESSED", "RUNNING", "RUN_DONE",
                                                      "JOB_FINISHED"]
            with open(os.path.join(markers, job_id)) as fh:
                assert fh.read().splitlines() == [job_id]
    finally:
        conn.close()


def test_an_ensemble_started_before_the_session_ends_when_the_session_cannot_open(db):
    """The ensemble starts while the launcher opens its session (rank 0 then reads the id on
    mpiexec's stdin); if the database cannot be reached, no rank is left behind."""
    from balsam.db import serverinfo

    root = make_public_tmpdir("balsam-serial-nodb-")
    path = os.path.join(root, "db")
    os.makedirs(path)
    shutil.copy(serverinfo.path_of(db), serverinfo.path_of(path))
    shutil.copytree(os.path.join(db, ".auth"), os.path.join(path, ".auth"))
    shutil.copy(os.path.join(db, "settings.yml"), os.path.join(path, "settings.yml"))
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serverinfo.update(path, port=port)
    try:
        with settings(path, launcher=dict(QUICK, reconnect_max_seconds=1)):
            done = run_balsam("launcher", *SERIAL, env={"BALSAM_DB_PATH": path}, timeout=60)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "unreachable" in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        log = os.path.join(path, "log")
        assert [f for f in os.listdir(log) if f.startswith("serial_pid")]  # it did start early
        wait_for(lambda: not processes_naming(path), 10, "the ranks to exit")
        (name,) = [f for f in os.listdir(log) if f.startswith("launcher_")]
        with open(os.path.join(log, name)) as fh:  # rank 0 read end-of-file, told the workers
            assert "serial master exits: the launcher opened no session" in fh.read()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def processes_naming(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (the ranks' config names the DB)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if text.encode() in fh.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found
