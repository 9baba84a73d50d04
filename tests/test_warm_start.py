"""Serial mode's warm start (:mod:`balsam.launcher.warm_start`): the launcher runs the first
tasks itself while its ensemble boots, and hands them to rank 0 as shares of node 1.

First the pieces without MPI: the hand-over line and the ``-JOBID`` lines rank 0 reads, and a
worker keeping a held share of its node. Then real launchers (real ``mpiexec``, real
PostgreSQL): the launcher's own tasks are recorded exactly once and never over-fill the node,
and a user kill, SIGTERM and the launcher's death (SIGKILL) reach them as they reach the
ensemble's tasks. Jobs are inserted runnable (PREPROCESSED), as only those are there when the
launcher opens its session."""
from __future__ import annotations

import os
import signal
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import make_public_tmpdir, run_balsam
from fault_support import held_markers
from launcher_procs import Launcher, launchers
from launcher_support import (
    QUICK,
    add_app,
    add_jobs,
    events,
    job_row,
    kill_group_of,
    process_gone,
    settings,
    states,
    wait_for,
    workdir,
    write_script,
)
from once_support import (
    TICKER,
    kill,
    overlap_seconds,
    rank_pid,
    read_pid,
    recorded_runs,
    runs,
    unrecorded_runs,
)

from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.rank_boot import ended_from_launcher, read_handover
from balsam.launcher.serial_worker import Worker
from balsam.platform.process import start_time

SERIAL = ("--consume-all", "--job-mode", "serial")


def test_rank_0_reads_the_session_id_the_held_shares_and_the_ends_until_end_of_file():
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b'12 [["a",2,1,4242],["b",2,1,4243]]\n-a\n')
    session, holds, rest = read_handover(threading.Event(), 60.0, read_fd)
    assert (session, holds) == (12, [["a", 2, 1, 4242], ["b", 2, 1, 4243]])
    ended: deque[str] = deque()
    os.write(write_fd, b"-b\n")
    os.close(write_fd)
    ended_from_launcher(threading.Event(), read_fd, rest, ended)
    os.close(read_fd)
    assert list(ended) == ["a", "b", ""]  # "": end of file


def test_a_handover_without_shares_is_the_session_id_alone():
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"7 \n")
    assert read_handover(threading.Event(), 60.0, read_fd)[:2] == (7, [])
    os.close(write_fd)
    assert read_handover(threading.Event(), 60.0, read_fd)[:2] == (0, [])  # end of file
    os.close(read_fd)


class Inbox:
    def __init__(self) -> None:
        self.orders: list[dict] = []
        self.reports: list[dict] = []

    def send(self, message: dict) -> None:
        self.reports.append(message)

    def receive(self):
        return self.orders.pop(0) if self.orders else None

    def started(self) -> list[str]:
        return [j for r in self.reports for j in r.get("started", ())]


def test_a_worker_keeps_the_launchers_share_of_its_node_until_it_is_given_back(tmp_path):
    from balsam.launcher.serial_worker import Work

    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0, 1]), dict(os.environ))
    wd = str(tmp_path)
    true = "/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true"
    work = [Work(n, [true], None, {}, wd, os.path.join(wd, f"{n}.out"), 2, 1)
            for n in ("c", "d")]
    inbox.orders += [{"hold": [["a", 2, 1, 0], ["b", 2, 1, 0]]}, {"work": work}]
    worker.step()
    assert inbox.started() == []  # the node is full of the launcher's two tasks
    inbox.orders.append({"unhold": ["a"]})
    wait_for(lambda: (worker.step(), inbox.started())[1], 60, "a start (by a spawning thread)")
    # one share back: one task at a time (d may follow c in that share: a chained start)
    assert inbox.started()[0] == "c" and "b" in worker.node and len(worker.node) <= 2
    wait_for(lambda: (worker.step(), not worker.running)[1], 60, "the task to be reaped")
    worker.warm.close()


def test_a_share_carried_to_a_new_ensemble_keeps_its_cpus_and_gpu():
    node = NodeSlots([0, 1], gpus=2)
    # The launcher's task that ran on CPU 1 and GPU 1 outlived its ensemble (the one on CPU 0
    # ended): a new worker 1 places it there, not on the lowest free CPU and GPU.
    assert tuple(node.place_at("b", 2, 1, [1], 1)) == ((1,), 1)
    assert tuple(node.place("c", 2, 1)) == ((0,), 0)
    assert node.place("d", 2, 1) is None  # the node is full
    node.free("b")
    assert tuple(node.place_at("e", 2, 1)) == ((1,), 1)  # without CPUs: as place()


# ---- real launchers ---------------------------------------------------------------------------

