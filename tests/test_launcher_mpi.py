"""MPI-mode launcher: real `python -m balsam launcher` subprocesses, real MPICH `mpiexec`, real
PostgreSQL. Jobs run and finish, MPI programs get their ranks, failures keep their output tail,
big jobs go first, kills reach the whole process tree, walltime/SIGTERM/kill -9 lead to retries,
a database restart loses nothing, and concurrent launchers never run a job twice."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time

import pytest
from conftest import make_public_tmpdir, run_balsam
from launcher_procs import launchers
from launcher_support import (
    QUICK,
    SLOW_APPEND,
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

from balsam.core import schema
from balsam.launcher.context import FINISHED_REASON
from balsam.platform.process import start_time

pytestmark = pytest.mark.slow

MPI = ("--consume-all", "--job-mode", "mpi")


@pytest.fixture
def scripts():
    """A 0755 directory for the programs tests run (and their marker files)."""
    path = make_public_tmpdir("balsam-l1-scripts-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# A job that sleeps (recording its pids) the first time it runs and succeeds the second time.
SLEEP_ONCE = """#!/bin/bash
if [ -e ran_once ]; then echo second run; exit 0; fi
touch ran_once
sleep 300 &
echo $$ $! > pids
wait
"""


def to_states(evs):
    return [e[2] for e in evs]


def test_jobs_run_through_processing_to_job_finished_and_the_launcher_exits_idle(db, cursor,
                                                                                  scripts):
    add_app(cursor, "hello", "/bin/echo hello")
    ids = add_jobs(cursor, [{"name": f"h{i}", "application": "hello", "args": f"arg{i}"}
                            for i in range(3)])
    with settings(db, local_nodes=2, launcher=QUICK), launchers() as start:
        launcher = start(*MPI)
        assert launcher.wait(60) == 0, launcher.output()
        out, err = launcher.output()
    assert out.startswith("Balsam launcher: mpi mode, 2 node(s) (local), session ") and err == ""
    assert set(states(cursor).values()) == {"JOB_FINISHED"}
    for i, job_id in enumerate(ids):
        evs = events(cursor, job_id)
        assert to_states(evs) == ["PREPROCESSED", "RUNNING", "RUN_DONE", "JOB_FINISHED"]
        assert evs[3][0] == evs[2][0]  # finished in the update recording its end, no pass
        with open(os.path.join(workdir(db, cursor, job_id), f"h{i}.out")) as fh:
            assert fh.read() == f"hello arg{i}\n"
    cursor.execute(f"SELECT ended_at IS NOT NULL, end_reason FROM {schema.SESSION_TABLE} "
                   "WHERE job_mode <> 'processing'")
    assert cursor.fetchall() == [(True, FINISHED_REASON)]  # its work done: no idling
    cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE session_id IS NOT NULL")
    assert cursor.fetchone()[0] == 0


MPI_PROGRAM = """
import sys
from mpi4py import MPI
size, rank = MPI.COMM_WORLD.Get_size(), MPI.COMM_WORLD.Get_rank()
with open(f"rank{rank}", "w") as out:
    out.write(f"rank {rank} of {size}")
