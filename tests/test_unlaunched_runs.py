"""RUNNING visits that were no run (MPI mode recorded the job RUNNING ahead of its launch, which
never came) count as no run: in a task's attempt number (``BALSAM_JOB_ATTEMPT``, from the
claim's ``runs``), and when the session of a launcher that died is swept (its watchdog's report
says what it launched: :mod:`balsam.core.launch_reports`). Real PostgreSQL, no mocks."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from launcher_procs import launchers
from launcher_support import QUICK, job_row, settings, wait_for
from test_ready_ahead_killed import MPI, campaign, marked

from balsam.core import analytics, killed_starts, launch_reports, leases, lifecycle, retries, schema
from balsam.core.retries import NOT_STARTED_SUFFIX
from balsam.core.states import State
from balsam.launcher.watchdog import Watchdog


@pytest.fixture
def app(db):
    from balsam.core.models import ApplicationDefinition

    return ApplicationDefinition.objects.create(name="app", executable="true")


def make_jobs(n):
    from balsam.core.models import BalsamJob

    return [str(j.pk) for j in BalsamJob.objects.bulk_create(
        [BalsamJob(name=f"j{i}", workflow="wf", application="app", state="PREPROCESSED")
         for i in range(n)])]


def session(cursor):
    return leases.open_session(cursor, hostname="host", pid=123, job_mode="mpi", num_nodes=4,
                               lease_seconds=60)


def runs_at_claim(cursor, job_ids):
    """{job id: runs} read by a new session's claim (then released)."""
    sid = session(cursor)
    claimed = leases.claim(cursor, sid, 10, serial=False, max_nodes=4)
    leases.close_session(cursor, sid, "test")
    return {r["job_id"]: r["runs"] for r in claimed if r["job_id"] in job_ids}


def test_the_attempt_number_counts_real_runs_only(app, cursor):
    stopped, timed_out, killed, ran_killed = make_jobs(4)
    sid = session(cursor)
    leases.claim(cursor, sid, 4, serial=False, max_nodes=4)
    leases.start(cursor, sid, [stopped, timed_out, killed, ran_killed], "ahead")
    # A launcher's stop kept one ready ahead from starting; another ran and timed out.
    leases.finish(cursor, sid, [stopped], State.RUN_TIMEOUT, "stopped" + NOT_STARTED_SUFFIX)
    leases.finish(cursor, sid, [timed_out], State.RUN_TIMEOUT, "stopped")
    # A user killed two: one never launched (marked by its launcher), one that ran.
    lifecycle.kill(cursor, [killed, ran_killed])
    assert killed_starts.record_unlaunched(cursor, sid, [killed]) == [killed]
    leases.close_session(cursor, sid, "test")
    lifecycle.transition(cursor, [stopped, timed_out], "RESTART_READY", "retry")
    assert len(lifecycle.transition(cursor, [killed, ran_killed], "PREPROCESSED", "reset",
                                    user=True, force=True)) == 2
    runs = runs_at_claim(cursor, {stopped, timed_out, killed, ran_killed})
    # Before: every RUNNING visit counted (1 each), so the next real run of the two that never
    # ran got BALSAM_JOB_ATTEMPT 2.
    assert runs == {stopped: 0, timed_out: 1, killed: 0, ran_killed: 1}
    # A second no-run visit after a real one: still one run.
    sid = session(cursor)
    leases.claim(cursor, sid, 4, serial=False, max_nodes=4)
    leases.start(cursor, sid, [timed_out], "ahead")
    leases.finish(cursor, sid, [timed_out], State.RUN_TIMEOUT, "stopped" + NOT_STARTED_SUFFIX)
    leases.close_session(cursor, sid, "test")
    lifecycle.transition(cursor, [timed_out], "RESTART_READY", "retry")
    assert runs_at_claim(cursor, {timed_out}) == {timed_out: 1}


def write_report(db, sid, state, started, owner="123"):
    with open(launch_reports.report_path(db, sid), "w") as fh:
        json.dump({"state": state, "host": "host", "owner": owner, "started": started,
                   "alive": []}, fh)


def swept_held(cursor, db, n):
    """A dead session holding ``n`` jobs recorded RUNNING (its lease long expired)."""
    jobs = make_jobs(n)
    sid = session(cursor)
    launch_reports.discard(db, sid)  # (a test DB's session ids restart)
    leases.claim(cursor, sid, n, serial=False, max_nodes=4)
    leases.start(cursor, sid, jobs, "launcher session, ready ahead of a free node")
    cursor.execute(f"UPDATE {schema.SESSION_TABLE} SET heartbeat = heartbeat - interval "
                   "'1 hour', lease_seconds = 0 WHERE id = %s", [sid])
    return sid, jobs


def last_event(cursor, job_id):
    cursor.execute(f"SELECT to_state, message, nodes FROM {schema.EVENT_TABLE} "
                   "WHERE job_id = %s ORDER BY id DESC LIMIT 1", [job_id])
    return cursor.fetchone()


def test_the_sweep_records_what_a_final_report_says_was_not_launched(app, cursor, db):
    sid, (ran, waited, killed) = swept_held(cursor, db, 3)
    lifecycle.kill(cursor, [killed])
    write_report(db, sid, "stopped", [ran])
    try:
        assert leases.sweep(cursor, db) == [(sid, 2)]
    finally:
        launch_reports.discard(db, sid)
    to_state, message, _ = last_event(cursor, ran)
    assert to_state == "RUN_TIMEOUT" and message.endswith("while the job ran")
    to_state, message, _ = last_event(cursor, waited)
    assert to_state == "RUN_TIMEOUT" and message.endswith(NOT_STARTED_SUFFIX)
    assert last_event(cursor, killed) == ("USER_KILLED", "Killed by user" + NOT_STARTED_SUFFIX,
                                          None)
    assert retries.usage(cursor, [ran, waited], 3) == {ran: (1, 3), waited: (0, 3)}


