"""Faults while a serial ensemble starts: its ranks are up (``MPI_Init`` done, MPICH's
``/dev/shm`` file made) but wait for the session id the launcher has not opened yet.

Real launcher, real ``mpiexec`` (the mpich wheel), real PostgreSQL. The launcher is held before
its session by a lock on the session table, so the wait lasts as long as the test needs."""
from __future__ import annotations

import os
import signal
import socket

import pytest
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, job_row, settings, wait_for
from once_support import cmdline, descendants, ensemble_pid, kill, rank_pid, shm_segments, watchdog_of

from balsam.core import schema
from balsam.db import serverinfo
from balsam.db.connect import connect

pytestmark = pytest.mark.slow

SERIAL = ("--consume-all", "--job-mode", "serial")


def test_a_rank_killed_before_its_session_leaves_no_shared_memory_file(db, cursor):
    # The launcher and its whole ensemble are SIGKILLed while the worker ranks wait for the
    # session id: nothing of the launcher is left to remove their MPICH file (nor could it on
    # other nodes: it sees only its own node's ranks, and only under Hydra's fork bootstrap).
    # Each worker's watchdog, started before that wait with the file's name, removes it.
    # Before, the watchdog started only once the session id came: the file stayed.
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    add_app(cursor, "true", "/bin/true")
    (job_id,) = add_jobs(cursor, [{"name": "t", "application": "true", "state": "PREPROCESSED"}])
    lock = connect(db, autocommit=False)
    try:
        with lock.cursor() as held:  # the launcher's session waits behind this
            held.execute(f"LOCK TABLE {schema.SESSION_TABLE} IN ACCESS EXCLUSIVE MODE")
        tunables = dict(QUICK, reconnect_max_seconds=600)
        with settings(db, local_nodes=2, launcher=tunables), launchers() as start:
            launcher = start(*SERIAL)
            ranks = [wait_for(lambda r=r: rank_pid(launcher.pid, r), 60, f"worker rank {r}")
                     for r in (1, 2)]
            dogs = [wait_for(lambda r=r: watchdog_of(r), 60, f"rank {r}'s watchdog before "
                             "the session") for r in ranks]
            # (the watchdogs start before MPI_Init: the ranks map their file a moment later)
            files = wait_for(lambda: sorted({f for r in ranks for f in shm_segments(r)}), 60,
                             "the ranks to map their MPICH shared-memory file")
            assert launcher.session_id() is None  # still waiting for the session table
            tree = [launcher.pid] + descendants(launcher.pid)
            doomed = [p for p in tree if "balsam.launcher.watchdog" not in cmdline(p)]
            for sig in (signal.SIGSTOP, signal.SIGKILL):  # none reacts to another's death
                for pid in doomed:
                    kill(pid, sig)
            launcher.wait(60)
        lock.rollback()
        wait_for(lambda: not any(os.path.exists(f) for f in files), 60,
                 f"the watchdogs to remove {files}")
        wait_for(lambda: not any(os.path.exists(f"/proc/{d}") and "watchdog" in cmdline(d)
                                 for d in dogs), 60, "the watchdogs to exit")
    finally:
        lock.rollback()
        lock.close()
    assert job_row(cursor, job_id)["session_id"] is None  # nothing was claimed
    cursor.execute(f"SELECT count(*) FROM {schema.SESSION_TABLE}")
    assert cursor.fetchone()[0] == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_ensemble_abandoned_for_want_of_a_session_leaves_no_reports(db, cursor):
    # The database does not answer: the launcher gives up on its session and its early
    # ensemble exits unclaimed. Its workers' watchdogs (started before the session) reported;
    # the reports go once they are written, and nothing else is left in the log directory.
    info = serverinfo.read(db)
    serverinfo.update(db, port=free_port())  # nothing listens there
    try:
        with settings(db, local_nodes=2, launcher=dict(QUICK, reconnect_max_seconds=1)), \
                launchers() as start:
            launcher = start(*SERIAL)
            status = launcher.wait(120)
            err = launcher.output()[1]
    finally:
        serverinfo.update(db, port=info["port"])
    assert status != 0 and len(err.strip().splitlines()) == 1, err
    # (a launcher killed outright leaves its directory: an earlier test's may be there)
    assert not os.path.exists(os.path.join(db, "log", f"serial_{socket.gethostname()}_"
                                                      f"{launcher.pid}.watch"))
    assert "(before the session opens)" in launcher.log()
    cursor.execute(f"SELECT count(*) FROM {schema.SESSION_TABLE}")
    assert cursor.fetchone()[0] == 0


def test_a_stop_in_the_ensembles_start_up_leaves_no_shared_memory_file(db, cursor):
    # A launcher stopped while its ensemble starts forwards the stop, and ranks that had made
    # their MPICH file before the launcher's first look at them (0.5 s on, then 1.5 s, ...) and
    # before their watchdogs were given it (a worker rank's imports after MPI_Init) died by it:
    # in a suite run, test_warm_start.py's SIGTERM test left the file. The launcher now looks
    # once more before it forwards a stop. Here the ranks (frozen once the file exists) and
    # their watchdogs are killed after the launcher forwarded its stop: only it can remove the
    # file, whenever its looks were due.
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    add_app(cursor, "nap", "/bin/sleep 60")
    add_jobs(cursor, [{"name": "n", "application": "nap", "state": "PREPROCESSED"}])
    with settings(db, local_nodes=1, launcher=QUICK), launchers() as start:
        launcher = start(*SERIAL)
        rank = wait_for(lambda: rank_pid(launcher.pid, 1), 60, "worker rank 1")
        files = wait_for(lambda: shm_segments(rank), 60, "its MPICH shared-memory file")
        # The launcher waits on its ensemble (a signal before its handlers would just end it).
        wait_for(lambda: "lease fence armed" in launcher.log(), 60, "the launcher's wait")
        ensemble = wait_for(lambda: ensemble_pid(launcher.pid), 60, "the ensemble's mpiexec")
        frozen = descendants(ensemble)  # Hydra's proxy, the ranks, their watchdogs
        for pid in frozen:
            kill(pid, signal.SIGSTOP)
        try:
            launcher.signal(signal.SIGTERM)
            wait_for(lambda: "forwarding the stop" in launcher.log(), 60,
                     "the launcher to forward its stop")
        finally:
            for pid in frozen:
                kill(pid, signal.SIGKILL)
        launcher.wait(120)
        wait_for(lambda: not any(os.path.exists(f) for f in files), 60,
                 f"the launcher to remove {files}")
