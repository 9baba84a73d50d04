"""MPI mode records RUNNING for jobs ready ahead of a free node, before their launch; a user's
kill of such a job before it is launched leaves a RUNNING visit with no process. The real
MPI-mode launcher (``direct`` flavour, one node), real PostgreSQL; the kill is forced into the
window without timing: a job holding the only node waits for a gate file the test creates only
after the launcher has dropped the killed job. Marker files count the runs that happened."""
from __future__ import annotations

import os
import signal

import pytest
from conftest import make_public_tmpdir
from gates import gate_sh
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, job_row, settings, wait_for, write_script

from balsam.core import analytics, lifecycle, retries, schema
from balsam.core.analytics_scope import Filters
from balsam.core.reads.jobs import histories, jobs_by_ids
from balsam.core.retries import NOT_STARTED_SUFFIX

pytestmark = pytest.mark.slow

MPI = ("--consume-all", "--job-mode", "mpi")
MARKED = """#!/bin/sh
echo "$BALSAM_JOB_ATTEMPT" >> "{markers}/$BALSAM_JOB_ID"
"""
GATED = MARKED + gate_sh('"{gate}"', 0.02) + "\n"


def marked(markers: str, job_id: str) -> bool:
    return os.path.exists(os.path.join(markers, job_id))


def events(cursor, job_id):
    cursor.execute(f"SELECT from_state, to_state, message, nodes FROM {schema.EVENT_TABLE} "
                   "WHERE job_id = %s ORDER BY id", [job_id])
    return cursor.fetchall()


def campaign(cursor) -> tuple[str, str, list[str], str, list[str]]:
    """(markers directory, gate path, quick jobs, the gated job, victims). Claimed by priority:
    quick runs first (short runs: jobs are then recorded ready ahead), then the gated job, which
    holds the only node until the gate file exists, then the victims, ready ahead behind it."""
    scripts, markers = make_public_tmpdir("balsam-ahead-k-"), make_public_tmpdir("balsam-ahead-m-")
    gate = os.path.join(scripts, "gate")
    add_app(cursor, "marked", write_script(scripts, "marked.sh", MARKED.format(markers=markers)))
    add_app(cursor, "gated", write_script(scripts, "gated.sh",
                                          GATED.format(markers=markers, gate=gate)))
    quick = add_jobs(cursor, [{"name": f"q{i}", "application": "marked", "priority": 10,
                               "state": "PREPROCESSED"} for i in range(4)])
    (gated,) = add_jobs(cursor, [{"name": "gated", "application": "gated", "priority": 5,
                                  "state": "PREPROCESSED"}])
    victims = add_jobs(cursor, [{"name": f"v{i}", "application": "marked",
                                 "state": "PREPROCESSED"} for i in range(3)])
    return markers, gate, quick, gated, victims


def kill_one_ready_ahead(cursor, markers: str, gated: str, victims: list[str]) -> tuple[str, int]:
    """Once the gated job holds the only node, kill a victim recorded RUNNING ahead of it (so
    not launched); (its id, the session)."""
    wait_for(lambda: marked(markers, gated), 60, "the gated job to start")
    victim = wait_for(lambda: next((v for v in victims
                                    if job_row(cursor, v)["state"] == "RUNNING"), None),
                      60, "a victim recorded RUNNING ahead of a free node")
    assert "ready ahead of a free node" in events(cursor, victim)[-1][2]
    sid = job_row(cursor, victim)["session_id"]
    assert lifecycle.kill(cursor, [victim]) == [victim]
    return victim, sid


def assert_no_run(cursor, victim: str, sid: int, ran: list[str]) -> None:
    """The killed victim's RUNNING visit reads as no run everywhere; the runs that happened
    (``ran``, from the marker files) are exactly the analytics' runs."""
    src, dst, message, nodes = events(cursor, victim)[-1]
    assert (src, dst, nodes) == ("RUNNING", "USER_KILLED", None)
    assert message == "Killed by user" + NOT_STARTED_SUFFIX
    (job,) = jobs_by_ids(cursor, [victim])
    assert histories(cursor, [job])[victim].endswith(
        "USER_KILLED] Killed by user" + NOT_STARTED_SUFFIX)
    row = job_row(cursor, victim)
    assert (row["state"], row["session_id"]) == ("USER_KILLED", None)
    assert retries.usage(cursor, [victim], 3)[victim][0] == 0
    runs = analytics.job_runtimes(cursor)
    assert sorted(r.job_id for r in runs) == sorted(ran)
    assert analytics.runtime_stats(cursor).count == len(ran)
    assert analytics.runtime_stats(cursor, Filters(session=sid)).count == len(ran)
    ut = analytics.utilization(cursor, bucket_seconds=3600)
    assert ut is not None and ut.running_tasks[-1] == 0
    task_seconds = sum(a * ut.buckets.seconds for a in ut.avg_running_tasks)
    assert task_seconds == pytest.approx(sum(r.seconds for r in runs), rel=1e-6, abs=1e-6)
    times, level = analytics.utilization_report(cursor=cursor)
    assert len(times) == 2 * len(ran) and level[-1] == 0


def test_a_job_killed_ready_ahead_before_its_launch_shows_no_run(db, cursor):
    markers, gate, quick, gated, victims = campaign(cursor)
    with settings(db, local_nodes=1, mpi="direct", launcher=QUICK), launchers() as start:
        launcher = start(*MPI)
        try:
            victim, sid = kill_one_ready_ahead(cursor, markers, gated, victims)
            wait_for(lambda: job_row(cursor, victim)["session_id"] is None, 60,
                     "the launcher to drop the killed job")
        finally:
            open(gate, "w").close()
        assert launcher.wait(120) == 0, launcher.output()
    ran = [j for j in quick + [gated] + victims if marked(markers, j)]
    assert len(ran) == 7 and victim not in ran  # it never ran; the others did
    assert_no_run(cursor, victim, sid, ran)


def test_a_job_killed_ready_ahead_then_stopped_unlaunched_shows_no_run(db, cursor):
    """The launcher stops (SIGTERM) with the killed job still ready (its kill checks an hour
    apart): the stop records the other jobs ready ahead RUN_TIMEOUT "did not run" and marks
    the killed one's visit as no run; the gated job's run, stopped, is the one run counted
    after the quick ones."""
    markers, gate, quick, gated, victims = campaign(cursor)
    tunables = dict(QUICK, kill_check_seconds=3600)
    with settings(db, local_nodes=1, mpi="direct", launcher=tunables), launchers() as start:
        launcher = start(*MPI)
        try:
            victim, sid = kill_one_ready_ahead(cursor, markers, gated, victims)
            launcher.signal(signal.SIGTERM)
            assert launcher.wait(120) == 0, launcher.output()
        finally:
            open(gate, "w").close()
    ran = [j for j in quick + [gated] + victims if marked(markers, j)]
    assert sorted(ran) == sorted(quick + [gated])
    assert_no_run(cursor, victim, sid, ran)
    for other in set(victims) - {victim}:
        if job_row(cursor, other)["state"] == "RUN_TIMEOUT":  # it was ready ahead too
            assert events(cursor, other)[-1][2].endswith(NOT_STARTED_SUFFIX)
