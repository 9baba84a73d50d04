"""A serial-mode ensemble whose worker rank's watchdog has not reported when the launcher gives up
waiting (its tasks are not known dead) leaves its session to the lease sweep -- and with it the
jobs it holds and the reports, also when a new ensemble follows: the sweep records the start
the watchdog reports once it is done. Real launcher, real ``mpiexec`` (the mpich wheel), real
PostgreSQL; the test stops the worker's watchdog (SIGSTOP) and kills the worker rank."""
from __future__ import annotations

import json
import os
import signal

from launcher_procs import launchers
from launcher_support import (
    QUICK,
    add_app,
    add_jobs,
    events,
    job_row,
    process_gone,
    settings,
    wait_for,
    workdir,
    write_script,
)
from once_support import cmdline, descendants

from balsam.core import leases, schema
from balsam.db.connect import connect

SERIAL = ("--consume-all", "--job-mode", "serial")
SLEEPER = """#!/bin/sh
trap '' TERM
echo $$ > pid
exec sleep 120
"""


def rank_watchdog(launcher: int) -> int:
    """The pid of the watchdog of ``launcher``'s worker rank 1 (it reports to
    ``.../0/rank1.json``), or 0."""
    for pid in descendants(launcher):
        if "balsam.launcher.watchdog" in cmdline(pid) and "rank1.json" in cmdline(pid):
            return pid
    return 0


def ranks(launcher: int) -> list[int]:
    """The serial-mode ranks of ``launcher`` still running."""
    return [p for p in descendants(launcher)
            if " -m balsam.launcher.serial_ranks " in cmdline(p) and not process_gone(p)]


def state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def watched(watchdog: int) -> tuple[int, str]:
    """(the process a watchdog watches, its report file): its argv is python -S -c BOOT GRACE
    OWNER REPORT ..."""
    with open(f"/proc/{watchdog}/cmdline", "rb") as fh:
        argv = fh.read().split(b"\0")
    return int(argv[5]), argv[6].decode()


def swept(db: str, cursor, sid: int) -> bool:
    leases.after_sweep(db, leases.sweep_sessions(cursor, db))
    cursor.execute("SELECT ended_at IS NOT NULL FROM core_launchersession WHERE id = %s", [sid])
    return bool(cursor.fetchone()[0])


def test_a_start_whose_watchdog_reports_after_the_launcher_gave_up_is_recorded_by_the_sweep(
        db, cursor, scripts):
    add_app(cursor, "quick", "true")
    add_app(cursor, "sleeper", write_script(scripts, "sleeper.sh", SLEEPER))
    add_jobs(cursor, [{"name": "warm", "application": "quick", "state": "PREPROCESSED",
                       "priority": 10}])  # (the launcher's own first task)
    (job_id,) = add_jobs(cursor, [{"name": "j", "application": "sleeper",
                                   "state": "PREPROCESSED"}])
    pid_file = os.path.join(workdir(db, cursor, job_id), "pid")
    lock = connect(db)  # KEY SHARE on the job: its claim passes, its RUNNING waits
    with lock.cursor() as held:
        held.execute(f"SELECT 1 FROM {schema.JOB_TABLE} WHERE job_id = %s FOR KEY SHARE",
                     [job_id])
    stopped = task = 0
    try:
        with settings(db, local_nodes=1, cores_per_node=1,
                      launcher=dict(QUICK, lease_seconds=3, kill_grace_seconds=5)), \
                launchers() as start:
            first = start(*SERIAL)
            wait_for(lambda: os.path.exists(pid_file), 90, "the worker to start the task")
            task = int(open(pid_file).read())
            watchdog = wait_for(lambda: rank_watchdog(first.pid), 30, "worker 1's watchdog")
            worker, report = watched(watchdog)
            os.kill(worker, signal.SIGKILL)  # the ensemble fails
            wait_for(lambda: process_gone(worker), 30, "worker 1 to die")
            # Its watchdog stops the task (which ignores SIGTERM: a grace of 5 s); stopped
            # meanwhile, its report still says "running" when the launcher gives up waiting.
            os.kill(watchdog, signal.SIGSTOP)
            stopped = watchdog
            wait_for(lambda: state(watchdog) == "T", 10, "the watchdog to stop")
            assert json.load(open(report))["state"] == "running"
            wait_for(lambda: not ranks(first.pid), 60, "the ranks to die")
            lock.rollback()  # (the master's blocked write goes on, to a closed connection)
            first.wait(120)
            log = first.log()
            assert "not known to be dead" in log, log
            sid = first.session_id()
            # The task may still run: its job stays held by the open session.
            assert job_row(cursor, job_id)["session_id"] == sid
            os.kill(stopped, signal.SIGCONT)  # it stops the task and reports its start
            wait_for(lambda: process_gone(stopped) and process_gone(task), 60,
                     "the watchdog to stop the task")
            stopped = task = 0
            wait_for(lambda: swept(db, cursor, sid), 90, "the sweep of the session")
    finally:
        lock.close()
        for pid in (stopped, task):
            if pid:
                os.kill(pid, signal.SIGCONT if pid == stopped else signal.SIGKILL)
    names = [e[2] for e in events(cursor, job_id)]
    assert names[-3:-1] == ["RUNNING", "RUN_TIMEOUT"] or names[-2:] == [
        "RUNNING", "RUN_TIMEOUT"], names
    assert names.count("RUNNING") == 1