# Records its start and end, its node share, and whether its parent is a worker rank.
RECORD = """#!/bin/sh
start=$(date +%s.%N)
sleep 0.3
rank=$(tr '\\0' ' ' < /proc/$PPID/cmdline | grep -c serial_ranks)
echo "$start $(date +%s.%N) $SHARE $rank" > "$RECORDS/$BALSAM_JOB_ID"
"""

SLEEPER = """#!/bin/sh
echo $$ > pid
exec sleep 600
"""


def script(name: str, text: str) -> str:
    return write_script(make_public_tmpdir("balsam-warm-scripts-"), name, text)


@pytest.mark.slow
def test_the_launchers_own_first_tasks_run_once_and_never_overfill_the_node(db, cursor):
    records = make_public_tmpdir("balsam-warm-records-")
    add_app(cursor, "record", script("record.sh", RECORD))
    ids = add_jobs(cursor, [{"name": f"r{i}", "application": "record", "node_packing_count": 2,
                             "environ_vars": f"RECORDS={records}:SHARE=0.5",
                             "state": "PREPROCESSED"} for i in range(6)])
    with settings(db, local_nodes=1, cores_per_node=2, launcher=QUICK), launchers() as start:
        launcher = start(*SERIAL)
        assert launcher.wait(120) == 0, launcher.output()
        log = launcher.log()
    assert "warm start: 2 task(s) started by the launcher" in log
    assert set(states(cursor).values()) == {"JOB_FINISHED"}
    for job_id in ids:  # runnable when the launcher started
        assert [e[2] for e in events(cursor, job_id)][-3:] == ["RUNNING", "RUN_DONE",
                                                               "JOB_FINISHED"]
        assert recorded_runs(cursor, job_id) == 1
    runs = []
    for name in os.listdir(records):
        with open(os.path.join(records, name)) as fh:
            start_at, end_at, share, by_rank = fh.read().split()
        runs.append((float(start_at), float(end_at), float(share), int(by_rank)))
    assert len(runs) == 6
    assert sorted(r[3] for r in runs) == [0, 0, 1, 1, 1, 1]  # two by the launcher itself
    for s in runs:  # at every start: never more than the node
        assert sum(r[2] for r in runs if r[0] <= s[0] < r[1]) <= 1.0 + 1e-9


def sleeper_job(db: str, cursor) -> tuple[str, str]:
    add_app(cursor, "sleeper", script("sleeper.sh", SLEEPER))
    (job_id,) = add_jobs(cursor, [{"name": "s", "application": "sleeper",
                                   "state": "PREPROCESSED"}])  # runnable at once
    return job_id, os.path.join(workdir(db, cursor, job_id), "pid")


@contextmanager
def own_task_running(db: str, cursor) -> Iterator[tuple[Launcher, str, int]]:
    """A serial-mode launcher on one node whose own first task (:data:`SLEEPER`) is RUNNING:
    (the launcher, the job's id, the task's pid). At exit the task's group is killed if that
    task still runs (a failed test), and the launcher stopped."""
    job_id, pid_file = sleeper_job(db, cursor)
    with settings(db, local_nodes=1, launcher=QUICK), launchers() as start:
        launcher = start(*SERIAL)
        pid = wait_for(lambda: read_pid(pid_file), 60, "the task to start")
        started = start_time(pid)
        try:
            wait_for(lambda: job_row(cursor, job_id)["state"] == "RUNNING", 60, "RUNNING")
            yield launcher, job_id, pid
        finally:
            kill_group_of(pid, started)


@pytest.mark.slow
def test_a_user_kill_stops_the_launchers_own_task_and_nothing_more_is_recorded(db, cursor):
    with own_task_running(db, cursor) as (launcher, job_id, pid):
        proc = run_balsam("killjob", "--id", job_id, "--yes")
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: process_gone(pid), 60, "the task to be stopped")
        assert launcher.wait(120) == 0, launcher.output()  # nothing left: it exits by itself
        log = launcher.log()
    assert "warm start: 1 task(s)" in log and "was killed by a user" in log
    assert [e[2] for e in events(cursor, job_id)][-2:] == ["RUNNING", "USER_KILLED"]
    assert job_row(cursor, job_id)["session_id"] is None


@pytest.mark.slow
def test_sigterm_stops_the_launchers_own_task_as_run_timeout(db, cursor):
    with own_task_running(db, cursor) as (launcher, job_id, pid):
        launcher.signal(signal.SIGTERM)
        assert launcher.wait(120) == 0, launcher.output()
        assert process_gone(pid)
        assert "warm start: 1 task(s)" in launcher.log()
    # Recorded RUN_TIMEOUT with the stop's reason; the master's last processing pass may already
    # have made it RESTART_READY (the launcher records its own task while the ensemble stops).
    states = [e[2] for e in events(cursor, job_id)]
    assert states[states.index("RUNNING"):][:2] == ["RUNNING", "RUN_TIMEOUT"]
    assert ("RUN_TIMEOUT", "stopped by the launcher: the launcher received SIGTERM") in [
        e[2:] for e in events(cursor, job_id)]
    assert states[-1] in ("RUN_TIMEOUT", "RESTART_READY")
    assert job_row(cursor, job_id)["session_id"] is None


