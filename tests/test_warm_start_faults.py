"""Faults around serial mode's warm start (:mod:`balsam.launcher.warm_start`): the launcher's own
first tasks outlive a failed ensemble and are handed to the next one (``NodeSlots.place_at``).

Real launchers, real ``mpiexec`` (the mpich wheel), real PostgreSQL; ranks killed with signals.
Every task leaves a trail of ticks (:data:`once_support.TICKER`), and runs are held going by a
file the test removes once it has done what it must do while they run, so nothing depends on
how fast the machine is. Each test checks that every job ran once at a time, that every run
that began is in its job's history exactly once, that the launcher exited with its documented
status and that no job is left held by a session."""
from __future__ import annotations

import os
import time

import pytest
from fault_support import (
    SERIAL,
    add_ticker_app,
    held_markers,
    lose_node,
    open_sessions,
    tick_jobs,
)
from launcher_procs import launchers
from launcher_support import QUICK, events, job_row, process_gone, settings, wait_for
from once_support import descendants, kill, overlap_seconds, rank_pid, recorded_runs, runs

from balsam.core import schema

pytestmark = pytest.mark.slow

def started_after(markers: str, ids: list[str], moment: float) -> int:
    """Runs (of ``ids``) whose first tick came after ``moment`` (epoch seconds)."""
    return sum(first > moment for j in ids for first, _ in runs(markers, j).values())


def new_rank(launcher_pid: int, rank: int, old: int) -> int:
    pid = rank_pid(launcher_pid, rank)
    return pid if pid != old else 0


def kill_worker_2_in_each_ensemble(launcher_pid: int, markers: str, others: list[str],
                                   ensembles: int) -> float:
    """In each of ``ensembles`` ensembles in a row, once two runs of ``others`` began in it,
    SIGKILL its worker rank 2 (node 2); the time of the last kill (epoch seconds)."""
    since, rank2 = 0.0, 0
    for generation in range(1, ensembles + 1):
        wait_for(lambda t=since: started_after(markers, others, t) >= 2, 180,
                 f"two other runs on node 2 (ensemble {generation})")
        rank2 = wait_for(lambda old=rank2: new_rank(launcher_pid, 2, old), 30, "worker rank 2")
        since = time.time()
        kill(rank2)
    return since


def rank1_runs(launcher_pid: int, markers: str, ids: list[str]) -> list[str]:
    """The jobs (of ``ids``) a run of which worker rank 1 started and still runs."""
    rank1 = rank_pid(launcher_pid, 1)
    tree = set(descendants(rank1)) if rank1 else set()
    return [j for j in ids if tree & set(runs(markers, j))]


def assert_once_and_recorded(cursor, markers: str, ids: list[str]) -> None:
    """No job ran twice at once, and each run that began is in its history exactly once."""
    assert overlap_seconds(markers, ids) == {}
    recorded = {j: (len(runs(markers, j)), recorded_runs(cursor, j)) for j in ids}
    assert {j: n for j, n in recorded.items() if n[0] != n[1]} == {}


def assert_nothing_held(cursor, sessions_ended: bool = True) -> None:
    """No job is held by a session; every launcher session is closed (``sessions_ended``: a
    SIGKILLed launcher's session that held nothing more stays open until a sweep)."""
    cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE session_id IS NOT NULL")
    assert cursor.fetchone()[0] == 0
    assert open_sessions(cursor) == (0 if sessions_ended else 1)


def test_the_launchers_own_tasks_are_carried_through_two_restarts(db, cursor, scripts):
    # The launcher's own two tasks fill node 1 and run until the test says so. Worker rank 2 is
    # killed while other runs tick on node 2, then the new ensemble's rank 2 too: the tasks are
    # handed to a second and to a third ensemble, each of whose worker 1 keeps their shares.
    markers, (own_hold, other_hold) = held_markers("own", "other")
    add_ticker_app(cursor, scripts)
    own = tick_jobs(cursor, markers, "own", 2, own_hold, priority=10)  # the warm start's
    others = tick_jobs(cursor, markers, "o", 8, other_hold, ticks=5)
    with settings(db, local_nodes=2, cores_per_node=2, launcher=QUICK), launchers() as start:
        launcher = start(*SERIAL)
        wait_for(lambda: all(runs(markers, j) for j in own), 60, "the launcher's tasks to tick")
        kill_worker_2_in_each_ensemble(launcher.pid, markers, others, 2)
        os.remove(other_hold)
        try:
            # Work queued on worker 1 behind the launcher's tasks is taken back for node 2 once
            # node 2 idles (serial_rebalance): every other job finishes while they run.
            wait_for(lambda: all(job_row(cursor, j)["state"] == "JOB_FINISHED" for j in others),
                     240, "the other jobs to finish on node 2 while the launcher's own tasks run")
            assert all(job_row(cursor, j)["state"] == "RUNNING" for j in own)
        finally:
            os.remove(own_hold)
        assert launcher.wait(240) == 0
        log = launcher.log()
    assert "warm start: 2 task(s) started by the launcher" in log, log
    assert "(ensemble 3 of this session)" in log, log
    assert all(job_row(cursor, j)["state"] == "JOB_FINISHED" for j in own + others)
    for job_id in own:  # one run each, through three ensembles
        assert len(runs(markers, job_id)) == 1 and recorded_runs(cursor, job_id) == 1
    assert_once_and_recorded(cursor, markers, own + others)
    assert_nothing_held(cursor)