@pytest.mark.parametrize("report", ["running", "missing", "garbled", "another process's"])
def test_without_a_final_report_every_visit_counts_as_a_run(app, cursor, db, report):
    """The watchdog still at work or gone with its node: nothing is decided (as before)."""
    sid, (waited, killed) = swept_held(cursor, db, 2)
    lifecycle.kill(cursor, [killed])
    if report == "running":
        write_report(db, sid, "running", [])
    elif report == "garbled":
        with open(launch_reports.report_path(db, sid), "w") as fh:
            fh.write("{")
    elif report == "another process's":  # (an earlier database's session of that id)
        write_report(db, sid, "stopped", [], owner="4567")
    try:
        assert leases.sweep(cursor, db) == [(sid, 1)]
    finally:
        launch_reports.discard(db, sid)
    assert last_event(cursor, waited)[1].endswith("while the job ran")
    assert last_event(cursor, killed)[:2] == ("USER_KILLED", "Killed by user")


def test_the_watchdog_reports_launches_not_forgotten(tmp_path):
    """A real watchdog process: ``?`` before a launch counts (the launcher may die before
    ``+``), ``#`` (a commit ended the hold) forgets; its owner's pipe closing ends it."""
    path = str(tmp_path / "report.json")
    dog = Watchdog(1.0, report=path)
    with open(path) as fh:
        assert json.load(fh)["state"] == "running"
    group = subprocess.Popen(["sleep", "60"], start_new_session=True)
    dog.expect("a")
    dog.add(group.pid, "a")
    dog.expect("b")  # (its launch never came)
    done = subprocess.Popen(["sleep", "60"], start_new_session=True)
    dog.expect("c")
    dog.add(done.pid, "c")
    done.kill()
    done.wait()
    dog.remove(done.pid, defer=True)
    dog.forget(["c"])  # its end was recorded
    dog.close()  # the owner goes: the watchdog stops "a"'s group and reports
    assert group.wait(60) != 0

    def final():
        with open(path) as fh:
            report = json.load(fh)
        return report if report["state"] != "running" else None

    report = wait_for(final, 60, "the watchdog's final report")
    assert report["state"] == "stopped" and sorted(report["started"]) == ["a", "b"]


@pytest.mark.slow
def test_a_killed_launchers_jobs_ready_ahead_are_swept_as_no_run(db, cursor):
    """The real MPI-mode launcher (one node) holds the gated job's run and victims recorded
    RUNNING ahead of it; a user kills one (its kill checks an hour apart: the launcher never
    learns) and the launcher is SIGKILLed. Once its watchdog's report is final, the sweep
    records the victims as no run: no retry used, no run in the analytics, and a second
    launcher's rerun sees attempt 1 (before: the killed one read as a run, the others timed
    out "while the job ran", their reruns attempt 2)."""
    markers, gate, quick, gated, victims = campaign(cursor)
    tunables = dict(QUICK, kill_check_seconds=3600)
    with settings(db, local_nodes=1, mpi="direct", launcher=tunables), launchers() as start:
        launcher = start(*MPI)
        wait_for(lambda: marked(markers, gated), 60, "the gated job to start")
        wait_for(lambda: all(job_row(cursor, v)["state"] == "RUNNING" for v in victims), 60,
                 "the victims recorded RUNNING ahead of a free node")
        sid = job_row(cursor, gated)["session_id"]
        assert lifecycle.kill(cursor, [victims[0]]) == [victims[0]]
        launcher.signal(signal.SIGKILL)
        launcher.wait(60)
        path = launch_reports.report_path(db, sid)
        cursor.execute(f"SELECT hostname, pid FROM {schema.SESSION_TABLE} WHERE id = %s",
                       [sid])
        host, pid = cursor.fetchone()
        wait_for(lambda: launch_reports.launched(db, sid, host, pid) is not None, 60,
                 "the watchdog's final report")
        launched = launch_reports.launched(db, sid, host, pid)  # (and quick ones ended unrecorded)
        assert launched is not None and gated in launched and not launched & set(victims)
        cursor.execute(f"UPDATE {schema.SESSION_TABLE} SET heartbeat = heartbeat - interval "
                       "'1 hour', lease_seconds = 0 WHERE id = %s", [sid])
        cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE state = 'RUNNING'")
        (running,) = cursor.fetchone()
        assert leases.sweep(cursor, db) == [(sid, running)]
        assert os.path.exists(path)  # (the launchers' and the service's sweeps discard it)
        launch_reports.discard(db, sid)
        assert last_event(cursor, victims[0]) == (
            "USER_KILLED", "Killed by user" + NOT_STARTED_SUFFIX, None)
        for waited in victims[1:]:
            assert last_event(cursor, waited)[1].endswith(NOT_STARTED_SUFFIX)
        assert last_event(cursor, gated)[1].endswith("while the job ran")
        assert retries.usage(cursor, victims[1:] + [gated], 3) == {
            victims[1]: (0, 3), victims[2]: (0, 3), gated: (1, 3)}
        ran = quick + [gated]
        assert sorted(r.job_id for r in analytics.job_runtimes(cursor)) == sorted(ran)
        open(gate, "w").close()
        assert start(*MPI).wait(120) == 0
    for waited in victims[1:]:  # their first real run: attempt 1
        with open(os.path.join(markers, waited)) as fh:
            assert fh.read().split() == ["1"]
    with open(os.path.join(markers, gated)) as fh:
        assert fh.read().split() == ["1", "2"]
    assert not marked(markers, victims[0])
