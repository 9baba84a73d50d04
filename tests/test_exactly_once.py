"""Exactly-once under faults (issue 12): real serial- and MPI-mode launchers, real MPICH, real
PostgreSQL. Every task leaves a trail of ticks (pid, time every 0.1 s); overlapping runs of one
job and runs missing from its history are computed from those trails after the fact."""
from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import make_public_tmpdir
from fault_support import (
    SERIAL,
    all_finished,
    assert_all_ran_once_at_a_time,
    lose_node,
    open_sessions,
    running,
    serial_sessions,
    stop_once_finished,
    tickers,
    vanish,
)
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
    write_script,
)
from once_support import (
    cmdline,
    descendants,
    ensemble_pid,
    kill,
    outputs_made,
    overlap_seconds,
    rank_pid,
    recorded_runs,
    runs,
    shm_segments,
    thread_states,
    unrecorded_runs,
)

from balsam.core import schema
from balsam.platform.process import start_time

pytestmark = pytest.mark.slow

def test_an_ensemble_death_lets_no_retry_run_beside_a_stubborn_task(db, cursor, scripts):
    # Item 1: the serial ensemble's mpiexec dies; its tasks ignore SIGTERM, so the worker
    # watchdogs need their whole kill grace (2 s) to stop them. A second launcher is waiting.
    # (The first runs tick until the kill, however long the second launcher takes to start.)
    ids, markers = tickers(cursor, scripts, 4, ticks=20, stubborn=True, hold=True)
    tunables = dict(QUICK, kill_grace_seconds=2, lease_seconds=20)
    with settings(db, local_nodes=1, launcher=tunables), launchers() as start:
        first = start(*SERIAL)
        wait_for(lambda: all(runs(markers, j) for j in ids), 60, "every task to tick")
        second = start(*SERIAL, "--persistent")
        wait_for(lambda: open_sessions(cursor) == 2, 120, "the second launcher's session")
        kill(wait_for(lambda: ensemble_pid(first.pid), 10, "the first ensemble"))
        os.remove(os.path.join(markers, "hold"))  # the retries run 20 ticks
        first.wait(120)
        stop_once_finished(second, cursor, ids, "the retries to finish")
    assert overlap_seconds(markers, ids) == {}
    for job_id in ids:
        assert len(runs(markers, job_id)) == 2 and recorded_runs(cursor, job_id) == 2
    assert unrecorded_runs(cursor, markers, ids) == {}


def kill_launcher_and_ensemble(launcher_pid: int) -> list[int]:
    """SIGKILL a serial-mode launcher, its mpiexec and every rank -- everything it started but
    the watchdogs and the tasks (the watchdogs stop the tasks); returns the pids killed. All
    are stopped (SIGSTOP) first, so that none reacts to another's death in between (the
    launcher's watchdog would SIGTERM the ensemble, whose master would then record its stop)."""
    tree = [launcher_pid] + descendants(launcher_pid)
    spared = ("balsam.launcher.watchdog", "tick.sh", "sleep")
    killed = [pid for pid in tree if not any(word in cmdline(pid) for word in spared)]
    vanish(killed)
    return killed


