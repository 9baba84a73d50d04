"""The claims a failed serial-mode ensemble keeps while a rank's watchdog has not reported
(balsam.launcher.kept_claims) stay held whatever the next ensemble of the session does: its
master's release at its end (a stop, the time limit) and its reconciliation after a reconnect
give back only what it claimed itself. Real launcher, real ``mpiexec`` (the mpich wheel), real
PostgreSQL; the test stops the worker's watchdog (SIGSTOP) and kills the worker rank, as
tests/test_ensemble_unsettled.py does."""
from __future__ import annotations

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
from test_ensemble_unsettled import (
    APPENDER,
    parent,
    ranks,
    state,
    swept,
    watchdog_of_worker,
)

from balsam.core import schema
from balsam.db.connect import connect

SERIAL = ("--consume-all", "--job-mode", "serial")


def test_a_stop_during_the_next_ensemble_leaves_the_kept_claims_held(db, cursor, scripts):
    """The next ensemble's master, stopped (SIGTERM to the launcher) while the failed
    ensemble's claims are kept, released every claim of the session: the job whose start
    only the stopped watchdog knows became runnable beside its task, and the sweep, which no
    longer saw it held, never recorded that start. Now it stays held by the session; the sweep
    records the start once the watchdog reported."""
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
            wait_for(lambda: job_row(cursor, after)["state"] not in ("PREPROCESSED", "RUNNING"),
                     90, "the new ensemble to run a job")
            sid = first.session_id()
            assert job_row(cursor, job_id)["session_id"] == sid  # kept
            first.signal(signal.SIGTERM)  # the new ensemble's master stops and releases
            first.wait(120)
            log = first.log()
            assert "forwarding the stop" in log, log
            row = job_row(cursor, job_id)
            assert row["session_id"] == sid, (row, log)  # (before: None, runnable elsewhere)
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
    names = [(e[2], e[3]) for e in events(cursor, job_id)]
    runs = [message for s, message in names if s == "RUNNING"]
    assert len(runs) == 1 and "(recorded after the run)" in runs[0], names
    assert [s for s, _ in names][-2:] == ["RUNNING", "RUN_TIMEOUT"], names


def test_a_second_failure_does_not_release_the_first_ones_kept_claims(db, cursor, scripts):
    """The first ensemble fails with a worker's watchdog stopped (its claims kept); the next
    one fails too, its ranks all known dead: its settle, at once, released every claim it
    kept -- also the first ensemble's, whose watchdog had still not reported -- and the third
    ensemble ran the job beside its task. Now each settle gives back only its own."""
    from once_support import rank_pid

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

    def ran(name: str) -> None:
        (after,) = add_jobs(cursor, [{"name": name, "application": "quick",
                                      "state": "PREPROCESSED"}])
        wait_for(lambda: job_row(cursor, after)["state"] not in ("PREPROCESSED", "RUNNING")
                 or started() > 1, 90, f"the ensemble to run job {name}")

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
            os.kill(watchdog, signal.SIGSTOP)
            stopped = watchdog
            wait_for(lambda: state(watchdog) == "T", 10, "the watchdog to stop")
            os.kill(worker, signal.SIGKILL)  # the first ensemble fails
            wait_for(lambda: not ranks(first.pid), 60, "the ranks to die")
            lock.rollback()
            wait_for(lambda: "(ensemble 2 of this session)" in first.log(), 90,
                     "the launcher to start the second ensemble")
            ran("second")
            second = wait_for(lambda: rank_pid(first.pid, 1), 30, "the second's worker")
            os.kill(second, signal.SIGKILL)  # the second fails; its watchdog reports at once
            wait_for(lambda: "(ensemble 3 of this session)" in first.log(), 90,
                     "the launcher to start the third ensemble")
            ran("third")
            assert started() == 1, "the job ran twice at once"
            assert job_row(cursor, job_id)["session_id"] == first.session_id()  # still kept
            os.kill(stopped, signal.SIGCONT)  # it stops the task and reports its start
            wait_for(lambda: process_gone(task), 60, "the watchdog to stop the task")
            assert started() == 1, "the job ran twice at once"
            wait_for(lambda: process_gone(stopped), 30, "the watchdog to exit")
            stopped = task = 0
            assert first.wait(120) == 0
            log = first.log()
    finally:
        lock.close()
        for pid in (stopped, task):
            if pid:
                os.kill(pid, signal.SIGCONT if pid == stopped else signal.SIGKILL)
    names = [(e[2], e[3]) for e in events(cursor, job_id)]
    runs = [message for s, message in names if s == "RUNNING"]
    assert len(runs) == started() == 2, (names, log)  # the lost start recorded, the retry
    assert "(recorded after the run)" in runs[0], names
