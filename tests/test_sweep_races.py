"""Races around the lease sweep of a serial-mode session (balsam.core.leases.sweep_sessions reads
the reports of the sessions it found expired, then locks those still expired) and around the
event id an ensemble restart counts its starts from. Real PostgreSQL, several connections."""
from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from balsam.core import leases, serial_reports
from balsam.core.states import State
from balsam.db.connect import connect
from balsam.launcher import ensemble_restart
from balsam.launcher.ensemble_watch import start_message


@pytest.fixture
def app(db):
    from balsam.core.models import ApplicationDefinition

    return ApplicationDefinition.objects.create(name="app", executable="true")


def make_jobs(n):
    from balsam.core.models import BalsamJob

    return [str(j.pk) for j in BalsamJob.objects.bulk_create(
        [BalsamJob(name=f"j{i}", workflow="wf", application="app", state="PREPROCESSED")
         for i in range(n)])]


def expired_session(cursor, db, pid):
    """A serial session holding every job, its lease long expired, its watch directory marked
    with one final report naming ``job``."""
    shutil.rmtree(serial_reports.watch_dir(db, "nodeA", pid), ignore_errors=True)
    sid = leases.open_session(cursor, hostname="nodeA", pid=pid, job_mode="serial",
                              num_nodes=1, lease_seconds=1)
    leases.claim(cursor, sid, 10, serial=True, max_nodes=1)
    cursor.execute("UPDATE core_launchersession SET heartbeat = now() - interval '1 hour' "
                   "WHERE id = %s", [sid])
    cursor.execute("SELECT pg_sleep(greatest(0, 1.1 - extract(epoch FROM now() - "
                   "pg_postmaster_start_time())))")  # (sweeps wait a lease after a start)
    return sid, serial_reports.launcher_dir(db, "nodeA", pid, "dead")


def report(directory, job_id):
    os.makedirs(os.path.join(directory, "0"), exist_ok=True)
    with open(os.path.join(directory, "0", "rank1.json"), "w") as fh:
        fh.write(f'{{"state": "stopped", "started": ["{job_id}"]}}')


def history(cursor, job_id):
    cursor.execute("SELECT to_state FROM core_jobevent WHERE job_id = %s ORDER BY id", [job_id])
    return [r[0] for r in cursor.fetchall()]


def waits_for_lock(cursor, backend, timeout=30.0):
    """Until server process ``backend`` waits for a lock (bounded)."""
    end = time.monotonic() + timeout
    while True:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [backend])
        if cursor.fetchone() == ("Lock",):
            return
        assert time.monotonic() < end, f"server process {backend} never waited for a lock"
        time.sleep(0.02)


def sweep_with(db, monkeypatch, between):
    """Sweep on a connection of its own, running ``between()`` after the reports were read and
    before the sessions are locked; (what it swept, its after_sweep lines)."""
    read = serial_reports.unrecorded_starts

    def reading(*args):
        found = read(*args)
        between()
        return found

    monkeypatch.setattr(serial_reports, "unrecorded_starts", reading)
    sweeper = connect(db)
    try:
        with sweeper.cursor() as cur:
            swept = leases.sweep_sessions(cur, db)
        sweeper.commit()
    finally:
        sweeper.close()
    return swept, leases.after_sweep(db, swept)


@pytest.mark.parametrize("committed", [True, False])
def test_a_session_renewed_after_the_sweep_found_it_is_left_alone(app, db, cursor, monkeypatch,
                                                                  committed):
    """Its launcher was only stalled: it renews between the sweep's find and its lock (the
    renewal committed, or still in flight: its row lock makes the sweep skip the session)."""
    (job_id,) = make_jobs(1)
    sid, directory = expired_session(cursor, db, 6060 + committed)
    serial_reports.mark_session(directory, sid, database=db)
    report(directory, job_id)
    renewal = connect(db)
    try:
        def renew():
            with renewal.cursor() as cur:
                assert leases.heartbeat(cur, sid)
            if committed:
                renewal.commit()

        swept, lines = sweep_with(db, monkeypatch, renew)
        renewal.commit()
    finally:
        renewal.close()
    assert swept == [] and lines == []
    cursor.execute("SELECT ended_at, (SELECT session_id FROM core_balsamjob WHERE job_id = %s) "
                   "FROM core_launchersession WHERE id = %s", [job_id, sid])
    assert cursor.fetchone() == (None, sid)
    assert history(cursor, job_id) == ["PREPROCESSED"]
    assert os.path.exists(os.path.join(directory, serial_reports.MARK_NAME))
    shutil.rmtree(directory)


def test_a_second_sweep_between_the_find_and_the_lock_records_each_start_once(
        app, db, cursor, monkeypatch):
    (job_id,) = make_jobs(1)
    sid, directory = expired_session(cursor, db, 6161)
    serial_reports.mark_session(directory, sid, database=db)
    report(directory, job_id)
    inner = []

    def other_sweep():  # (the patched reader runs once more inside: it must not recurse)
        if not inner:
            inner.append(None)
            inner.append(sweep_with(db, monkeypatch, lambda: None))

    first, _ = sweep_with(db, monkeypatch, other_sweep)
    assert first == [] and [s.lost_starts for s in inner[1][0]] == [1]
    assert history(cursor, job_id).count("RUNNING") == 1
    assert not os.path.exists(directory)


def test_a_start_committed_while_the_restart_reads_its_since_is_counted_before_it(
        app, db, cursor):
    """The restart's ``since`` (the last event id) is read after its release, in the same
    transaction: a RUNNING of the session's job still in flight then (its event id already
    drawn) holds the job's row, so the release waits for its commit and the read sees it; the
    job, RUNNING, is not counted as a lost start again."""
    job_id, other = make_jobs(2)
    sid = leases.open_session(cursor, hostname="nodeA", pid=6262, job_mode="serial",
                              num_nodes=1, lease_seconds=60)
    leases.claim(cursor, sid, 10, serial=True, max_nodes=1)
    writer, restart = connect(db), connect(db)
    result = []
    try:
        with writer.cursor() as cur:  # the old ensemble's master, its commit late
            assert leases.start(cur, sid, [job_id], start_message(sid)) == [job_id]
            cur.execute("SELECT max(id) FROM core_jobevent WHERE job_id = %s", [job_id])
            (event,), = cur.fetchall()

        def recover():
            with restart.cursor() as cur:
                result.append(ensemble_restart._recover_in(cur, sid, [], "restart"))
            restart.commit()

        thread = threading.Thread(target=recover, daemon=True)
        thread.start()
        waits_for_lock(cursor, restart.get_backend_pid())
        writer.commit()
        thread.join(30)
        assert not thread.is_alive()
    finally:
        writer.close()
        restart.close()
    (_, since, _), = result
    assert since >= event
    assert leases.record_lost_starts(cursor, sid, {job_id: 1}, start_message(sid),
                                     "lost", since=since) == []
    assert history(cursor, job_id).count(State.RUNNING.value) == 1
    cursor.execute("SELECT session_id FROM core_balsamjob WHERE job_id = %s", [other])
    assert cursor.fetchone() == (None,)
