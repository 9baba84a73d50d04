"""A launcher whose database connection hangs stops its tasks before its lease expires
(:mod:`balsam.launcher.fence`): real PostgreSQL (one launcher's server processes SIGSTOPped, the
others untouched), real MPI- and serial-mode launchers, ticking tasks that ignore SIGTERM; a
second launcher sweeps the session once the lease expired and runs the job again, never beside
the first run. The fences themselves are tested in ``test_lease_fence.py``."""
from __future__ import annotations

import os
import time

import pytest
from fault_support import (
    MPI,
    SERIAL,
    add_ticker_app,
    assert_fenced_then_run_again,
    assert_swept,
    backends_of,
    connections_hung,
    held_markers,
    lease_expiry,
    lose_node,
    stop_once_finished,
    tickers,
)
from launcher_procs import launchers
from launcher_support import QUICK, add_jobs, job_row, process_gone, settings, wait_for
from once_support import rank_pid, runs, shm_segments, watchdog_of

pytestmark = pytest.mark.slow

CUT_OFF = dict(QUICK, lease_seconds=20, reconnect_max_seconds=5)
"""A 20-s lease; a launcher retries a lost connection for 5 s at most."""


def stubborn_held_job(cursor, scripts: str) -> tuple[str, str]:
    """One ticker job whose runs ignore SIGTERM and tick on while ``<markers>/hold`` exists
    (the test removes it); (its id, the markers directory)."""
    (job,), markers = tickers(cursor, scripts, 1, ticks=10, stubborn=True, hold=True)
    return job, markers


def test_a_launcher_whose_connection_hangs_stops_its_tasks_before_its_lease_expires(
        db, cursor, scripts):
    # The task ignores SIGTERM: only the fence's SIGKILL ends it. The second launcher sweeps
    # the hung launcher's session once its lease expired and runs the job again.
    job, markers = stubborn_held_job(cursor, scripts)
    lease = 10  # the fence fires 7 s after the last confirmed renewal was sent
    with settings(db, local_nodes=1, launcher=dict(QUICK, lease_seconds=lease)), \
            launchers() as start:
        first = start(*MPI)
        wait_for(lambda: runs(markers, job), 60, "the first run to tick")
        session = job_row(cursor, job)["session_id"]
        with connections_hung(cursor, "balsam-launcher"):
            expires = lease_expiry(cursor, session, lease)  # renewals stopped with its server
            second = start(*MPI, "--persistent")
            (pid,) = runs(markers, job)
            wait_for(lambda: process_gone(pid), 120, "the fence to stop the first run")
            os.remove(os.path.join(markers, "hold"))  # the second run ticks 10 times
            assert first.wait(120) == 1  # a lost session: nothing recorded
            stop_once_finished(second, cursor, [job], "the second launcher to run the job again")
        log = first.log()
    assert "no renewal of the lease confirmed for" in log, log
    assert_fenced_then_run_again(cursor, markers, job, pid, expires)
    assert_swept(cursor, session)  # by the second launcher


def test_a_serial_master_whose_connection_hangs_has_its_ensemble_killed_before_the_lease(
        db, cursor, scripts):
    # The master's server process is SIGSTOPped: its loop hangs in a statement and renews no
    # more. The stuck limit (the 20-s reconnection back-off + 2 heartbeats: 22 s) comes after
    # the 20-s lease; the fence's rule (20 - 1 - 2 = 17 s, less the 2-s read allowance: 15 s)
    # kills the ensemble in time, and the
    # worker's watchdog its task (which ignores SIGTERM). A new ensemble runs the job again.
    job, markers = stubborn_held_job(cursor, scripts)
    lease, limit = 20, 22
    tunables = dict(QUICK, lease_seconds=lease, reconnect_max_seconds=20)
    with settings(db, local_nodes=1, launcher=tunables), launchers() as start:
        launcher = start(*SERIAL)
        wait_for(lambda: runs(markers, job), 60, "the first run to tick")
        # Past the ensemble's start-up (the launcher does not judge it for max(limit, lease)).
        started = time.monotonic()
        wait_for(lambda: time.monotonic() - started > limit + 1, 60, "the start-up to pass", 0.5)
        session = job_row(cursor, job)["session_id"]
        with connections_hung(cursor, "balsam-serial-master"):
            expires = lease_expiry(cursor, session, lease)
            (pid,) = runs(markers, job)
            wait_for(lambda: process_gone(pid), 120, "the first run to be stopped")
            os.remove(os.path.join(markers, "hold"))
            assert launcher.wait(240) == 0
        log = launcher.log()
    assert "the serial-mode ensemble is stuck (its master has not renewed the lease" in log, log
    assert "(limit 15 s)" in log, log
    assert job_row(cursor, job)["state"] == "JOB_FINISHED"
    assert_fenced_then_run_again(cursor, markers, job, pid, expires)


def test_a_serial_launcher_cut_off_with_its_master_kills_everything_before_the_lease(
        db, cursor, scripts):
    # Both server processes stop (the launcher's first: it then judges nothing, and the master
    # renews until its own stops): no look at the lease returns. The launcher's own fence
    # (17 s after the lease was last renewed, by its last confirmed look) kills the ensemble and
    # its task (which ignores SIGTERM) and exits 1; a second launcher sweeps the session once
    # the lease expired and runs the job again.
    job, markers = stubborn_held_job(cursor, scripts)
    lease, tunables = CUT_OFF["lease_seconds"], CUT_OFF
    with settings(db, local_nodes=1, launcher=tunables), launchers() as start:
        first = start(*SERIAL)
        wait_for(lambda: runs(markers, job), 60, "the first run to tick")
        wait_for(lambda: "lease fence armed" in first.log(), 180,
                 "the launcher's first confirmed look at the lease", 0.2)
        session = job_row(cursor, job)["session_id"]
        pid, expires = fenced_when_cut_off(cursor, markers, job, session, lease, first)
        log = first.log()
        os.remove(os.path.join(markers, "hold"))  # the second run ticks 10 times
        second = start(*MPI, "--persistent")
        stop_once_finished(second, cursor, [job], "the second launcher to run the job again")
    assert "no lease age confirmed for" in log, log
    assert "the serial-mode ensemble is stuck" not in log, log
    assert_fenced_then_run_again(cursor, markers, job, pid, expires)
    assert_swept(cursor, session)  # by the second launcher


