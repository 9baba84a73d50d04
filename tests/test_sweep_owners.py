"""Whose reports a lease sweep reads and removes (balsam.core.serial_reports), and how long it
may wait on them: launchers of one host and pid (pid 1 in every container: real processes in
PID namespaces of their own), databases sharing one ``log/`` directory, a read that hangs."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from test_serial_reports import app, history, make_jobs, report  # noqa: F401 - a fixture

from balsam.core import leases, serial_reports
from balsam.db.connect import connect

CHILD = """
import os, shutil, sys, json
from balsam.core import serial_reports
from balsam.launcher.serial_mode import watch_dir
db, session, state, job = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
mine = watch_dir(db)
shutil.rmtree(mine, ignore_errors=True)  # what a launcher's first launch does (serial_mode.launch)
serial_reports.mark_session(mine, session, database=db)
os.makedirs(os.path.join(mine, "0"))
with open(os.path.join(mine, "0", "rank1.json"), "w") as fh:
    json.dump({"state": state, "started": [job]}, fh)
print(os.getpid(), mine)
"""
"""A launcher's part, as process 1 of a PID namespace: its directory, marked, one report."""


def as_pid_one(db: str, session: int, state: str, job: str) -> tuple[int, str]:
    """Run :data:`CHILD` as pid 1 of a new PID namespace (``unshare``, no privileges needed
    where user namespaces are allowed); (its pid, its directory)."""
    argv = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc",
            sys.executable, "-c", CHILD, db, str(session), state, job]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("no unshare(1) here")
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip(f"user and PID namespaces are not allowed here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    pid, directory = done.stdout.split()
    return int(pid), directory


def expire(cursor, sid: int) -> None:
    cursor.execute("UPDATE core_launchersession SET heartbeat = now() - interval '1 hour' "
                   "WHERE id = %s", [sid])
    cursor.execute("SELECT pg_sleep(greatest(0, 1.1 - extract(epoch FROM now() - "
                   "pg_postmaster_start_time())))")  # (sweeps wait a lease after a start)


def test_launchers_of_one_host_and_pid_keep_their_own_reports(app, db, cursor):  # noqa: F811
    """A dead launcher and a later one, both pid 1 on this host: the later one's first launch
    leaves the dead one's reports alone, the sweep of the dead one's session records its start
    from its own reports and removes only its directory."""
    make_jobs(2)
    host = socket.gethostname()
    shutil.rmtree(serial_reports.watch_dir(db, host, 1), ignore_errors=True)
    dead = leases.open_session(cursor, hostname=host, pid=1, job_mode="serial", num_nodes=1,
                               lease_seconds=1)
    (lost,) = [str(r["job_id"]) for r in leases.claim(cursor, dead, 1, serial=True,
                                                          max_nodes=1)]
    live = leases.open_session(cursor, hostname=host, pid=1, job_mode="serial", num_nodes=1,
                               lease_seconds=3600)
    (running,) = [str(r["job_id"]) for r in leases.claim(cursor, live, 1, serial=True,
                                                             max_nodes=1)]
    first = as_pid_one(db, dead, "stopped", lost)
    second = as_pid_one(db, live, "running", running)
    assert first[0] == second[0] == 1
    assert first[1] != second[1]  # (main: one directory for both, the first one's reports lost)
    expire(cursor, dead)
    swept = leases.sweep_sessions(cursor, db)
    assert [(s.session, s.lost_starts) for s in swept] == [(dead, 1)]
    leases.after_sweep(db, swept)
    assert [s for s, _ in history(cursor, lost)][-2:] == ["RUNNING", "RUN_TIMEOUT"]
    assert not os.path.exists(first[1])
    assert os.path.exists(os.path.join(second[1], "0", "rank1.json"))
    assert os.path.exists(os.path.join(second[1], serial_reports.MARK_NAME))
    shutil.rmtree(serial_reports.watch_dir(db, host, 1))


def test_a_sweep_leaves_another_databases_directory_of_that_session_alone(
        app, db, cursor, tmp_path):  # noqa: F811
    """Another database shares this one's ``log/`` (a symlink); its launcher of the same host
    and pid has a session of the same number, its directory listed first: the sweep reads and
    removes only the directory marked with this database."""
    (lost,) = make_jobs(1)
    parent = serial_reports.watch_dir(db, "nodeA", 7171)
    shutil.rmtree(parent, ignore_errors=True)
    sid = leases.open_session(cursor, hostname="nodeA", pid=7171, job_mode="serial",
                              num_nodes=1, lease_seconds=1)
    leases.claim(cursor, sid, 10, serial=True, max_nodes=1)
    other = tmp_path / "other-db"
    other.mkdir()
    os.symlink(os.path.join(db, "log"), other / "log")
    theirs = serial_reports.launcher_dir(str(other), "nodeA", 7171, "a-theirs")
    ours = serial_reports.launcher_dir(db, "nodeA", 7171, "b-ours")
    serial_reports.mark_session(theirs, sid, database=str(other))
    report(theirs, 0, 1, "running", ["00000000-0000-0000-0000-000000000001"])
    serial_reports.mark_session(ours, sid, database=db)
    report(ours, 0, 1, "stopped", [lost])
    expire(cursor, sid)
    swept = leases.sweep_sessions(cursor, db)
    assert [(s.session, s.lost_starts) for s in swept] == [(sid, 1)]
    leases.after_sweep(db, swept)
    assert [s for s, _ in history(cursor, lost)][-2:] == ["RUNNING", "RUN_TIMEOUT"]
    assert os.path.exists(os.path.join(theirs, "0", "rank1.json"))
    assert not os.path.exists(ours)
    shutil.rmtree(parent)


def test_a_report_read_that_hangs_is_cut_skipped_named_and_kept(app, db, cursor,  # noqa: F811
                                                                 monkeypatch):
    """A read on a hung NFS mount blocks in the kernel; here the read of one report blocks
    until the test ends (this machine has no such mount). The sweep goes on after
    MAX_SECONDS with the reports read, names the one skipped and removes nothing."""
    read, hung = make_jobs(2)
    parent = serial_reports.watch_dir(db, "nodeA", 7272)
    shutil.rmtree(parent, ignore_errors=True)
    sid = leases.open_session(cursor, hostname="nodeA", pid=7272, job_mode="serial",
                              num_nodes=2, lease_seconds=1)
    leases.claim(cursor, sid, 10, serial=True, max_nodes=1)
    directory = serial_reports.launcher_dir(db, "nodeA", 7272, "dead")
    serial_reports.mark_session(directory, sid, database=db)
    report(directory, 0, 1, "stopped", [read])
    report(directory, 0, 2, "stopped", [hung])
    expire(cursor, sid)
    answer = threading.Event()
    real = serial_reports.read_report

    def hanging(path, *args):
        if path.endswith("rank2.json"):
            answer.wait(120)
        return real(path, *args)

    monkeypatch.setattr(serial_reports, "read_report", hanging)
    out: list = []

    def sweep() -> None:
        sweeper = connect(db)
        try:
            with sweeper.cursor() as cur:
                swept = leases.sweep_sessions(cur, db)
            sweeper.commit()
            out.append(leases.after_sweep(db, swept))
        finally:
            sweeper.close()

    began = time.monotonic()
    sweeper = threading.Thread(target=sweep, daemon=True)
    sweeper.start()
    try:
        sweeper.join(serial_reports.MAX_SECONDS + 15)
        took = time.monotonic() - began
        assert not sweeper.is_alive(), "the sweep hung on the report read"
    finally:
        answer.set()
    assert took < serial_reports.MAX_SECONDS + 10
    assert [s for s, _ in history(cursor, read)][-2:] == ["RUNNING", "RUN_TIMEOUT"]
    assert "RUNNING" not in [s for s, _ in history(cursor, hung)]
    (lines,) = out
    assert any("rank2.json" in line and "not read within" in line for line in lines), lines
    assert os.path.exists(os.path.join(directory, "0", "rank2.json"))
    shutil.rmtree(parent)