@pytest.mark.slow
def test_a_launcher_killed_with_sigkill_has_its_own_task_stopped_and_recorded(db, cursor):
    with own_task_running(db, cursor) as (launcher, job_id, pid):
        wait_for(lambda: "warm start: 1 task(s)" in launcher.log(), 60,
                 "the launcher's log line (written after RUNNING)")
        # once the master is up (before, the ensemble dies with the launcher and the lease
        # sweep records the run, as for any job of a dead session)
        wait_for(lambda: "serial master on host" in launcher.log(), 60, "the master")
        kill(launcher.pid)  # its watchdog stops the task and the ensemble (SIGTERM)
        launcher.wait(60)
        wait_for(lambda: process_gone(pid), 60, "the task to be stopped")
        # the master, stopped by the same watchdog, records it once it is gone
        wait_for(lambda: job_row(cursor, job_id)["state"] != "RUNNING", 60, "the record")
    row = job_row(cursor, job_id)
    assert row["state"] in ("RUN_TIMEOUT", "RESTART_READY") and row["session_id"] is None
    assert recorded_runs(cursor, job_id) == 1
    assert "the launcher, which ran this task itself, died" in [
        e[3] for e in events(cursor, job_id) if e[2] == "RUN_TIMEOUT"][0]


@pytest.mark.slow
def test_a_restart_does_not_wait_for_the_launchers_own_tasks(db, cursor):
    # The launcher's own two tasks fill node 1 and run until the test says so; worker rank 2 is
    # killed while two other runs tick there, and the new ensemble runs the other jobs on node 2
    # meanwhile, keeping node 1's shares for the launcher's tasks. Before, the launcher waited
    # for its tasks before it restarted anything, so no other job could finish.
    markers, (own_hold, other_hold) = held_markers("own", "other")
    add_app(cursor, "tick", script("tick.sh", TICKER))
    own = add_jobs(cursor, [{"name": f"own{i}", "application": "tick", "priority": 10,
                             "node_packing_count": 2, "state": "PREPROCESSED",
                             "environ_vars": f"MARKERS={markers}:TICKS=1:HOLD={own_hold}"}
                            for i in range(2)])  # claimed first: the warm start's
    others = add_jobs(cursor, [{"name": f"o{i}", "application": "tick", "node_packing_count": 2,
                                "state": "PREPROCESSED",
                                "environ_vars": f"MARKERS={markers}:TICKS=10:HOLD={other_hold}"}
                               for i in range(6)])

    def finished() -> int:
        return sum(job_row(cursor, j)["state"] == "JOB_FINISHED" for j in others)

    with settings(db, local_nodes=2, cores_per_node=2, launcher=QUICK), launchers() as start:
        launcher = start(*SERIAL)
        wait_for(lambda: all(runs(markers, j) for j in own), 60, "the launcher's tasks to tick")
        wait_for(lambda: sum(bool(runs(markers, j)) for j in others) == 2, 60,
                 "two other runs on node 2")
        kill(wait_for(lambda: rank_pid(launcher.pid, 2), 10, "worker rank 2"))
        os.remove(other_hold)
        try:
            # Work the master queued behind the launcher's tasks on worker 1 is taken back
            # once node 2 idles (serial_rebalance): every other job finishes meanwhile.
            wait_for(lambda: finished() == len(others), 180,
                     "the other jobs to finish while the launcher's own tasks run")
            assert all(job_row(cursor, j)["state"] == "RUNNING" for j in own)
        finally:
            os.remove(own_hold)
        assert launcher.wait(120) == 0, launcher.output()
        log = launcher.log()
    assert "warm start: 2 task(s) started by the launcher" in log, log
    assert "restarting the serial-mode ensemble on 2 node(s)" in log, log
    assert set(states(cursor).values()) == {"JOB_FINISHED"}
    for job_id in own:  # ran once, through both ensembles
        assert len(runs(markers, job_id)) == 1 and recorded_runs(cursor, job_id) == 1
    assert overlap_seconds(markers, own + others) == {}
    assert unrecorded_runs(cursor, markers, own + others) == {}
    # While the launcher's tasks held node 1, the other runs had node 2 alone: never more than
    # two at once (tick trails lie inside the runs, so they never show more than there were).
    own_end = min(last for j in own for _, last in runs(markers, j).values())
    spans = [span for j in others for span in runs(markers, j).values() if span[0] < own_end]
    for first, _ in spans:
        assert sum(f <= first <= last for f, last in spans) <= 2, spans