def fenced_when_cut_off(cursor, markers: str, job: str, session: int, lease: float,
                        launcher) -> tuple[int, float]:
    """Stop the server processes of the serial launcher and then of its master (no look at the
    lease returns); wait for the fence to stop the job's run and for the launcher to exit 1
    (as after a lost session: nothing recorded). (The run's pid, when its lease expires.)"""
    with connections_hung(cursor, "balsam-launcher", "balsam-serial-master"):
        expires = lease_expiry(cursor, session, lease)  # nothing renews it any more
        (pid,) = runs(markers, job)
        wait_for(lambda: process_gone(pid), 120, "the fence to stop the first run")
        assert launcher.wait(120) == 1
    return pid, expires


def test_a_serial_ensemble_cut_off_in_its_start_up_is_fenced_before_the_lease(
        db, cursor, scripts):
    # As above, but both server processes stop as soon as the first run ticks: within the
    # ensemble's start-up, before any look at the lease (the first comes max(limit, lease) =
    # 20 s after the start). Before, the fence was armed only by that look, which hung: the
    # task (ignoring SIGTERM, held) ran past the lease. Now it counts from the session's
    # opening: the run is dead before the lease could expire, the launcher exits 1.
    job, markers = stubborn_held_job(cursor, scripts)
    lease, tunables = CUT_OFF["lease_seconds"], CUT_OFF
    with settings(db, local_nodes=1, launcher=tunables), launchers() as start:
        first = start(*SERIAL)
        wait_for(lambda: runs(markers, job), 60, "the first run to tick")
        session = job_row(cursor, job)["session_id"]
        wait_for(lambda: backends_of(cursor, "balsam-serial-master"), 60, "the master's connection")
        pid, expires = fenced_when_cut_off(cursor, markers, job, session, lease, first)
        log = first.log()
    assert "no lease age confirmed for" in log, log
    assert "the serial-mode ensemble is stuck" not in log, log
    trails = runs(markers, job)
    assert trails[pid][1] < expires, (trails, expires)  # dead before the lease could expire
    print(f"the run's last tick {expires - trails[pid][1]:.1f} s before its lease expired")


def test_the_launchers_own_task_outliving_its_ensemble_is_fenced_before_the_lease(
        db, cursor, scripts):
    # The warm start's task (ignoring SIGTERM, held) outlives its ensemble: worker rank 1
    # vanishes with its watchdog on the only node, so no ensemble follows and the launcher
    # waits for its own task, renewing the lease itself. Then its server process stops: the
    # renewal hangs. Before, nothing was fenced there: the task ran past the lease (and a
    # sweeper could run the job again beside it). Now the launcher's fence kills it before
    # the lease could expire and ends the launcher (1); a second launcher runs the job again.
    markers, (hold,) = held_markers("hold")
    add_ticker_app(cursor, scripts)
    (job,) = add_jobs(cursor, [{"name": "own", "application": "tick", "state": "PREPROCESSED",
                                "node_packing_count": 2, "environ_vars":
                                f"MARKERS={markers}:TICKS=10:STUBBORN=1:HOLD={hold}"}])
    lease, tunables = CUT_OFF["lease_seconds"], CUT_OFF
    with settings(db, local_nodes=1, cores_per_node=2, launcher=tunables), \
            launchers() as start:
        first = start(*SERIAL)
        wait_for(lambda: runs(markers, job), 60, "the launcher's own task to tick")
        wait_for(lambda: "warm start: 1 task(s) started by the launcher" in first.log(),
                 60, "the warm start")
        rank1 = wait_for(lambda: rank_pid(first.pid, 1), 60, "worker rank 1")
        wait_for(lambda: watchdog_of(rank1), 60, "rank 1's watchdog")
        # (its watchdog starts before MPI_Init: the rank maps its file a moment later)
        files = wait_for(lambda: shm_segments(rank1), 60, "rank 1's MPICH shared-memory file")
        lose_node(rank1)  # with its watchdog: nothing reports it dead
        # Its only node lost, no ensemble follows: the launcher waits for its own task.
        wait_for(lambda: "the serial-mode ensemble failed" in first.log(), 120,
                 "the launcher to give up its ensemble", 0.2)
        session = job_row(cursor, job)["session_id"]
        with connections_hung(cursor, "balsam-launcher"):
            expires = lease_expiry(cursor, session, lease)  # nothing renews it any more
            (pid,) = runs(markers, job)
            wait_for(lambda: process_gone(pid), 120, "the fence to stop the launcher's task")
            assert first.wait(120) == 1  # as after a lost session: nothing recorded
        log = first.log()
        for path in files:  # its remover, the watchdog, was killed with it: the node's file
            if os.path.exists(path):  # goes with a lost node (here, unless the launcher saw it)
                os.unlink(path)
        os.remove(hold)  # the second run ticks 10 times
        second = start(*MPI, "--persistent")
        stop_once_finished(second, cursor, [job], "the second launcher to run the job again")
    assert "stopping the launcher's own task(s) before the lease could expire" in log, log
    assert_fenced_then_run_again(cursor, markers, job, pid, expires)
