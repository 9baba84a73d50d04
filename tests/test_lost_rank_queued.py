"""A serial-mode ensemble that loses a worker rank or a node records no run for the jobs dealt
to it that never started (issue 16, session 17): real launcher, real MPICH (2 emulated nodes),
real PostgreSQL. Every run writes its attempt number and ticks; a job's runs counted by the
database (``retries.RUNS_SQL``: what ``BALSAM_JOB_ATTEMPT`` and the retry limit read) must
equal the runs that happened, and a job that never started before the loss has no
RUN_TIMEOUT."""
from __future__ import annotations

import os
import time

import pytest
from conftest import make_public_tmpdir
from fault_support import lose_node
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, job_row, settings, wait_for, write_script
from once_support import (
    TICKER,
    kill,
    overlap_seconds,
    rank_pid,
    runs,
    unrecorded_runs,
)

from balsam.core import retries, schema

pytestmark = pytest.mark.slow

SERIAL = ("--consume-all", "--job-mode", "serial")
ATTEMPT_TICKER = TICKER.replace(
    "i=0\n", 'echo "$$ ${BALSAM_JOB_ATTEMPT:-?}" >> "$MARKERS/$BALSAM_JOB_ID.attempt"\ni=0\n', 1)


def _jobs(cursor, count: int) -> tuple[list[str], str]:
    """``count`` ticker jobs, two per node, whose runs go on while ``<markers>/hold`` exists."""
    scripts = make_public_tmpdir("balsam-lostq-scripts-")
    markers = make_public_tmpdir("balsam-lostq-markers-")
    add_app(cursor, "tick", write_script(scripts, "tick.sh", ATTEMPT_TICKER))
    hold = os.path.join(markers, "hold")
    open(hold, "w").close()
    env = f"MARKERS={markers}:TICKS=5:HOLD={hold}"
    ids = add_jobs(cursor, [{"name": f"t{i}", "application": "tick", "environ_vars": env,
                             "node_packing_count": 2} for i in range(count)])
    return ids, markers


def _count(cursor, sql: str, params: list) -> int:
    cursor.execute(sql, params)
    return int(cursor.fetchone()[0])


def _runs_counted(cursor, job_id: str) -> int:
    return _count(cursor, f"SELECT {retries.RUNS_SQL} FROM {schema.JOB_TABLE} j "
                  "WHERE j.job_id = %s", [job_id])


def _timeouts(cursor, job_id: str) -> int:
    return _count(cursor, f"SELECT count(*) FROM {schema.EVENT_TABLE} WHERE job_id = %s "
                  "AND to_state = 'RUN_TIMEOUT'", [job_id])


def _attempts(markers: str, job_id: str) -> list[str]:
    try:
        with open(os.path.join(markers, f"{job_id}.attempt")) as fh:
            return [line.split()[1] for line in fh.read().splitlines()]
    except FileNotFoundError:
        return []


def _running(cursor) -> int:
    return _count(cursor, f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE state = 'RUNNING'",
                  [])


def _dealt(cursor) -> int:
    """Jobs held but not started: in the workers' queues (a node's worth each, by
    ``serial_dispatch``) or in the master's."""
    return _count(cursor, f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE session_id IS NOT "
                  "NULL AND state = 'PREPROCESSED'", [])


def _check(cursor, markers: str, ids: list[str], before: set[str]) -> None:
    """Every job finished; runs counted == runs that happened; attempts 1..n; the jobs not
    started before the loss (all but ``before``) never timed out."""
    for job_id in ids:
        assert job_row(cursor, job_id)["state"] == "JOB_FINISHED", job_id
    assert overlap_seconds(markers, ids) == {} and unrecorded_runs(cursor, markers, ids) == {}
    counted = {j: _runs_counted(cursor, j) for j in ids}
    happened = {j: len(_attempts(markers, j)) for j in ids}
    assert counted == happened
    for job_id in ids:
        assert _attempts(markers, job_id) == [str(k) for k in range(1, happened[job_id] + 1)]
    never_started = [j for j in ids if j not in before]
    cursor.execute(f"SELECT e.message, count(*) FROM {schema.EVENT_TABLE} e WHERE "
                   "e.to_state IN ('RUN_TIMEOUT', 'RUNNING') GROUP BY 1 ORDER BY 1")
    print(f"runs per job {sorted(happened.values())}; RUNNING/RUN_TIMEOUT messages: "
          f"{cursor.fetchall()}")
    assert never_started and {j: _timeouts(cursor, j) for j in never_started} == {
        j: 0 for j in never_started}


def test_a_killed_worker_ranks_queued_jobs_come_back_with_no_run_counted(db, cursor):
    # 12 jobs, 2 per node on 2 nodes: 4 run (held), the rest are dealt to the workers'
    # queues (a node's worth each) or wait in the master's; worker rank 2 is SIGKILLed.
    ids, markers = _jobs(cursor, 12)
    with settings(db, local_nodes=2, launcher=QUICK), launchers() as start:
        launcher = start(*SERIAL)
        wait_for(lambda: _running(cursor) == 4, 120, "two runs on each node")
        wait_for(lambda: sum(bool(runs(markers, j)) for j in ids) == 4, 60, "four runs ticking")
        before = {j for j in ids if _attempts(markers, j)}
        wait_for(lambda: _dealt(cursor) == 8, 60, "the other eight claimed")
        worker = wait_for(lambda: rank_pid(launcher.pid, 2), 10, "worker rank 2")
        kill(worker)
        wait_for(lambda: _count(cursor, f"SELECT count(*) FROM {schema.EVENT_TABLE} WHERE "
                                "message LIKE %s", ["%lost a rank%"]) > 0, 120,
                 "the failed ensemble's jobs to be recovered")
        os.remove(os.path.join(markers, "hold"))
        assert launcher.wait(300) == 0
    _check(cursor, markers, ids, before)


def test_a_lost_nodes_queued_jobs_come_back_with_no_run_counted(db, cursor):
    # Node 2 vanishes (rank, watchdog and tasks frozen, then killed): its running jobs wait for
    # the lease; the jobs queued on it were never started and must come back with no run.
    ids, markers = _jobs(cursor, 12)
    tunables = dict(QUICK, lease_seconds=8)
    with settings(db, local_nodes=2, launcher=tunables), launchers() as start:
        first = start(*SERIAL)
        wait_for(lambda: _running(cursor) == 4, 120, "two runs on each node")
        wait_for(lambda: sum(bool(runs(markers, j)) for j in ids) == 4, 60, "four runs ticking")
        before = {j for j in ids if _attempts(markers, j)}
        wait_for(lambda: _dealt(cursor) == 8, 60, "the other eight claimed")
        worker = wait_for(lambda: rank_pid(first.pid, 2), 10, "worker rank 2")
        lose_node(worker)  # frozen first: rank, watchdog and tasks vanish at once
        wait_for(lambda: _count(cursor, f"SELECT count(*) FROM {schema.EVENT_TABLE} WHERE "
                                "message LIKE %s", ["%lost a rank%"]) > 0, 120,
                 "the failed ensemble's jobs to be recovered")
        os.remove(os.path.join(markers, "hold"))
        assert first.wait(300) == 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the lost node's jobs: after the lease, swept
            if start(*SERIAL).wait(300) == 0 and all(
                    job_row(cursor, j)["state"] == "JOB_FINISHED" for j in ids):
                break
    _check(cursor, markers, ids, before)