@pytest.mark.parametrize("mode", ["serial", "mpi"])
def test_a_launcher_started_after_a_kill_waits_for_the_dead_sessions_jobs(db, cursor, scripts,
                                                                           mode):
    # Item 3: no service runs; a new non-persistent launcher must not exit idle while a dead
    # session holds its jobs (RUNNING, or claimed and queued): it sweeps at the lease's end.
    # (MPI mode claims only what it starts: one job, so that nothing else keeps a launcher up.)
    # The first runs tick until the kill, however late it comes on a loaded machine.
    ids, markers = tickers(cursor, scripts, 6 if mode == "serial" else 1, ticks=10, packing=2,
                           hold=True)
    tunables = dict(QUICK, lease_seconds=6)
    args = ("--consume-all", "--job-mode", mode)
    with settings(db, local_nodes=1, launcher=tunables), launchers() as start:
        first = start(*args)
        wait_for(lambda: running(cursor) >= (2 if mode == "serial" else 1), 60,
                 "runs to be recorded")
        # Serial mode: the launcher, mpiexec and the ranks; MPI mode: the launcher alone (the
        # watchdogs stop the tasks in both).
        killed = kill_launcher_and_ensemble(first.pid) if mode == "serial" else [first.pid]
        kill(first.pid)
        killed_at, killed_wall = time.monotonic(), time.time()
        os.remove(os.path.join(markers, "hold"))  # the retries run 10 ticks
        first.wait(120)
        wait_for(lambda: all(process_gone(p) for p in killed), 30, "the launcher to die")
        held = [j for j in ids if job_row(cursor, j)["session_id"] is not None]
        dead = job_row(cursor, held[0])["session_id"]
        assert len(held) >= (3 if mode == "serial" else 1)  # running (and claimed) jobs
        second = start(*args)
        assert second.wait(240) == 0
        recovered = time.monotonic() - killed_at
        log = second.log()
    cursor.execute(f"SELECT end_reason, EXTRACT(EPOCH FROM ended_at - heartbeat), ended_at "
                   f"FROM {schema.SESSION_TABLE} WHERE id = %s", [dead])
    reason, unrenewed, ended_at = cursor.fetchone()
    assert "lost its lease" in reason
    assert unrenewed >= tunables["lease_seconds"]  # never swept while its lease ran
    assert f"swept launcher session {dead} (lease expired)" in log, log  # by the new launcher
    print(f"{mode}: {len(held)} stranded jobs: swept {ended_at.timestamp() - killed_wall:.1f} s, "
          f"all finished {recovered:.1f} s after the kill (lease {tunables['lease_seconds']} s)")
    assert all_finished(cursor, ids)
    assert overlap_seconds(markers, ids) == {}
    assert unrecorded_runs(cursor, markers, ids) == {}


def test_starts_the_master_never_recorded_are_in_the_history_after_an_ensemble_death(
        db, cursor, scripts):
    # Item 2: the master is frozen (SIGSTOP) while its worker goes on starting queued tasks,
    # then the ensemble is killed: those starts reached no database record.
    # The first four runs tick until the master is frozen (then the worker starts the four
    # queued behind them), however slow the machine is. The four queued come with the master's
    # second claim (its first, sized before it knows the packing, holds four): the master is
    # frozen once the worker holds them (it made their output files ahead), so that a start
    # missing afterwards is the worker's, never a dispatch the freeze came before.
    ids, markers = tickers(cursor, scripts, 16, ticks=4, packing=4, hold=True)
    with settings(db, local_nodes=1, launcher=QUICK), launchers() as start:
        first = start(*SERIAL)
        wait_for(lambda: running(cursor) >= 4, 60, "four runs to be recorded")
        wait_for(lambda: outputs_made(db, cursor, ids) >= 8, 60, "four tasks queued behind")
        master = wait_for(lambda: rank_pid(first.pid, 0), 10, "the master rank")
        master_started = start_time(master)
        kill(master, signal.SIGSTOP)
        os.remove(os.path.join(markers, "hold"))
        try:
            lost = set(wait_for(lambda: unrecorded_runs(cursor, markers, ids), 60,
                                "an unrecorded start"))
        except AssertionError as exc:  # where the worker, its spawning threads, its watchdog wait
            raise AssertionError(f"{exc}; threads:\n{thread_states(first.pid)}") from exc
        kill(wait_for(lambda: ensemble_pid(first.pid), 10, "the ensemble"))
        kill(master, started=master_started)  # (it may be gone: then its pid is not ours)
        first.wait(120)
        assert start(*SERIAL).wait(240) == 0
        log = first.log()
    print(f"{len(lost)} start(s) the master never recorded")
    assert all_finished(cursor, ids)
    unrecorded = unrecorded_runs(cursor, markers, ids)
    assert unrecorded == {}, (log, {j: (runs(markers, j), events(cursor, j)) for j in unrecorded})
    assert overlap_seconds(markers, ids) == {}
    for job_id in lost:
        cursor.execute(f"SELECT to_state, message FROM {schema.EVENT_TABLE} WHERE job_id = %s "
                       "ORDER BY id", [job_id])
        assert ("RUN_TIMEOUT", "started by the serial-mode ensemble, which died before the start "
                "was recorded: outcome unknown") in cursor.fetchall()


