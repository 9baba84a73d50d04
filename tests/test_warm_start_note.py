"""The warm start's note (``launcher.json``, :func:`balsam.core.serial_reports.note_own_starts`)
is written before the launcher starts its own tasks, so a launcher killed while it starts them
leaves every start it made to the lease sweep. Real launcher, real ``mpiexec`` (the mpich
wheel), real PostgreSQL: the first task stops the launcher (SIGSTOP to its parent) while it is
still starting the others, and the test kills it there."""
from __future__ import annotations

import os
import signal
import socket

from launcher_procs import launchers
from launcher_support import (
    QUICK,
    add_app,
    add_jobs,
    events,
    process_gone,
    settings,
    wait_for,
    write_script,
)
from once_support import children_of, descendants

from balsam.core import leases

SERIAL = ("--consume-all", "--job-mode", "serial")
JOBS = 24
STOPPER = """#!/bin/sh
kill -STOP $PPID
exec sleep 60
"""


def state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def job_of(pid: int) -> str:
    """The BALSAM_JOB_ID of process ``pid`` ("" if it has none or is gone)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = dict(v.split(b"=", 1) for v in fh.read().split(b"\0") if b"=" in v)
    except OSError:
        return ""
    return env.get(b"BALSAM_JOB_ID", b"").decode()


def swept(db: str, cursor, sid: int) -> bool:
    done = leases.sweep_sessions(cursor, db)
    leases.after_sweep(db, done)
    cursor.execute("SELECT ended_at IS NOT NULL FROM core_launchersession WHERE id = %s",
                   [sid])
    return bool(cursor.fetchone()[0])


def test_a_launcher_killed_while_starting_its_warm_tasks_leaves_their_starts_to_the_sweep(
        db, cursor, scripts):
    add_app(cursor, "stopper", write_script(scripts, "stopper.sh", STOPPER))
    ids = add_jobs(cursor, [{"name": f"w{i}", "application": "stopper",
                             "state": "PREPROCESSED"} for i in range(JOBS)])
    with settings(db, local_nodes=1, cores_per_node=JOBS,
                  launcher=dict(QUICK, lease_seconds=3)), launchers() as start:
        first = start(*SERIAL)
        wait_for(lambda: state(first.pid) == "T", 90, "the first warm task to stop the launcher")
        tasks = {p: job_of(p) for p in children_of(first.pid).get(first.pid, [])}
        tasks = {p: j for p, j in tasks.items() if j}
        # Stopped inside its start loop: some of its tasks started, not all.
        assert 1 <= len(tasks) < JOBS, tasks
        cursor.execute("SELECT id FROM core_launchersession WHERE pid = %s", [first.pid])
        (sid,), = cursor.fetchall()
        watch = os.path.join(db, "log", f"serial_{socket.gethostname()}_{first.pid}.watch")
        everything = [first.pid] + descendants(first.pid)
        os.kill(first.pid, signal.SIGKILL)  # its watchdog stops the tasks and the ensemble
        first.wait(120)
        wait_for(lambda: all(process_gone(p) for p in everything), 60, "everything to die")
        wait_for(lambda: swept(db, cursor, sid), 60, "the sweep of the dead session")
    for job_id in tasks.values():
        runs = [e for e in events(cursor, job_id) if e[2] == "RUNNING"]
        assert len(runs) == 1 and runs[0][3].endswith("(recorded after the run)"), (
            job_id, events(cursor, job_id))
        names = [e[2] for e in events(cursor, job_id)]
        assert names[names.index("RUNNING") + 1] == "RUN_TIMEOUT", names
    # Those it had noted and not yet started may be counted as runs (the note comes before
    # the starts), once at most.
    assert all(sum(e[2] == "RUNNING" for e in events(cursor, j)) <= 1 for j in ids)
    assert not os.path.exists(watch)