sys.exit(0 if size == 2 else 1)
"""


def test_a_two_rank_mpi4py_program_gets_two_ranks_on_two_nodes_and_on_one(db, cursor, scripts):
    program = write_script(scripts, "ranks.py", MPI_PROGRAM)
    add_app(cursor, "ranks", f"{sys.executable} {program}")
    ids = add_jobs(cursor, [{"name": "two_nodes", "application": "ranks", "num_nodes": 2},
                            {"name": "two_per_node", "application": "ranks",
                             "ranks_per_node": 2}])
    with settings(db, local_nodes=2, launcher=QUICK), launchers() as start:
        assert start(*MPI).wait(90) == 0
    assert states(cursor) == {"two_nodes": "JOB_FINISHED", "two_per_node": "JOB_FINISHED"}
    for job_id in ids:
        for rank in (0, 1):
            with open(os.path.join(workdir(db, cursor, job_id), f"rank{rank}")) as fh:
                assert fh.read() == f"rank {rank} of 2"


def test_a_failing_task_is_run_error_with_its_output_tail_then_failed(db, cursor, scripts):
    failing = write_script(scripts, "fail.sh", "#!/bin/bash\nfor i in $(seq 1 20); do "
                                               "echo line$i; done\nexit 3\n")
    add_app(cursor, "fail", failing)
    (job_id,) = add_jobs(cursor, [{"name": "bad", "application": "fail"}])
    with settings(db, launcher=QUICK), launchers() as start:
        assert start(*MPI).wait(60) == 0
    evs = events(cursor, job_id)
    assert to_states(evs) == ["PREPROCESSED", "RUNNING", "RUN_ERROR", "FAILED"]
    tail = "\n".join(f"line{i}" for i in range(5, 21))  # the last 16 lines
    assert evs[2][3] == f"exit code 3:\n{tail}"


def test_largest_jobs_go_first_jobs_that_do_not_fit_wait(db, cursor, scripts):
    add_app(cursor, "nap", "/bin/sleep")
    ids = add_jobs(cursor, [{"name": "small1", "application": "nap", "args": "0.3"},
                            {"name": "big", "application": "nap", "args": "1", "num_nodes": 2},
                            {"name": "small2", "application": "nap", "args": "0.3"},
                            {"name": "small3", "application": "nap", "args": "0.3"},
                            {"name": "huge", "application": "nap", "num_nodes": 3}])
    with settings(db, local_nodes=2, launcher=QUICK), launchers() as start:
        assert start(*MPI).wait(60) == 0
    got = states(cursor)
    assert got.pop("huge") == "PREPROCESSED"  # 3 nodes never fit on 2: never claimed
    assert set(got.values()) == {"JOB_FINISHED"}
    times = {}
    for job_id in ids[:4]:
        evs = {e[2]: e[0] for e in events(cursor, job_id)}
        times[job_row(cursor, job_id)["name"]] = (evs["RUNNING"], evs["RUN_DONE"])
    big_start, big_end = times.pop("big")
    assert all(start >= big_end for start, _ in times.values()), (big_start, big_end, times)


def test_the_cap_on_concurrent_runs_is_honoured(db, cursor):
    add_app(cursor, "nap", "/bin/sleep")
    ids = add_jobs(cursor, [{"name": f"n{i}", "application": "nap", "args": "0.3"}
                            for i in range(3)])
    with settings(db, local_nodes=2, launcher=dict(QUICK, max_concurrent_runs=1)), \
            launchers() as start:
        assert start(*MPI).wait(60) == 0
    spans = sorted(({e[2]: e[0] for e in events(cursor, j)}["RUNNING"],
                    {e[2]: e[0] for e in events(cursor, j)}["RUN_DONE"]) for j in ids)
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:]))


ENV_DUMP = """
import json, os
with open("env.json", "w") as fh:
    json.dump(dict(os.environ), fh)