def master_shm(master: int) -> list[str]:
    """The MPICH shared-memory files the master rank maps, once it maps any ([] where there is
    no /dev/shm)."""
    if not os.path.isdir("/dev/shm"):
        return []
    return wait_for(lambda: shm_segments(master), 30, "the master's MPI shared memory")


def test_a_frozen_master_is_replaced_by_a_new_ensemble(db, cursor, scripts):
    # A master that stops renewing the lease (frozen here: SIGSTOP; or blocked, or stuck in the
    # MPI start-up) no longer holds its launcher until the time limit: the launcher kills that
    # ensemble and starts another in the same session, and every run is in the history.
    ids, markers = tickers(cursor, scripts, 8, ticks=10, packing=4)
    # Stuck once the lease is 10 s old (half of it), an ensemble's first 20 s (the lease) once.
    tunables = dict(QUICK, lease_seconds=20, reconnect_max_seconds=1)
    with settings(db, local_nodes=1, launcher=tunables), launchers() as start:
        launcher = start(*SERIAL)
        wait_for(lambda: running(cursor) >= 1, 60, "a run to be recorded")
        master = wait_for(lambda: rank_pid(launcher.pid, 0), 10, "the master rank")
        master_started = start_time(master)
        segments = master_shm(master)
        kill(master, signal.SIGSTOP)
        try:
            assert launcher.wait(120) == 0
        finally:
            kill(master, started=master_started)  # (gone unless the launcher failed to kill it)
        log = launcher.log()
    assert "the serial-mode ensemble is stuck (its master has not renewed the lease" in log, log
    assert not any(os.path.exists(p) for p in segments), log  # the killed ranks' files
    assert "restarting the serial-mode ensemble" in log, log
    assert_all_ran_once_at_a_time(cursor, markers, ids)
    assert serial_sessions(cursor) == 1  # one launcher, one session, two ensembles


def test_a_frozen_worker_rank_is_lost_and_its_jobs_run_again_exactly_once(db, cursor, scripts):
    # A worker rank frozen (SIGSTOP) while its master lives: the master renews the lease, so
    # only the worker's missing heartbeats tell. Its tasks go on and end with nobody reporting
    # them; the master aborts the ensemble, the launcher restarts it and every job ends once.
    # The first four runs tick until the rank is frozen, however slow the machine is.
    ids, markers = tickers(cursor, scripts, 8, ticks=10, packing=2, hold=True)
    # Lost after max(3 heartbeats, stuck limit) = 10 s of silence.
    tunables = dict(QUICK, lease_seconds=20, reconnect_max_seconds=1)
    with settings(db, local_nodes=2, launcher=tunables), launchers() as start:
        launcher = start(*SERIAL)
        wait_for(lambda: running(cursor) == 4, 60, "two runs on each node")
        worker = wait_for(lambda: rank_pid(launcher.pid, 2), 10, "worker rank 2")
        worker_started = start_time(worker)
        master = wait_for(lambda: rank_pid(launcher.pid, 0), 10, "the master rank")
        segments = master_shm(master)
        kill(worker, signal.SIGSTOP)
        frozen = [j for j in ids if job_row(cursor, j)["state"] == "RUNNING"]
        os.remove(os.path.join(markers, "hold"))
        try:
            assert launcher.wait(240) == 0
        finally:
            kill(worker, started=worker_started)  # (gone unless the ensemble was not aborted)
        log = launcher.log()
    assert "sent no heartbeat for longer than 10 s" in log, log
    assert "restarting the serial-mode ensemble on 2 node(s)" in log, log
    assert not any(os.path.exists(p) for p in segments), log  # the aborted ranks' files
    assert_all_ran_once_at_a_time(cursor, markers, ids)
    cursor.execute(f"SELECT DISTINCT job_id::text FROM {schema.EVENT_TABLE} WHERE "
                   "to_state = 'RUN_TIMEOUT' AND message LIKE '%%lost a rank%%'")
    assert len({r[0] for r in cursor.fetchall()} & set(frozen)) >= 2  # node 2's, at least
    assert serial_sessions(cursor) == 1  # one launcher, one session, two ensembles


