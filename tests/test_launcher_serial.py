"""Serial-mode launcher: real `python -m balsam launcher --job-mode serial` subprocesses running
one real MPICH `mpiexec` ensemble (rank 0 master, one worker rank per emulated node), real
PostgreSQL. Every job runs exactly once, packing/cores/GPUs are honoured (checked from what the
tasks recorded themselves), kills reach the whole process group, SIGTERM leads to retries, a
child waiting on its parent keeps the launcher up, and the task environment is free of the
ensemble's MPI variables. The first tests drive one worker in-process (no MPI). A launcher
killed with its ranks, the time limit and the database going away: test_launcher_serial_ends.py."""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
from typing import Any, Optional

import pytest
from conftest import make_public_tmpdir, run_balsam
from launcher_procs import launchers
from launcher_support import (
    QUICK,
    Inbox,
    add_app,
    add_jobs,
    events,
    job_row,
    kill_group_of,
    process_gone,
    serve,
    settings,
    states,
    wait_for,
    workdir,
    write_script,
)

from balsam.core import schema, serial_reports
from balsam.launcher.context import FINISHED_REASON
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Work, Worker
from balsam.platform.process import start_time

pytestmark = pytest.mark.slow

SERIAL = ("--consume-all", "--job-mode", "serial")


# ---- one worker, in-process ------------------------------------------------------------------

def work(tmp: str, name: str, argv: list[str], packing: int = 1, env: Optional[dict] = None
         ) -> Work:
    wd = os.path.join(tmp, name)
    return Work(name, argv, None, env or {}, wd, os.path.join(wd, f"{name}.out"), packing, 1)


def test_worker_reports_done_failed_and_unstartable_tasks(tmp_path):
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]})
    inbox.orders.append({"work": [
        work(str(tmp_path), "ok", ["true"], 3),
        work(str(tmp_path), "bad", ["sh", "-c", "echo boom; exit 3"], 3),
        work(str(tmp_path), "missing", ["/no/such/program"], 3)]})
    serve(worker, inbox, lambda: len(inbox.collected("done") + inbox.collected("failed")) == 3)
    assert sorted(inbox.collected("started")) == ["bad", "missing", "ok"]
    assert inbox.collected("done") == ["ok"]
    failed = {job: (rc, tail) for job, rc, tail in inbox.collected("failed")}
    assert failed["bad"] == (3, "boom")
    assert failed["missing"][0] == -1 and failed["missing"][1].startswith("cannot start: ")
    assert worker.node.occupancy == 0


def test_worker_reports_tasks_terminated_from_outside_apart_from_failures(tmp_path):
    # The batch system ending the job signals every process at once: SIGTERM (or a wrapper's
    # exit code 143) is not the application's failure, unlike SIGSEGV.
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]})
    inbox.orders.append({"work": [
        work(str(tmp_path), "termed", ["sh", "-c", "kill -TERM $$"], 3),
        work(str(tmp_path), "wrapped", ["sh", "-c", "exit 143"], 3),
        work(str(tmp_path), "segv", ["sh", "-c", "kill -SEGV $$"], 3)]})
    serve(worker, inbox,
          lambda: len(inbox.collected("terminated") + inbox.collected("failed")) == 3)
    assert sorted(inbox.collected("terminated")) == [("termed", -15), ("wrapped", 143)]
    assert [(job, rc) for job, rc, _ in inbox.collected("failed")] == [("segv", -11)]