def held_by_sessions(cursor, ids: list[str]) -> list[str]:
    cursor.execute(f"SELECT job_id::text FROM {schema.JOB_TABLE} WHERE session_id IS NOT NULL "
                   "AND job_id = ANY(%s::uuid[])", [ids])
    return [r[0] for r in cursor.fetchall()]


def test_when_no_ensemble_follows_its_jobs_are_freed_while_the_launchers_own_tasks_run(
        db, cursor, scripts):
    # Worker rank 2 is killed in four ensembles in a row: after the third restart the launcher
    # gives up (status 2) and waits for its own tasks. The last ensemble's jobs are known dead
    # (their watchdogs reported): they are timed out and released at once, so that another
    # launcher can run them. Before, they stayed RUNNING and held by the session for as long
    # as the launcher's own tasks ran.
    markers, (own_hold, other_hold) = held_markers("own", "other")
    add_ticker_app(cursor, scripts)
    own = tick_jobs(cursor, markers, "own", 2, own_hold, priority=10)  # the warm start's
    others = tick_jobs(cursor, markers, "o", 10, other_hold, ticks=5)
    # A job may be on node 2 in all four ensembles: four interrupted runs, none its fault.
    tunables = dict(QUICK, max_retries=8)
    with settings(db, local_nodes=2, cores_per_node=2, launcher=tunables), launchers() as start:
        launcher = start(*SERIAL)
        wait_for(lambda: all(runs(markers, j) for j in own), 60, "the launcher's tasks to tick")
        kill_worker_2_in_each_ensemble(launcher.pid, markers, others, 4)
        try:
            wait_for(lambda: "not starting another" in launcher.log(), 120,
                     "the launcher to give up")
            wait_for(lambda: held_by_sessions(cursor, others) == [], 60,
                     "the last ensemble's jobs to be freed while the launcher's tasks run")
            assert sorted(held_by_sessions(cursor, own)) == sorted(own)
            assert launcher.proc.poll() is None  # it waits for its own tasks
        finally:
            os.remove(own_hold)
            os.remove(other_hold)
        assert launcher.wait(120) == 2  # the ensemble failed
        log = launcher.log()
        assert start(*SERIAL).wait(240) == 0  # runs what the first left
    assert "(ensemble 4 of this session)" in log, log
    assert any(e[3].endswith("lost a rank; it is not restarted")
               for j in others for e in events(cursor, j))
    assert all(job_row(cursor, j)["state"] == "JOB_FINISHED" for j in own + others)
    for job_id in own:  # one run each, through four ensembles
        assert len(runs(markers, job_id)) == 1 and recorded_runs(cursor, job_id) == 1
    assert_once_and_recorded(cursor, markers, own + others)
    assert_nothing_held(cursor)