def pids_in(markers: str, ids: list[str]) -> list[int]:
    return [pid for j in ids for pid in runs(markers, j)]


def test_a_serial_launcher_killed_with_sigkill_has_its_tasks_stopped_and_recorded(
        db, cursor, scripts):
    # Item 6: the launcher process alone is killed; its watchdog stops the ensemble (SIGTERM:
    # the master stops the tasks and records them RUN_TIMEOUT) instead of leaving it running.
    ids, markers = tickers(cursor, scripts, 2, ticks=300, packing=2)
    with settings(db, local_nodes=1, launcher=QUICK), launchers() as start:
        first = start(*SERIAL)
        wait_for(lambda: running(cursor) == 2 and all(runs(markers, j) for j in ids), 30,
                 "both runs to be recorded and to tick")
        kill(first.pid)
        killed_at = time.monotonic()
        first.wait(120)
        pids = pids_in(markers, ids)
        wait_for(lambda: all(process_gone(p) for p in pids), 20, "the tasks to be stopped")
        stopped = time.monotonic() - killed_at
        wait_for(lambda: running(cursor) == 0, 20, "the stops to be recorded")
    print(f"tasks of a launcher killed with SIGKILL stopped {stopped:.1f} s after the kill")
    for job_id in ids:
        row = job_row(cursor, job_id)
        assert row["state"] in ("RUN_TIMEOUT", "RESTART_READY") and row["session_id"] is None
        assert len(runs(markers, job_id)) == 1 and recorded_runs(cursor, job_id) == 1


def ticked_for(markers: str, job_id: str) -> float:
    spans = list(runs(markers, job_id).values())
    return spans[0][1] - spans[0][0] if spans else 0.0


def test_mpi_mode_records_a_run_that_completed_in_the_stop_grace_as_done(db, cursor, scripts):
    # Item 5: SIGTERM to an MPI-mode launcher; one task ignores it and completes within the
    # shutdown grace (exit 0), the other dies of it. Only the second is a timeout to re-run.
    (done, stopped), markers = tickers(cursor, scripts, 2, ticks=25, stubborn=True)
    cursor.execute(f"UPDATE {schema.JOB_TABLE} SET environ_vars = %s WHERE job_id = %s",
                   [f"MARKERS={markers}:TICKS=600", stopped])
    with settings(db, local_nodes=2, mpi="direct",
                  launcher=dict(QUICK, shutdown_grace_seconds=8)), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "mpi")
        wait_for(lambda: ticked_for(markers, done) > 1.0 and runs(markers, stopped), 30,
                 "both tasks to tick, the first for a second")
        launcher.signal(signal.SIGTERM)
        assert launcher.wait(120) == 0
    cursor.execute(f"SELECT job_id::text, from_state, to_state FROM {schema.EVENT_TABLE} "
                   "WHERE from_state = 'RUNNING'")
    ends = {job: to for job, _, to in cursor.fetchall()}
    assert ends == {done: "RUN_DONE", stopped: "RUN_TIMEOUT"}
    assert len(runs(markers, done)) == 1 and recorded_runs(cursor, done) == 1


ATTEMPTS = """#!/bin/sh
echo "$BALSAM_JOB_ATTEMPT" >> "$MARKERS/$BALSAM_JOB_ID"
if [ "$BALSAM_JOB_ATTEMPT" = 1 ]; then exec sleep 60; fi
"""


def test_a_task_knows_its_attempt_number(db, cursor, scripts):
    markers = make_public_tmpdir("balsam-once-markers-")
    add_app(cursor, "attempts", write_script(scripts, "attempts.sh", ATTEMPTS))
    (job_id,) = add_jobs(cursor, [{"name": "a", "application": "attempts",
                                   "environ_vars": f"MARKERS={markers}"}])
    with settings(db, local_nodes=1, launcher=QUICK), launchers() as start:
        first = start(*SERIAL)
        wait_for(lambda: running(cursor) == 1, 30, "the first run to be recorded")
        first.signal(signal.SIGTERM)
        assert first.wait(120) == 0
        assert start(*SERIAL).wait(60) == 0
    assert all_finished(cursor, [job_id])
    with open(os.path.join(markers, job_id)) as fh:
        assert fh.read().split() == ["1", "2"]


