"""The lease sweep of a dead serial-mode session records the starts its worker watchdogs report
and its history lacks (balsam.core.serial_reports), once, and only from its own reports."""
from __future__ import annotations

import json
import os
import time

import pytest

from balsam.core import leases, serial_reports
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


def dead_session(cursor, db, pid):
    sid = leases.open_session(cursor, hostname="nodeA", pid=pid, job_mode="serial",
                              num_nodes=2, lease_seconds=1)
    leases.claim(cursor, sid, 10, serial=True, max_nodes=1)
    cursor.execute("UPDATE core_launchersession SET heartbeat = now() - interval '1 hour' "
                   "WHERE id = %s", [sid])
    for _ in range(600):  # (sweeps wait until the server has been up a whole lease)
        cursor.execute("SELECT pg_postmaster_start_time() < now() - interval '1 second'")
        if cursor.fetchone()[0]:
            break
        time.sleep(0.05)
    return sid, serial_reports.watch_dir(db, "nodeA", pid)


def report(directory, generation, rank, state, started):
    os.makedirs(os.path.join(directory, str(generation)), exist_ok=True)
    with open(os.path.join(directory, str(generation), f"rank{rank}.json"), "w") as fh:
        json.dump({"state": state, "host": "nodeA", "owner": "1", "started": started}, fh)


def history(cursor, job_id):
    cursor.execute("SELECT to_state, message FROM core_jobevent WHERE job_id = %s ORDER BY id",
                   [job_id])
    return cursor.fetchall()


def test_the_sweep_records_reported_starts_the_history_lacks_once(app, db, cursor):
    lost, recorded, again, unknown, idle, outlived = make_jobs(6)
    sid, directory = dead_session(cursor, db, 4242)
    serial_reports.mark_session(directory, sid)
    leases.start(cursor, sid, [recorded], start_message(sid))  # the master wrote this one
    report(directory, 0, 1, "stopped", [lost, recorded])
    report(directory, 1, 1, "stopped", [again])
    report(directory, 1, 2, "running", [unknown])  # not final: its rank's starts are not known
    report(directory, 1, 3, "alive", [outlived])  # a task outlived SIGKILL: still a run
    assert leases.sweep(cursor, db)[0][0] == sid
    assert [s for s, _ in history(cursor, lost)][-2:] == ["RUNNING", "RUN_TIMEOUT"]
    assert history(cursor, lost)[-2][1] == f"{start_message(sid)} (recorded after the run)"
    assert history(cursor, lost)[-1][1] == serial_reports.LOST_MESSAGE
    assert [s for s, _ in history(cursor, again)][-2:] == ["RUNNING", "RUN_TIMEOUT"]
    # recorded by the master: swept as a RUNNING job (interrupted), no second RUNNING
    assert [s for s, _ in history(cursor, recorded)].count("RUNNING") == 1
    assert [s for s, _ in history(cursor, outlived)][-2:] == ["RUNNING", "RUN_TIMEOUT"]
    for job_id in (unknown, idle):
        assert "RUNNING" not in [s for s, _ in history(cursor, job_id)]
    assert leases.sweep(cursor, db) == []  # closed: nothing twice
    assert [s for s, _ in history(cursor, lost)].count("RUNNING") == 1


def test_a_start_the_dead_launcher_recorded_itself_is_not_recorded_again(app, db, cursor):
    (job_id,) = make_jobs(1)
    sid, directory = dead_session(cursor, db, 4343)
    serial_reports.mark_session(directory, sid)
    report(directory, 0, 1, "stopped", [job_id])
    assert leases.record_lost_starts(cursor, sid, {job_id: 1}, start_message(sid),
                                     "outcome unknown") == [job_id]  # the launcher's settle
    leases.sweep(cursor, db)
    assert [s for s, _ in history(cursor, job_id)].count("RUNNING") == 1


def test_reports_of_another_session_or_unreadable_ones_are_ignored(app, db, cursor):
    other, unmarked, huge = make_jobs(3)
    sid, directory = dead_session(cursor, db, 4444)
    serial_reports.mark_session(directory, sid + 1000)  # an earlier launcher of that host and pid
    report(directory, 0, 1, "stopped", [other])
    sid2, directory2 = dead_session(cursor, db, 4545)
    report(directory2, 0, 1, "stopped", [unmarked])  # no mark: not known to be its
    leases.sweep(cursor, db)
    for job_id in (other, unmarked):
        assert "RUNNING" not in [s for s, _ in history(cursor, job_id)]
    assert serial_reports.unrecorded_starts(db, sid, "nodeA", 4444) is None
    assert serial_reports.unrecorded_starts(db, sid2, "nodeA", 4545) is None
    sid3, directory3 = dead_session(cursor, db, 4646)
    serial_reports.mark_session(directory3, sid3)
    os.makedirs(os.path.join(directory3, "0"))
    with open(os.path.join(directory3, "0", "rank1.json"), "w") as fh:
        fh.write(" " * (serial_reports.MAX_BYTES + 1))  # past the bound: skipped
    report(directory3, 0, 2, "stopped", [huge])
    dead, alive = serial_reports.unrecorded_starts(db, sid3, "nodeA", 4646)
    assert dict(dead) == {huge: 1} and not alive