def test_worker_environment_drops_the_ensembles_mpi_variables(tmp_path):
    inbox = Inbox()
    base = {"PATH": os.environ["PATH"], "PMI_RANK": "1", "PMI_FD": "9", "HYDRA_X": "y",
            "HYDI_CONTROL_FD": "7", "MPI_LOCALRANKID": "1", "KEEP": "me"}
    worker = Worker(inbox, NodeSlots([0], 2), base)
    inbox.orders.append({"work": [work(str(tmp_path), "env", ["env"], env={"JOB_VAR": "v"})]})
    serve(worker, inbox, lambda: inbox.collected("done"))
    with open(tmp_path / "env" / "env.out") as fh:
        seen = dict(line.split("=", 1) for line in fh.read().splitlines())
    assert seen["KEEP"] == "me" and seen["JOB_VAR"] == "v"
    assert seen["CUDA_VISIBLE_DEVICES"] == "0" and seen["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert not [k for k in seen if k.startswith(("PMI_", "HYDRA_", "HYDI_", "MPI_LOCAL"))]


def test_worker_kills_queued_and_running_tasks_and_stop_returns_the_queue(tmp_path):
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]}, kill_grace=0.5)
    inbox.orders.append({"work": [work(str(tmp_path), f"s{i}", ["sleep", "30"]) for i in range(4)]})
    serve(worker, inbox, lambda: inbox.collected("started"))
    assert inbox.collected("started") == ["s0"]  # packing 1: one at a time
    pid = worker.running["s0"].task.pgid
    inbox.orders.append({"kill": ["s0", "s1"]})
    serve(worker, inbox, lambda: len(inbox.collected("killed")) == 2)
    assert sorted(inbox.collected("killed")) == ["s0", "s1"] and process_gone(pid)
    serve(worker, inbox, lambda: "s2" in worker.running)
    inbox.orders.append({"stop": 0.5})
    serve(worker, inbox, lambda: inbox.flagged("drained"))
    assert inbox.collected("returned") == ["s3"]
    assert [job for job, _ in inbox.collected("stopped")] == ["s2"]
    inbox.orders.append({"work": [work(str(tmp_path), "late", ["true"])]})
    inbox.orders.append({"exit": True})
    serve(worker, inbox, lambda: worker.finished)
    assert inbox.collected("returned") == ["s3", "late"] and inbox.flagged("bye")


def test_worker_reports_a_task_that_completes_within_the_stop_grace_as_done(tmp_path):
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0, 1], 0), {"PATH": os.environ["PATH"]})
    ready = tmp_path / "trap_set"
    inbox.orders.append({"work": [
        work(str(tmp_path), "finishes", ["bash", "-c", f"trap '' TERM; touch {ready}; sleep 1"],
             2),
        work(str(tmp_path), "dies", ["sleep", "30"], 2)]})
    serve(worker, inbox, lambda: len(inbox.collected("started")) == 2 and ready.exists())
    inbox.orders.append({"stop": 5.0})
    serve(worker, inbox, lambda: inbox.flagged("drained"))
    assert inbox.collected("done") == ["finishes"]
    assert [job for job, _ in inbox.collected("stopped")] == ["dies"]


# ---- the real launcher -----------------------------------------------------------------------

def to_states(evs: list) -> list[str]:
    return [e[2] for e in evs]


# Records start/end times, its packing share, allowed CPUs and GPU in $RECORDS/<job id>.
RECORD = """#!/bin/sh
start=$(date +%s.%N)
sleep "$NAP"
echo "$start $(date +%s.%N) $SHARE $(grep Cpus_allowed_list /proc/$$/status | cut -f2) \
${CUDA_VISIBLE_DEVICES:-none}" > "$RECORDS/$BALSAM_JOB_ID"
"""


def recorded(records: str) -> list[tuple[float, float, float, str, str]]:
    out = []
    for name in os.listdir(records):
        with open(os.path.join(records, name)) as fh:
            start, end, share, cpus, gpu = fh.read().split()
        out.append((float(start), float(end), float(share), cpus, gpu))
    return out


def concurrent_groups(runs: list) -> list[list]:
    """For each task start: the tasks running at that instant (recorded intervals)."""
    return [[r for r in runs if r[0] <= s[0] < r[1]] for s in runs]


