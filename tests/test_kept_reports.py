"""Reports a launcher's settle already used, read again by the lease sweep (the launcher died
before removing them), and a mark left by a launcher of before session 20 (one ``since``, its
reports beside it): each start is recorded once, and none is lost (balsam.core.serial_reports,
balsam.launcher.kept_claims). Real PostgreSQL, real report files."""
from __future__ import annotations

import json
import os
import shutil

from test_serial_reports import app, dead_session, history, make_jobs, report  # noqa: F401

from balsam.core import leases, lifecycle, serial_reports
from balsam.core.states import State
from balsam.launcher.kept_claims import settle_in


def test_a_start_the_settle_recorded_is_not_recorded_again_by_the_sweep(
        app, db, cursor):  # noqa: F811
    """The launcher settled the kept claims (the start recorded late, the job released,
    retried and claimed again by the session's next ensemble), then died before removing the
    reports: the sweep read them and recorded the same start again (it counted only RUNNING
    events with the master's message, not the late one's)."""
    (job_id,) = make_jobs(1)
    sid, directory = dead_session(cursor, db, 6161)
    serial_reports.mark_session(directory, sid, database=db)
    report(directory, 0, 1, "stopped", [job_id])
    lost, released = settle_in(cursor, sid, {job_id: 1}, {}, 0, [job_id])
    assert lost == [job_id]
    lifecycle.transition(cursor, [job_id], State.RESTART_READY, "retry")
    assert leases.claim(cursor, sid, 10, serial=True, max_nodes=1)  # the next ensemble's
    swept = leases.sweep_sessions(cursor, db)
    assert [(s.session, s.lost_starts) for s in swept] == [(sid, 0)]
    states = [s for s, _ in history(cursor, job_id)]
    assert states.count("RUNNING") == 1, states


def old_mark(parent: str, session: int, since: int) -> None:
    """What a launcher of before session 20 wrote: the mark in its host-and-pid directory."""
    os.makedirs(parent, exist_ok=True)
    with open(os.path.join(parent, serial_reports.MARK_NAME), "w") as fh:
        json.dump({"session": session, "since": since}, fh)


def test_a_mark_of_an_older_launcher_is_read_and_its_directory_removed(
        app, db, cursor):  # noqa: F811
    """An older launcher (one ``since``, reports in ``serial_<host>_<pid>.watch/<ensemble>``)
    died; a launcher of this version sweeps it: its reported start is recorded, its files
    removed, and a newer launcher's directory of that host and pid is left alone."""
    lost, other = make_jobs(2)
    sid, _ = dead_session(cursor, db, 6262)
    parent = serial_reports.watch_dir(db, "nodeA", 6262)
    old_mark(parent, sid, 0)
    report(parent, 0, 1, "stopped", [lost])
    newer = serial_reports.launcher_dir(db, "nodeA", 6262, "b-newer")
    serial_reports.mark_session(newer, sid + 1000, database=db)
    report(newer, 0, 1, "running", [other])
    swept = leases.sweep_sessions(cursor, db)
    assert [(s.session, s.lost_starts) for s in swept] == [(sid, 1)]
    leases.after_sweep(db, swept)
    assert [s for s, _ in history(cursor, lost)][-2:] == ["RUNNING", "RUN_TIMEOUT"]
    assert not os.path.exists(os.path.join(parent, serial_reports.MARK_NAME))
    assert not os.path.exists(os.path.join(parent, "0"))
    assert os.path.exists(os.path.join(newer, "0", "rank1.json"))
    shutil.rmtree(parent)


INSTANCE = ("from balsam.core import serial_reports as s; "
            "print(s.instance() == s.instance(), s.instance())")