def first_tick_after(markers: str, ids: list[str], moment: float) -> float:
    """The earliest tick of any run that began after ``moment`` (epoch seconds; inf: none)."""
    starts = [first for j in ids for first, _ in runs(markers, j).values() if first > moment]
    return min(starts, default=float("inf"))


def test_a_dead_worker_rank_costs_a_restart_not_the_allocation(db, cursor, scripts):
    # Item 4: MPI takes the whole ensemble down with one rank; the launcher restarts it on its
    # allocation (the dead rank's tasks are known dead: its watchdog reported).
    # The first four runs tick until the rank is killed, however slow the machine is.
    ids, markers = tickers(cursor, scripts, 12, ticks=15, packing=2, hold=True)
    with settings(db, local_nodes=2, launcher=QUICK), launchers() as start:
        launcher = start(*SERIAL)
        wait_for(lambda: running(cursor) == 4, 60, "two runs on each node")
        wait_for(lambda: sum(ticked_for(markers, j) > 0.8 for j in ids) == 4, 60,
                 "the four runs to be well under way")
        worker = wait_for(lambda: rank_pid(launcher.pid, 2), 10, "worker rank 2")
        died = time.time()
        kill(worker)
        os.remove(os.path.join(markers, "hold"))
        assert launcher.wait(240) == 0
    cursor.execute(f"SELECT min(timestamp) FROM {schema.EVENT_TABLE} WHERE message LIKE "
                   "'%%lost a rank%%'")
    recovered = cursor.fetchone()[0].timestamp()
    resumed = first_tick_after(markers, ids, recovered) - died
    # Work lost with the interrupted runs: their ticks, at 2 tasks per node.
    interrupted = sum(end - first for j in ids for first, end in runs(markers, j).values()
                      if first < died and len(runs(markers, j)) > 1) / 2
    print(f"a worker rank died: tasks ran again {resumed:.1f} s later ({2 * resumed:.1f} "
          f"node-seconds idle on 2 nodes) + {interrupted:.1f} node-seconds of interrupted runs")
    assert_all_ran_once_at_a_time(cursor, markers, ids)
    assert serial_sessions(cursor) == 1  # one launcher, one session, two ensembles


def test_a_lost_node_is_dropped_and_its_jobs_wait_for_the_lease(db, cursor, scripts):
    # Item 4, a node crash: worker rank 2, its watchdog and its tasks vanish at once, so nothing
    # reports its tasks dead. The launcher goes on with node 1 only; node 2's jobs stay held
    # until the lease expires, then a launcher sweeps and runs them.
    # The first four runs tick until the node is lost, however slow the machine is.
    ids, markers = tickers(cursor, scripts, 8, ticks=15, packing=2, hold=True)
    tunables = dict(QUICK, lease_seconds=8)
    with settings(db, local_nodes=2, launcher=tunables), launchers() as start:
        first = start(*SERIAL)
        wait_for(lambda: running(cursor) == 4, 60, "two runs on each node")
        worker = wait_for(lambda: rank_pid(first.pid, 2), 10, "worker rank 2")
        died = time.time()
        lose_node(worker)
        os.remove(os.path.join(markers, "hold"))
        assert first.wait(240) == 0
        cursor.execute(f"SELECT ended_at FROM {schema.SESSION_TABLE} WHERE job_mode = 'serial'")
        assert cursor.fetchall() == [(None,)]  # left to the lease
        stranded = [j for j in ids if job_row(cursor, j)["state"] == "RUNNING"]
        assert len(stranded) == 2
        resumed = first_tick_after(markers, ids, died + 0.5) - died
        assert start(*SERIAL).wait(240) == 0
    print(f"a node was lost: node 1 ran tasks again {resumed:.1f} s later; its 2 jobs waited "
          f"for the lease ({tunables['lease_seconds']} s)")
    assert_all_ran_once_at_a_time(cursor, markers, ids)