def record_jobs(cursor: Any, scripts: str, count: int, packing: int, nap: float = 0.4) -> str:
    """``count`` jobs of the RECORD script with ``packing``; the directory of their records."""
    records = make_public_tmpdir("balsam-l2-records-")
    if not os.path.exists(os.path.join(scripts, "record.sh")):
        add_app(cursor, "record", write_script(scripts, "record.sh", RECORD))
    env = f"RECORDS={records}:NAP={nap}:SHARE={1 / packing}"
    add_jobs(cursor, [{"name": f"p{packing}_{i}", "application": "record",
                       "node_packing_count": packing, "environ_vars": env}
                      for i in range(count)])
    return records


def test_several_worker_ranks_run_every_job_once_with_a_clean_environment(db, cursor, scripts):
    add_app(cursor, "env", "/usr/bin/env")
    ids = add_jobs(cursor, [{"name": f"e{i}", "application": "env", "node_packing_count": 2,
                             "environ_vars": "JOB_VAR=x"} for i in range(24)])
    with settings(db, local_nodes=3, launcher=QUICK), launchers() as start:
        launcher = start(*SERIAL)
        assert launcher.wait(60) == 0, launcher.output()
        out, err = launcher.output()
        log = launcher.log()
    assert out.startswith("Balsam launcher: serial mode, 3 node(s) (local), session ") and not err
    host = socket.gethostname()
    assert not os.path.exists(serial_reports.watch_dir(db, host, launcher.pid))  # nothing left
    for n in (1, 2, 3):
        assert f"serial worker {n} (node {host}, host {host}) exits: " in log
    assert sum(int(line.split("exits: ")[1].split()[0]) for line in log.splitlines()
               if "serial worker" in line) == 24
    cursor.execute(f"SELECT end_reason FROM {schema.SESSION_TABLE} "
                   "WHERE job_mode <> 'processing'")
    assert cursor.fetchall() == [(FINISHED_REASON,)]  # its work done: no idling
    for i, job_id in enumerate(ids):
        assert to_states(events(cursor, job_id)) == ["PREPROCESSED", "RUNNING", "RUN_DONE",
                                                     "JOB_FINISHED"]
        with open(os.path.join(workdir(db, cursor, job_id), f"e{i}.out")) as fh:
            env = dict(line.split("=", 1) for line in fh.read().splitlines() if "=" in line)
        assert env["BALSAM_JOB_ID"] == job_id and env["JOB_VAR"] == "x"
        assert env["BALSAM_JOB_MODE"] == "serial" and env["BALSAM_LAUNCHER_NODES"] == "3"
        assert not [k for k in env if k.startswith(("PMI_", "HYDRA_", "HYDI_", "MPI_LOCAL"))]


MPI_PROGRAM = """
from mpi4py import MPI
print("size", MPI.COMM_WORLD.Get_size(), "rank", MPI.COMM_WORLD.Get_rank())
"""


def test_a_task_that_is_an_mpi4py_program_is_not_part_of_the_ensemble(db, cursor, scripts):
    program = write_script(scripts, "world.py", MPI_PROGRAM)
    add_app(cursor, "world", f"{sys.executable} {program}")
    ids = add_jobs(cursor, [{"name": f"w{i}", "application": "world"} for i in range(2)])
    with settings(db, local_nodes=2, launcher=QUICK), launchers() as start:
        assert start(*SERIAL).wait(90) == 0
    assert set(states(cursor).values()) == {"JOB_FINISHED"}
    for i, job_id in enumerate(ids):
        with open(os.path.join(workdir(db, cursor, job_id), f"w{i}.out")) as fh:
            assert fh.read() == "size 1 rank 0\n"