def test_node_1_lost_while_the_launchers_own_task_runs(db, cursor, scripts):
    # Worker rank 1 vanishes with its watchdog and its task (an OOM kill, a node that hangs):
    # nothing reports its task dead, so node 1 is dropped and the master moves to node 2. The
    # launcher's own task runs on, on node 1, and is recorded by the launcher; node 2 has
    # both its shares for the new ensemble (before, its worker 1 was handed the launcher's
    # task as if it ran there: one share of node 2 stayed empty while it ran). The lost
    # rank's job stays held until the lease ends; a second launcher then sweeps and runs it.
    markers, (own_hold, other_hold) = held_markers("own", "other")
    add_ticker_app(cursor, scripts)
    (own,) = tick_jobs(cursor, markers, "own", 1, own_hold, priority=10)
    (brief,) = tick_jobs(cursor, markers, "brief", 1, os.path.join(markers, "none"),
                         priority=9, ticks=2)  # the warm start's second: gives node 1 a share
    others = tick_jobs(cursor, markers, "o", 7, other_hold, ticks=5)
    tunables = dict(QUICK, lease_seconds=10, kill_grace_seconds=1)
    with settings(db, local_nodes=2, cores_per_node=2, launcher=tunables), \
            launchers() as start:
        first = start(*SERIAL)
        wait_for(lambda: runs(markers, own) and job_row(cursor, brief)["state"] == "JOB_FINISHED",
                 60, "the launcher's tasks: one ticking, one done")
        # Worker 1 has the brief task's share back: a run of its own beside the launcher's.
        rank1 = wait_for(lambda: rank_pid(first.pid, 1), 60, "worker rank 1")
        wait_for(lambda: rank1_runs(first.pid, markers, others), 180,
                 "a run started by worker rank 1")
        by_rank1 = rank1_runs(first.pid, markers, others)
        wait_for(lambda: all(job_row(cursor, j)["state"] == "RUNNING" for j in by_rank1), 60,
                 "the master to record its start")
        lost = time.time()
        lose_node(rank1)
        # The new ensemble on node 2 alone gets both of its shares while the launcher's task
        # runs on node 1: two runs begun after the loss tick at once (held going).
        wait_for(lambda: started_after(markers, others, lost) >= 2, 240,
                 "two runs at once on node 2 after node 1 was dropped")
        assert job_row(cursor, own)["state"] == "RUNNING" and len(runs(markers, own)) == 1
        os.remove(other_hold)
        os.remove(own_hold)
        assert first.wait(240) == 0
        log = first.log()
        stranded = [j for j in others if job_row(cursor, j)["state"] == "RUNNING"]
        assert stranded == by_rank1, log  # held for the lease sweep, not run again
        assert start(*SERIAL).wait(240) == 0
    assert "warm start: 2 task(s) started by the launcher" in log, log
    assert "restarting the serial-mode ensemble on 1 node(s)" in log, log
    ids = [own, brief, *others]
    assert all(job_row(cursor, j)["state"] == "JOB_FINISHED" for j in ids)
    assert len(runs(markers, own)) == 1 and recorded_runs(cursor, own) == 1
    assert_once_and_recorded(cursor, markers, ids)
    assert_nothing_held(cursor)


def test_a_launcher_killed_after_a_restart_has_its_carried_tasks_recorded_once(db, cursor, scripts):
    # The launcher's own two tasks are carried to a second ensemble (worker rank 2 killed),
    # then the launcher itself is SIGKILLed: its watchdog stops them and the new ensemble, whose
    # master -- handed them with their CPUs -- records each RUN_TIMEOUT once it is gone. A
    # second launcher on the same database then sweeps the dead session and runs everything.
    markers, (own_hold, other_hold) = held_markers("own", "other")
    add_ticker_app(cursor, scripts)
    own = tick_jobs(cursor, markers, "own", 2, own_hold, priority=10)  # the warm start's
    others = tick_jobs(cursor, markers, "o", 6, other_hold, ticks=5)
    with settings(db, local_nodes=2, cores_per_node=2, launcher=dict(QUICK, lease_seconds=10)), \
            launchers() as start:
        first = start(*SERIAL)
        wait_for(lambda: all(runs(markers, j) for j in own), 60, "the launcher's tasks to tick")
        restarted = kill_worker_2_in_each_ensemble(first.pid, markers, others, 1)
        wait_for(lambda: started_after(markers, others, restarted) >= 2, 180,
                 "two runs on node 2 in the second ensemble")
        own_pids = [pid for j in own for pid in runs(markers, j)]
        kill(first.pid)
        first.wait(60)
        wait_for(lambda: all(process_gone(p) for p in own_pids), 60,
                 "the launcher's watchdog to stop its tasks")
        wait_for(lambda: all(job_row(cursor, j)["state"] != "RUNNING" for j in own), 60,
                 "the second ensemble's master to record them")
        os.remove(own_hold)
        os.remove(other_hold)
        assert start(*SERIAL).wait(240) == 0
        log = first.log()
    assert "restarting the serial-mode ensemble on 2 node(s)" in log, log
    assert all(job_row(cursor, j)["state"] == "JOB_FINISHED" for j in own + others)
    for job_id in own:  # the interrupted run, then the second launcher's
        assert len(runs(markers, job_id)) == 2 and recorded_runs(cursor, job_id) == 2
        assert any("the launcher, which ran this task itself, died" in e[3]
                   for e in events(cursor, job_id) if e[2] == "RUN_TIMEOUT")
    assert_once_and_recorded(cursor, markers, own + others)
    assert_nothing_held(cursor, sessions_ended=False)