def test_two_launchers_without_proc_get_different_instances():
    """Two processes, both pid 1 of a PID namespace of their own, with no ``/proc`` (an empty
    file system over it): before, both were ``noboot-nons-nostart`` -- the later launcher's
    directory was the dead one's, and its first launch removed the dead one's reports."""
    import subprocess
    import sys

    import pytest

    script = 'mount -t tmpfs none /proc && exec "$0" -c "$1"'
    names = []
    for _ in range(2):
        argv = ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork",
                "sh", "-c", script, sys.executable, INSTANCE]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        except FileNotFoundError:
            pytest.skip("no unshare(1) here")
        if done.returncode != 0 and "Operation not permitted" in done.stderr:
            pytest.skip(f"user namespaces are not allowed here: {done.stderr.strip()}")
        assert done.returncode == 0, done.stderr
        same, name = done.stdout.split()
        assert same == "True"  # (one name for the life of the process)
        names.append(name)
    assert names[0] != names[1], names


def test_reads_that_hang_cost_one_sweep_the_bound_once_not_once_per_session(
        app, db, cursor, monkeypatch):  # noqa: F811
    """A hung mount under three dead sessions' reports (each one's read blocks until the test
    ends: this machine has no such mount): the sweep's reads were bounded per session (and
    the MPI-mode report's read again), 15 s and more in the sweeper's loop, which renews its
    own lease there. Now they share one bound: the sweep ends within about MAX_SECONDS, the
    sessions unread named, their reports left in place."""
    import threading
    import time

    from test_sweep_owners import expire

    from balsam.db.connect import connect

    directories = []
    for pid in (6363, 6464, 6565):
        (job_id,) = make_jobs(1)
        sid = leases.open_session(cursor, hostname="nodeA", pid=pid, job_mode="serial",
                                  num_nodes=1, lease_seconds=1)
        leases.claim(cursor, sid, 10, serial=True, max_nodes=1)
        shutil.rmtree(serial_reports.watch_dir(db, "nodeA", pid), ignore_errors=True)
        directory = serial_reports.launcher_dir(db, "nodeA", pid, "dead")
        serial_reports.mark_session(directory, sid, database=db)
        report(directory, 0, 1, "stopped", [job_id])
        directories.append(directory)
        expire(cursor, sid)
    answer = threading.Event()
    real = serial_reports.read_report

    def hanging(path, *args):
        if path.endswith("rank1.json") or path.endswith(".launched.json"):
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
            out.append((swept, leases.after_sweep(db, swept)))
        finally:
            sweeper.close()

    began = time.monotonic()
    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    try:
        thread.join(6 * serial_reports.MAX_SECONDS + 10)
        took = time.monotonic() - began
        assert not thread.is_alive(), "the sweep hung on the report reads"
    finally:
        answer.set()
    ((swept, lines),) = out
    assert len(swept) == 3 and all(s.unread for s in swept), swept
    assert took < 2 * serial_reports.MAX_SECONDS, took  # (before: 15 s and more)
    assert sum("not read within" in line for line in lines) == 3, lines
    for directory in directories:
        assert os.path.exists(os.path.join(directory, "0", "rank1.json"))
        shutil.rmtree(os.path.dirname(directory))


def test_a_mark_whose_read_back_fails_keeps_the_earlier_ensembles_since(
        app, db, cursor, tmp_path):  # noqa: F811
    """The launcher marks its second ensemble while its mark cannot be read back (here: not
    JSON; a transient error of a shared file system): the first ensemble's ``since`` was
    dropped, and the sweep then ignored that ensemble's reports (its kept start lost)."""
    directory = str(tmp_path / "launcher")
    serial_reports.mark_session(directory, 7, database=db, since=0, generation=0)
    with open(os.path.join(directory, serial_reports.MARK_NAME), "w") as fh:
        fh.write("{")  # not readable as a mark
    serial_reports.mark_session(directory, 7, database=db, since=42, generation=1)
    with open(os.path.join(directory, serial_reports.MARK_NAME)) as fh:
        assert json.load(fh)["since"] == {"0": 0, "1": 42}