"""


def test_tasks_get_balsam_variables_job_variables_envscript_and_a_clean_environment(
        db, cursor, scripts):
    dump = write_script(scripts, "dump.py", ENV_DUMP)
    envscript = write_script(scripts, "env.sh", "export FROM_ENVSCRIPT=sourced\n"
                                                "export JOB_VAR_SEEN_BY_ENVSCRIPT=${ONE:-unset}\n")
    add_app(cursor, "dump", f"{sys.executable} {dump}", envscript=envscript)
    parent = add_jobs(cursor, [{"name": "parent", "application": "dump",
                                "state": "JOB_FINISHED"}])[0]
    (job_id,) = add_jobs(cursor, [{"name": "env", "application": "dump", "threads_per_rank": 2,
                                   "environ_vars": "ONE=1:TWO=a=b"}])
    cursor.execute(f"INSERT INTO {schema.DEP_TABLE} (parent_id, child_id) VALUES (%s, %s)",
                   [parent, job_id])
    original_path = os.environ["PATH"]
    env = {"PATH": "/opt/balsam-job-script/bin:" + original_path,
           "BALSAM_ORIGINAL_PATH": original_path, "PMI_LEAKED": "from-launcher",
           "HYDRA_LEAKED": "from-launcher"}
    with settings(db, launcher=QUICK), launchers() as start:
        assert start(*MPI, env=env).wait(60) == 0
    assert states(cursor)["env"] == "JOB_FINISHED"
    with open(os.path.join(workdir(db, cursor, job_id), "env.json")) as fh:
        task_env = json.load(fh)
    assert task_env["BALSAM_JOB_ID"] == job_id
    assert json.loads(task_env["BALSAM_PARENT_IDS"]) == [parent]
    assert task_env["BALSAM_DB_PATH"] == db
    assert task_env["BALSAM_LAUNCHER_NODES"] == "1"
    assert task_env["BALSAM_JOB_MODE"] == "mpi"
    assert task_env["BALSAM_JOB_ATTEMPT"] == "1"
    assert task_env["OMP_NUM_THREADS"] == "2"
    assert (task_env["ONE"], task_env["TWO"]) == ("1", "a=b")
    assert task_env["FROM_ENVSCRIPT"] == "sourced"
    assert task_env["JOB_VAR_SEEN_BY_ENVSCRIPT"] == "1"  # the envscript runs in the task's env
    assert task_env["PATH"] == original_path
    assert "BALSAM_ORIGINAL_PATH" not in task_env
    assert "PMI_LEAKED" not in task_env and "HYDRA_LEAKED" not in task_env
    # The task is itself rank 0 of its own MPI job: Hydra's own PMI variables describe that.
    assert task_env.get("PMI_RANK") == "0" and task_env.get("PMI_SIZE") == "1"


def test_killing_a_running_job_stops_its_whole_process_tree(
        db, cursor, scripts):
    sleeper = write_script(scripts, "sleep_once.sh", SLEEP_ONCE)
    add_app(cursor, "sleeper", sleeper)
    (job_id,) = add_jobs(cursor, [{"name": "victim", "application": "sleeper"}])
    pids_file = os.path.join(workdir(db, cursor, job_id), "pids")
    with settings(db, launcher=QUICK), launchers() as start:
        launcher = start(*MPI)
        wait_for(lambda: os.path.exists(pids_file) and open(pids_file).read().strip(), 30,
                 "the task to start")
        wrapper, child = (int(p) for p in open(pids_file).read().split())
        wrapper_started = start_time(wrapper)
        try:
            killed_at = time.monotonic()
            proc = run_balsam("killjob", "--id", job_id, "--yes")
            assert proc.returncode == 0, proc.stderr
            # A kill check every 0.5 s and a 1-s grace: ~1.5 s plus `balsam killjob`'s own
            # start on a quiet machine (printed); the bound is for a loaded CI machine.
            wait_for(lambda: process_gone(wrapper) and process_gone(child), 60,
                     "the task's processes to die")
            print(f"killed job's processes gone {time.monotonic() - killed_at:.1f} s after "
                  "balsam killjob started")
        finally:
            kill_group_of(wrapper, wrapper_started)
        assert launcher.wait(120) == 0
    assert [e[2] for e in events(cursor, job_id)][-1] == "USER_KILLED"
    assert job_row(cursor, job_id)["state"] == "USER_KILLED"
    assert job_row(cursor, job_id)["session_id"] is None


def test_walltime_skips_jobs_too_long_and_times_out_running_ones_for_a_retry(db, cursor,
                                                                             scripts):
    sleeper = write_script(scripts, "sleep_once.sh", SLEEP_ONCE)
    add_app(cursor, "sleeper", sleeper)
    add_app(cursor, "hello", "/bin/echo hi")
    short, long_ = add_jobs(cursor, [
        {"name": "fits", "application": "sleeper", "wall_time_minutes": 1},
        {"name": "too_long", "application": "hello", "wall_time_minutes": 2}])
    quick = dict(QUICK, walltime_margin_seconds=3)
    with settings(db, launcher=quick), launchers() as start:
        # Tasks stop at 69 s; the 1-minute job fits if claimed within 9 s of the start (1.08
        # minutes left 1.8 s: too little for a start-up under load).
        first = start(*MPI, "--time-limit-minutes", "1.2")
        began = time.time()
        assert first.wait(120) == 0
        stopped = events(cursor, short)
        assert to_states(stopped)[:3] == ["PREPROCESSED", "RUNNING", "RUN_TIMEOUT"]
        assert stopped[2][3] == "stopped by the launcher: the launcher's time limit was reached"
        assert stopped[2][0].timestamp() < began + 72
        assert to_states(events(cursor, long_)) == ["PREPROCESSED"]  # never started
        assert start(*MPI).wait(60) == 0
    assert to_states(events(cursor, short))[2:] == ["RUN_TIMEOUT", "RESTART_READY", "RUNNING",
                                                    "RUN_DONE", "JOB_FINISHED"]
    assert states(cursor) == {"fits": "JOB_FINISHED", "too_long": "JOB_FINISHED"}


def closed_session_holds(cursor) -> int:
    cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} j JOIN {schema.SESSION_TABLE} s "
                   "ON s.id = j.session_id WHERE s.ended_at IS NOT NULL")
    return cursor.fetchone()[0]


def test_sigterm_stops_tasks_as_run_timeout_releases_claims_and_a_second_launcher_finishes(
        db, cursor, scripts):
    sleeper = write_script(scripts, "sleep_once.sh", SLEEP_ONCE)
    add_app(cursor, "sleeper", sleeper)
    ids = add_jobs(cursor, [{"name": f"s{i}", "application": "sleeper"} for i in range(2)])
    pid_files = [os.path.join(workdir(db, cursor, j), "pids") for j in ids]
    with settings(db, local_nodes=2, launcher=QUICK), launchers() as start:
        first = start(*MPI)
        wait_for(lambda: all(os.path.exists(p) and open(p).read().strip() for p in pid_files),
                 30, "both tasks to start")
        pids = [int(p) for f in pid_files for p in open(f).read().split()]
        sent = time.monotonic()
        first.signal(signal.SIGTERM)
        assert first.wait(120) == 0
        # tasks stopped after a 1-s grace, then the launcher exits: a few seconds when quiet;
        # the bound catches a stop that waits for a lease or an idle timeout
        assert time.monotonic() - sent < 60
        assert all(process_gone(p) for p in pids)
        for job_id in ids:
            stopped = events(cursor, job_id)[-1]
            assert stopped[2:] == ("RUN_TIMEOUT",
                                   "stopped by the launcher: the launcher received SIGTERM")
        assert closed_session_holds(cursor) == 0
        assert start(*MPI).wait(60) == 0
    assert set(states(cursor).values()) == {"JOB_FINISHED"}


def test_a_killed_launchers_jobs_are_swept_after_the_lease_and_retried(db, cursor, scripts):
    sleeper = write_script(scripts, "sleep_once.sh", SLEEP_ONCE)
    add_app(cursor, "sleeper", sleeper)
    (job_id,) = add_jobs(cursor, [{"name": "orphan", "application": "sleeper"}])
    pid_file = os.path.join(workdir(db, cursor, job_id), "pids")
    with settings(db, launcher=dict(QUICK, lease_seconds=3)), launchers() as start:
        first = start(*MPI)
        wait_for(lambda: os.path.exists(pid_file) and open(pid_file).read().strip(), 30,
                 "the task to start")
        cursor.execute(f"SELECT id, hostname FROM {schema.SESSION_TABLE} "
                       "WHERE job_mode <> 'processing'")
        ((lost_session, host),) = cursor.fetchall()
        task_pid = int(open(pid_file).read().split()[0])
        first.signal(signal.SIGKILL)
        first.wait(120)
        # The task dies with its launcher (the watchdog), long before the lease could expire.
        wait_for(lambda: process_gone(task_pid), 30, "the orphaned task to be stopped")
        assert job_row(cursor, job_id)["state"] == "RUNNING"
        # Persistent: a launcher has nothing to do until the sweep, and would exit idle.
        second = start(*MPI, "--persistent")
        # (the lease is raised to its floor: balsam.launcher.fence.effective_lease)
        wait_for(lambda: job_row(cursor, job_id)["state"] == "JOB_FINISHED", 180,
                 "the sweep, the retry and the second run")
        second.signal(signal.SIGTERM)
        assert second.wait(120) == 0
    evs = events(cursor, job_id)
    assert to_states(evs) == ["PREPROCESSED", "RUNNING", "RUN_TIMEOUT", "RESTART_READY",
                              "RUNNING", "RUN_DONE", "JOB_FINISHED"]
    assert (f"launcher session {lost_session} ({host}:{first.pid}) lost its lease: no heartbeat "
            "since ") in evs[2][3]


APPEND = """#!/bin/sh
echo "$BALSAM_JOB_ID" >> "$MARKERS/$BALSAM_JOB_ID"
"""


@pytest.mark.parametrize("count", [2, 4])
def test_concurrent_launchers_run_every_job_exactly_once(db, cursor, scripts, count):
    markers = os.path.join(scripts, "markers")
    os.mkdir(markers)
    append = write_script(scripts, "append.sh", APPEND)
    add_app(cursor, "append", append)
    ids = add_jobs(cursor, [{"name": f"m{i}", "application": "append",
                             "environ_vars": f"MARKERS={markers}"} for i in range(1000)])
    with settings(db, local_nodes=2, launcher=QUICK), launchers() as start:
        running = [start(*MPI) for _ in range(count)]
        assert [launcher.wait(240) for launcher in running] == [0] * count
    cursor.execute(f"SELECT job_id, state, session_id FROM {schema.JOB_TABLE} "
                   "WHERE state <> 'JOB_FINISHED'")
    unfinished = [(row, events(cursor, row[0])) for row in cursor.fetchall()]
    assert unfinished == []
    lines = {}
    for job_id in ids:
        with open(os.path.join(markers, job_id)) as fh:
            lines[job_id] = fh.read().splitlines()
    assert all(got == [job_id] for job_id, got in lines.items())
    cursor.execute(f"SELECT count(DISTINCT message) FROM {schema.EVENT_TABLE} "
                   "WHERE to_state = 'RUNNING'")
    assert cursor.fetchone()[0] >= 2  # the work was shared (messages name the session)


def test_a_persistent_launcher_stays_and_starts_a_new_job_on_notification(db, cursor):
    add_app(cursor, "hello", "/bin/echo hi")
    # No periodic look for work during the test: only the notification can wake the launcher.
    slow_poll = dict(QUICK, idle_wait_seconds=30, heartbeat_seconds=30)
    with settings(db, launcher=slow_poll), launchers() as start:
        launcher = start(*MPI, "--persistent")
        wait_for(lambda: launcher.output()[0], 30, "the launcher's start line")
        time.sleep(2.5)  # longer than idle_exit_seconds: a non-persistent one would be gone
        assert launcher.proc.poll() is None
        (job_id,) = add_jobs(cursor, [{"name": "late", "application": "hello"}])
        wait_for(lambda: states(cursor)["late"] == "JOB_FINISHED", 60, "the job to finish")
        evs = {e[2]: e[0] for e in events(cursor, job_id)}
        created = job_row(cursor, job_id)["created_at"]
        # Started by the notification, not by the next look 30 s on (however loaded the machine)
        assert (evs["RUNNING"] - created).total_seconds() < slow_poll["idle_wait_seconds"] / 3
        launcher.signal(signal.SIGTERM)
        assert launcher.wait(120) == 0


def test_a_database_restart_on_a_new_port_during_a_run_loses_no_state_change(restart_db,
                                                                               scripts):
    import socket

    from balsam.db import cluster, serverinfo
    from balsam.db.connect import connect

    markers = os.path.join(scripts, "markers")
    os.mkdir(markers)
    append = write_script(scripts, "append.sh", SLOW_APPEND)
    conn = connect(restart_db, autocommit=True)
    cur = conn.cursor()
    add_app(cur, "append", append)
    ids = add_jobs(cur, [{"name": f"r{i}", "application": "append",
                          "environ_vars": f"MARKERS={markers}"} for i in range(8)])
    with settings(restart_db, local_nodes=2, launcher=QUICK), launchers() as start:
        launcher = start(*MPI, env={"BALSAM_DB_PATH": restart_db})
        wait_for(lambda: "RUNNING" in states(cur).values(), 30, "a task to run")
        conn.close()
        old_port = serverinfo.read(restart_db)["port"]
        cluster.stop(restart_db)
        with socket.socket() as hold:  # the old port stays taken: the server moves
            hold.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            hold.bind(("", old_port))  # bound, not listening: connections are refused
            time.sleep(1.5)  # tasks end while the server is down
            cluster.start(restart_db)
        assert serverinfo.read(restart_db)["port"] != old_port
        assert launcher.wait(90) == 0, launcher.output()
        log_path = launcher.output()[0].split(", log ")[1].strip()
        with open(log_path) as fh:
            assert "reconnected to the database" in fh.read()
    conn = connect(restart_db, autocommit=True)
    cur = conn.cursor()
    try:
        assert set(states(cur).values()) == {"JOB_FINISHED"}
        for job_id in ids:
            assert to_states(events(cur, job_id)) == ["PREPROCESSED", "RUNNING", "RUN_DONE",
                                                      "JOB_FINISHED"]
            with open(os.path.join(markers, job_id)) as fh:
                assert fh.read().splitlines() == [job_id]
    finally:
        conn.close()


TERM_ONCE = """#!/bin/sh
# First run: terminated by SIGTERM from outside the launcher (as when a batch job ends);
# the retry in the same working directory succeeds.
if [ -e termed ]; then echo second; else touch termed; kill -TERM $$; fi
"""


def test_a_task_terminated_from_outside_is_timed_out_and_retried_not_failed(db, cursor,
                                                                            scripts):
    add_app(cursor, "termonce", write_script(scripts, "term_once.sh", TERM_ONCE))
    (job_id,) = add_jobs(cursor, [{"name": "t", "application": "termonce"}])
    # `direct`: the task is the program itself (MPICH's mpiexec reports a rank's SIGTERM as
    # exit code 15, which cannot be told from an application's own code).
    with settings(db, mpi="direct", launcher=QUICK), launchers() as start:
        assert start(*MPI).wait(60) == 0
    evs = events(cursor, job_id)
    assert to_states(evs) == ["PREPROCESSED", "RUNNING", "RUN_TIMEOUT", "RESTART_READY",
                              "RUNNING", "RUN_DONE", "JOB_FINISHED"]
    assert evs[2][3] == ("terminated by SIGTERM from outside the launcher (exit code -15): "
                         "the batch job ending?")