def test_node_packing_and_distinct_cores_are_honoured(db, cursor, scripts):
    halves = record_jobs(cursor, scripts, 6, packing=2)
    quarters = record_jobs(cursor, scripts, 8, packing=4)
    with settings(db, local_nodes=1, cores_per_node=2, launcher=QUICK), launchers() as start:
        assert start(*SERIAL).wait(90) == 0
    assert set(states(cursor).values()) == {"JOB_FINISHED"}
    runs = recorded(halves) + recorded(quarters)
    assert len(runs) == 14
    groups = concurrent_groups(runs)
    assert max(sum(r[2] for r in g) for g in groups) <= 1.0 + 1e-9   # never over one node
    # but packed: two halves ran at once, and four quarters (a group may also mix the two)
    assert max(sum(r[2] == 0.5 for r in g) for g in groups) == 2
    assert max(sum(r[2] == 0.25 for r in g) for g in groups) == 4
    for group in groups:  # packing 2 on 2 cores: one core each, never the same one
        halves = [r[3] for r in group if r[2] == 0.5]
        assert all(len(c) == 1 for c in halves) and len(set(halves)) == len(halves)


def test_concurrent_tasks_never_share_a_gpu(db, cursor, scripts):
    records = record_jobs(cursor, scripts, 8, packing=4, nap=0.3)
    with settings(db, local_nodes=1, launcher=QUICK), launchers() as start:
        assert start(*SERIAL, "--gpus-per-node", "2").wait(90) == 0
    runs = recorded(records)
    assert len(runs) == 8 and {r[4] for r in runs} == {"0", "1"}
    groups = concurrent_groups(runs)
    assert max(len(g) for g in groups) == 2  # packing allows 4, the two GPUs allow 2
    for group in groups:
        gpus = [r[4] for r in group]
        assert len(set(gpus)) == len(gpus)


# Sleeps in the background (recording its pids) the first time; succeeds the second time.
SLEEP_ONCE = """#!/bin/bash
if [ -e ran_once ]; then echo second run; exit 0; fi
touch ran_once
sleep "${NAP:-60}" &
echo $$ $! > pids
wait
"""


def pids_of(path: str) -> Optional[list[int]]:
    try:
        with open(path) as fh:
            text = fh.read().split()
    except FileNotFoundError:
        return None
    return [int(p) for p in text] if len(text) == 2 else None


def sleepers(db: str, cursor: Any, scripts: str, count: int, nap: int = 60,
             state: str = "CREATED") -> tuple[list[str], list[str]]:
    add_app(cursor, "sleeper", write_script(scripts, "sleep_once.sh", SLEEP_ONCE))
    ids = add_jobs(cursor, [{"name": f"s{i}", "application": "sleeper", "state": state,
                             "environ_vars": f"NAP={nap}"} for i in range(count)])
    return ids, [os.path.join(workdir(db, cursor, j), "pids") for j in ids]


def test_killing_a_running_job_stops_its_process_group(db, cursor, scripts):
    (job_id, other), (pid_file, _) = sleepers(db, cursor, scripts, 2)
    with settings(db, local_nodes=2, launcher=QUICK), launchers() as start:
        launcher = start(*SERIAL)
        leader, child = wait_for(lambda: pids_of(pid_file), 30, "the task to start")
        leader_started = start_time(leader)
        try:
            killed_at = time.monotonic()
            proc = run_balsam("killjob", "--id", job_id, "--yes")
            assert proc.returncode == 0, proc.stderr
            # A kill check every 0.5 s and a 1-s grace: ~1.5 s plus `balsam killjob`'s own
            # start on a quiet machine (printed); the bound is for a loaded CI machine.
            wait_for(lambda: process_gone(leader) and process_gone(child), 60,
                     "the task's processes to die")
            print(f"killed job's processes gone {time.monotonic() - killed_at:.1f} s after "
                  "balsam killjob started")
        finally:
            kill_group_of(leader, leader_started)
        wait_for(lambda: job_row(cursor, job_id)["session_id"] is None, 10, "the release")
        assert job_row(cursor, other)["state"] == "RUNNING"  # the other task goes on
        launcher.signal(signal.SIGTERM)
        assert launcher.wait(120) == 0
        assert "was killed by a user" in launcher.log()
    assert to_states(events(cursor, job_id))[-2:] == ["RUNNING", "USER_KILLED"]


