"""MPI mode with short runs: jobs recorded RUNNING ahead of a free node (real launcher, real
MPICH-free ``direct`` flavour, real PostgreSQL). Every start leaves a line in a marker file, so
runs are counted from what ran, not from what was recorded."""
from __future__ import annotations

import os
import signal

import pytest
from conftest import make_public_tmpdir
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, events, settings, wait_for

from balsam.core import retries, schema
from balsam.core.retries import STOP_MESSAGE_PREFIX
from balsam.launcher.mpi_runs import NOT_STARTED

pytestmark = pytest.mark.slow

MPI = ("--consume-all", "--job-mode", "mpi")
SHORT = """#!/bin/sh
echo "$BALSAM_JOB_ATTEMPT" >> "$MARKERS/$BALSAM_JOB_ID"
sleep 0.2
"""


def short_jobs(cursor, count: int) -> tuple[list[str], str]:
    scripts = make_public_tmpdir("balsam-ahead-scripts-")
    markers = make_public_tmpdir("balsam-ahead-markers-")
    path = os.path.join(scripts, "short.sh")
    with open(path, "w") as fh:
        fh.write(SHORT)
    os.chmod(path, 0o755)
    add_app(cursor, "short", path)
    ids = add_jobs(cursor, [{"name": f"s{i}", "application": "short", "state": "PREPROCESSED",
                             "environ_vars": f"MARKERS={markers}"} for i in range(count)])
    return ids, markers


def started(markers: str, job_id: str) -> int:
    try:
        with open(os.path.join(markers, job_id)) as fh:
            return len(fh.read().split())
    except FileNotFoundError:
        return 0


def running_events(cursor, job_id: str) -> list[str]:
    return [message for _, _, to, message in events(cursor, job_id) if to == "RUNNING"]


def test_jobs_ready_ahead_when_stopped_are_timed_out_unrun_and_every_run_is_recorded(db, cursor):
    ids, markers = short_jobs(cursor, 60)
    with settings(db, local_nodes=2, mpi="direct", launcher=QUICK), launchers() as start:
        first = start(*MPI)
        # Runs of 0.2 s: after the first ones end, jobs are recorded RUNNING ahead of a node.
        wait_for(lambda: sum(started(markers, j) for j in ids) >= 12, 60, "a dozen runs")
        first.signal(signal.SIGTERM)
        assert first.wait(120) == 0
        cursor.execute(f"SELECT job_id::text, message FROM {schema.EVENT_TABLE} "
                       "WHERE to_state = 'RUN_TIMEOUT'")
        timeouts = dict(cursor.fetchall())
        unrun = {j for j, m in timeouts.items() if m.endswith(NOT_STARTED)}
        assert unrun, timeouts  # the stop found jobs ready ahead
        assert all(failures == 0 for failures, _ in retries.usage(cursor, list(unrun), 3).values())
        for job_id in unrun:  # a stop before the start uses up no retry
            assert timeouts[job_id].startswith(STOP_MESSAGE_PREFIX)
            assert started(markers, job_id) == 0
            assert "ready ahead of a free node" in running_events(cursor, job_id)[0]
        cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE state = 'RUNNING' "
                       "OR session_id IS NOT NULL")
        assert cursor.fetchone()[0] == 0
        assert start(*MPI).wait(120) == 0
    cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE state <> 'JOB_FINISHED'")
    assert cursor.fetchone()[0] == 0
    for job_id in ids:  # every run recorded, none twice; attempts count the real runs (a
        runs = running_events(cursor, job_id)  # visit "did not run" is none)
        assert started(markers, job_id) == len(runs) - (job_id in unrun), (job_id, runs)
        with open(os.path.join(markers, job_id)) as fh:
            assert fh.read().split() == [str(i + 1) for i in range(started(markers, job_id))]


def test_killing_every_job_mid_run_leaves_no_run_unrecorded_and_no_job_held(db, cursor):
    from balsam.core import lifecycle

    ids, markers = short_jobs(cursor, 60)
    with settings(db, local_nodes=2, mpi="direct", launcher=QUICK), launchers() as start:
        launcher = start(*MPI)
        wait_for(lambda: sum(started(markers, j) for j in ids) >= 12, 60, "a dozen runs")
        lifecycle.kill(cursor, ids)  # running, ready ahead, queued and unclaimed jobs alike
        assert launcher.wait(60) == 0
    cursor.execute(f"SELECT state, count(*) FROM {schema.JOB_TABLE} GROUP BY state")
    assert set(dict(cursor.fetchall())) <= {"JOB_FINISHED", "USER_KILLED"}
    cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE session_id IS NOT NULL")
    assert cursor.fetchone()[0] == 0
    ahead = 0
    for job_id in ids:  # a run never happens without its RUNNING, nor twice for one
        runs = running_events(cursor, job_id)
        assert started(markers, job_id) <= len(runs) <= 1, (job_id, runs)
        ahead += any("ready ahead" in m for m in runs)
    assert ahead  # jobs were ready ahead during the run