APPENDER = """#!/bin/sh
trap '' TERM
echo $$ >> pids
[ "$(wc -l < pids)" -gt 1 ] && exit 0
exec sleep 120
"""
"""The first run sleeps (SIGTERM ignored), the others end at once; each adds its pid."""


def watchdog_of_worker(launcher: int, worker: int) -> int:
    """The pid of the watchdog watching worker rank process ``worker``, or 0."""
    for pid in descendants(launcher):
        if "balsam.launcher.watchdog" in cmdline(pid) and "rank" in cmdline(pid):
            try:
                if watched(pid)[0] == worker:
                    return pid
            except (OSError, ValueError, IndexError):
                continue
    return 0


def parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def test_a_restart_keeps_the_claims_while_a_ranks_watchdog_has_not_reported(db, cursor, scripts):
    """Weak point 1 of session 19: after an ensemble restart, a start the dead master never
    recorded, on a rank whose watchdog had not reported, was released -- the new ensemble ran
    the job again beside its task, and the start was never recorded. Now the claims stay held
    until the watchdog reported; then the start is recorded and the retry runs after it."""
    add_app(cursor, "quick", "true")
    add_app(cursor, "appender", write_script(scripts, "appender.sh", APPENDER))
    add_jobs(cursor, [{"name": "warm", "application": "quick", "state": "PREPROCESSED",
                       "priority": 10}])  # (the launcher's own first task)
    (job_id,) = add_jobs(cursor, [{"name": "j", "application": "appender",
                                   "state": "PREPROCESSED", "priority": 5}])
    pids_file = os.path.join(workdir(db, cursor, job_id), "pids")
    lock = connect(db)  # KEY SHARE on the job: its claim passes, its RUNNING waits
    with lock.cursor() as held:
        held.execute(f"SELECT 1 FROM {schema.JOB_TABLE} WHERE job_id = %s FOR KEY SHARE",
                     [job_id])
    stopped = task = 0

    def started() -> int:
        with open(pids_file) as fh:
            return len(fh.read().split())

    def once_while(pid: int) -> bool:
        """Whether ``pid`` is gone (the job must not start again before)."""
        gone = process_gone(pid)
        assert gone or started() == 1, "the job ran twice at once"
        return gone

    try:
        with settings(db, local_nodes=2, cores_per_node=1,
                      launcher=dict(QUICK, lease_seconds=20, kill_grace_seconds=3)), \
                launchers() as start:
            first = start(*SERIAL)
            wait_for(lambda: os.path.exists(pids_file), 90, "a worker to start the task")
            task = int(open(pids_file).read().split()[0])
            worker = parent(task)
            watchdog = wait_for(lambda: watchdog_of_worker(first.pid, worker), 30,
                                "the task's worker rank's watchdog")
            os.kill(watchdog, signal.SIGSTOP)  # it will not report before the launcher gives up
            stopped = watchdog
            wait_for(lambda: state(watchdog) == "T", 10, "the watchdog to stop")
            os.kill(worker, signal.SIGKILL)  # the ensemble fails
            wait_for(lambda: not ranks(first.pid), 60, "the ranks to die")
            lock.rollback()
            wait_for(lambda: "restarting the serial-mode ensemble" in first.log(), 90,
                     "the launcher to restart the ensemble")
            (after,) = add_jobs(cursor, [{"name": "after", "application": "quick",
                                          "state": "PREPROCESSED"}])
            wait_for(lambda: job_row(cursor, after)["state"] not in ("PREPROCESSED", "RUNNING")
                     or started() > 1, 90, "the new ensemble to run a job")
            assert started() == 1, "the job ran twice at once"
            assert job_row(cursor, job_id)["session_id"] == first.session_id()  # still held
            os.kill(stopped, signal.SIGCONT)  # it stops the task and reports its start
            wait_for(lambda: once_while(task), 60, "the watchdog to stop the task")
            wait_for(lambda: process_gone(stopped), 30, "the watchdog to exit")
            stopped = task = 0
            assert first.wait(120) == 0
            log = first.log()
    finally:
        lock.close()
        for pid in (stopped, task):
            if pid:
                os.kill(pid, signal.SIGCONT if pid == stopped else signal.SIGKILL)
    assert "1 unrecorded start(s) recorded" in log, log
    names = [(e[2], e[3]) for e in events(cursor, job_id)]
    runs = [message for state, message in names if state == "RUNNING"]
    assert len(runs) == started() == 2, names  # the lost start recorded, then the retry
    assert "(recorded after the run)" in runs[0], names
    assert job_row(cursor, job_id)["state"] == "JOB_FINISHED"