def test_sigterm_stops_tasks_as_run_timeout_and_a_second_launcher_finishes(db, cursor, scripts):
    ids, pid_files = sleepers(db, cursor, scripts, 2)
    with settings(db, local_nodes=2, launcher=QUICK), launchers() as start:
        first = start(*SERIAL)
        pids = wait_for(lambda: all(pids_of(p) for p in pid_files) and
                        [p for f in pid_files for p in pids_of(f)], 30, "both tasks to start")
        sent = time.monotonic()
        first.signal(signal.SIGTERM)
        assert first.wait(120) == 0
        # tasks stopped after a 1-s grace, then the launcher exits: a few seconds when quiet;
        # the bound catches a stop that waits for a lease or an idle timeout
        assert time.monotonic() - sent < 60
        assert all(process_gone(p) for p in pids)
        cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE session_id IS NOT NULL")
        assert cursor.fetchone()[0] == 0
        for job_id in ids:
            assert events(cursor, job_id)[-1][2:] == (
                "RUN_TIMEOUT", "stopped by the launcher: the launcher received SIGTERM")
        assert start(*SERIAL).wait(60) == 0
    assert set(states(cursor).values()) == {"JOB_FINISHED"}
    assert to_states(events(cursor, ids[0]))[-5:] == ["RUN_TIMEOUT", "RESTART_READY", "RUNNING",
                                                      "RUN_DONE", "JOB_FINISHED"]


APPEND = """#!/bin/sh
echo "$BALSAM_JOB_ID" >> "$MARKERS/$BALSAM_JOB_ID"
sleep 0.1
"""
"""Each run takes 0.1 s, so 400 jobs on one launcher's 8 slots take ~5 s: long enough for the
second launcher to start (~1-3 s under load) and take part, which the test checks."""


def test_two_concurrent_serial_launchers_run_every_job_exactly_once(db, cursor, scripts):
    markers = make_public_tmpdir("balsam-l2-markers-")
    add_app(cursor, "append", write_script(scripts, "append.sh", APPEND))
    ids = add_jobs(cursor, [{"name": f"m{i}", "application": "append", "node_packing_count": 4,
                             "environ_vars": f"MARKERS={markers}"} for i in range(400)])
    with settings(db, local_nodes=2, launcher=QUICK), launchers() as start:
        running = [start(*SERIAL) for _ in range(2)]
        assert [launcher.wait(120) for launcher in running] == [0, 0]
    assert set(states(cursor).values()) == {"JOB_FINISHED"}
    for job_id in ids:
        with open(os.path.join(markers, job_id)) as fh:
            assert fh.read().splitlines() == [job_id]
    cursor.execute(f"SELECT count(DISTINCT message) FROM {schema.EVENT_TABLE} "
                   "WHERE to_state = 'RUNNING'")
    assert cursor.fetchone()[0] == 2  # both sessions ran jobs


def test_the_launcher_waits_for_children_made_runnable_by_processing(db, cursor, scripts):
    add_app(cursor, "nap", "/bin/sleep 0.3")
    chain = add_jobs(cursor, [{"name": f"c{i}", "application": "nap"} for i in range(3)])
    for parent, child in zip(chain, chain[1:]):
        cursor.execute(f"INSERT INTO {schema.DEP_TABLE} (parent_id, child_id) VALUES (%s, %s)",
                       [parent, child])
    with settings(db, launcher=QUICK), launchers() as start:
        assert start(*SERIAL).wait(60) == 0
    assert set(states(cursor).values()) == {"JOB_FINISHED"}
    times = [{e[2]: e[0] for e in events(cursor, j)} for j in chain]
    for parent, child in zip(times, times[1:]):
        assert child["RUNNING"] > parent["JOB_FINISHED"]
    cursor.execute(f"SELECT count(*) FROM {schema.SESSION_TABLE} "
                   "WHERE job_mode <> 'processing'")
    assert cursor.fetchone()[0] == 1  # one launcher ran the whole chain
