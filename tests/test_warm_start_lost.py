"""A task the launcher itself started (serial mode's warm start) whose launcher was killed
before the task's RUNNING was written is in its job's history: the launcher notes such starts
(``launcher.json`` in its watch directory, :func:`balsam.core.serial_reports.note_own_starts`)
and the lease sweep of its session records them. Real launchers, real ``mpiexec`` (the mpich
wheel), real PostgreSQL."""
from __future__ import annotations

import json
import os
import signal
import socket
from typing import Optional

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
from once_support import descendants

from balsam.core import schema, serial_reports
from balsam.db.connect import connect

SERIAL = ("--consume-all", "--job-mode", "serial")
SLEEP_ONCE = """#!/bin/bash
if [ -e ran_once ]; then echo second run; exit 0; fi
touch ran_once
echo $$ > pids
exec sleep 60
"""


def noted(path: str) -> Optional[list[str]]:
    """The starts the launcher's note at ``path`` names, once it is there."""
    try:
        with open(path) as fh:
            return json.load(fh)["started"]
    except (OSError, ValueError):
        return None


def test_a_warm_start_task_whose_launcher_died_before_its_start_was_written_is_recorded(
        db, cursor, scripts):
    add_app(cursor, "sleeper", write_script(scripts, "sleep_once.sh", SLEEP_ONCE))
    (job_id,) = add_jobs(cursor, [{"name": "w", "application": "sleeper",
                                   "state": "PREPROCESSED"}])
    pid_file = os.path.join(workdir(db, cursor, job_id), "pids")
    # The test holds the job row (KEY SHARE: the claim passes, a state move waits), so the
    # warm start's RUNNING write waits until the launcher is killed.
    lock = connect(db)
    with lock.cursor() as held:
        held.execute(f"SELECT 1 FROM {schema.JOB_TABLE} WHERE job_id = %s FOR KEY SHARE",
                     [job_id])
    try:
        with settings(db, local_nodes=1, launcher=dict(QUICK, lease_seconds=3)), \
                launchers() as start:
            first = start(*SERIAL)
            wait_for(lambda: os.path.exists(pid_file), 60, "the warm start's task to start")
            (watch,) = serial_reports.launcher_dirs(db, socket.gethostname(), first.pid)
            assert wait_for(lambda: noted(os.path.join(watch, "launcher.json")), 30,
                            "the launcher's note") == [job_id]
            everything = [first.pid] + descendants(first.pid)
            os.kill(first.pid, signal.SIGKILL)  # its watchdog stops the task and the ensemble
            first.wait(120)
            wait_for(lambda: all(process_gone(p) for p in everything), 60, "everything to die")
            lock.rollback()  # the launcher's blocked write goes on, to a closed connection
            assert job_row(cursor, job_id)["state"] == "PREPROCESSED"
            second = start(*SERIAL, "--persistent")
            wait_for(lambda: job_row(cursor, job_id)["state"] == "JOB_FINISHED", 180,
                     "the sweep, the retry and the second run")
            second.signal(signal.SIGTERM)
            assert second.wait(120) == 0
            log = second.log()
    finally:
        lock.close()
    evs = events(cursor, job_id)
    assert [e[2] for e in evs] == ["PREPROCESSED", "RUNNING", "RUN_TIMEOUT", "RESTART_READY",
                                   "RUNNING", "RUN_DONE", "JOB_FINISHED"], evs
    assert evs[1][3].endswith("(recorded after the run)")
    assert "1 start(s) its watchdogs reported" in log, log
    assert not os.path.exists(watch)
