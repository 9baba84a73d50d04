"""The lease sweep of a dead serial-mode session records the starts its worker watchdogs report
and its history lacks (balsam.core.serial_reports), once, and only from its own reports."""
from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from balsam.core import leases, serial_reports
from balsam.core.states import State
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
    shutil.rmtree(serial_reports.watch_dir(db, "nodeA", pid), ignore_errors=True)
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
    return sid, serial_reports.launcher_dir(db, "nodeA", pid, "dead")


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
    serial_reports.mark_session(directory, sid, database=db)
    serial_reports.mark_session(directory, sid, database=db, generation=1)
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
    serial_reports.mark_session(directory, sid, database=db)
    report(directory, 0, 1, "stopped", [job_id])
    assert leases.record_lost_starts(cursor, sid, {job_id: 1}, start_message(sid),
                                     "outcome unknown") == [job_id]  # the launcher's settle
    leases.sweep(cursor, db)
    assert [s for s, _ in history(cursor, job_id)].count("RUNNING") == 1


def test_reports_of_another_session_or_unreadable_ones_are_ignored(app, db, cursor):
    other, unmarked, huge = make_jobs(3)
    sid, directory = dead_session(cursor, db, 4444)
    serial_reports.mark_session(directory, sid + 1000, database=db)  # another session's
    report(directory, 0, 1, "stopped", [other])
    sid2, directory2 = dead_session(cursor, db, 4545)
    report(directory2, 0, 1, "stopped", [unmarked])  # no mark: not known to be its
    leases.sweep(cursor, db)
    for job_id in (other, unmarked):
        assert "RUNNING" not in [s for s, _ in history(cursor, job_id)]
    assert serial_reports.unrecorded_starts(db, sid, "nodeA", 4444) is None
    assert serial_reports.unrecorded_starts(db, sid2, "nodeA", 4545) is None
    sid3, directory3 = dead_session(cursor, db, 4646)
    serial_reports.mark_session(directory3, sid3, database=db)
    os.makedirs(os.path.join(directory3, "0"))
    with open(os.path.join(directory3, "0", "rank1.json"), "w") as fh:
        fh.write(" " * (serial_reports.MAX_BYTES + 1))  # past the bound: skipped
    report(directory3, 0, 2, "stopped", [huge])
    ((since, dead, alive),) = serial_reports.unrecorded_starts(db, sid3, "nodeA", 4646)[0]
    assert dict(dead) == {huge: 1} and not alive and since == 0


def wait_thread(thread):
    """Whether ``thread`` ended within 10 s."""
    thread.join(10)
    return not thread.is_alive()


def unblock(path):
    """Open a FIFO for writing and close it: a reader blocked in open() goes on (sees EOF)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.mark.parametrize("where", ["mark", "report", "report symlink"])
def test_a_fifo_in_the_watch_directory_does_not_hang_the_sweep(app, db, cursor, where):
    import threading

    (job_id,) = make_jobs(1)
    sid, directory = dead_session(cursor, db, 4747)
    serial_reports.mark_session(directory, sid, database=db)
    report(directory, 0, 1, "stopped", [job_id])
    fifo = os.path.join(db, "log", "fifo") if where == "report symlink" else os.path.join(
        directory, *(("session.json",) if where == "mark" else ("0", "rank2.json")))
    if where == "mark":
        os.unlink(fifo)
    os.mkfifo(fifo)
    if where == "report symlink":
        os.symlink(fifo, os.path.join(directory, "0", "rank2.json"))
    result = []
    reader = threading.Thread(target=lambda: result.append(
        serial_reports.unrecorded_starts(db, sid, "nodeA", 4747)), daemon=True)
    reader.start()
    done = wait_thread(reader)
    if not done:
        unblock(fifo)
        reader.join(10)
    if where == "report symlink":
        os.unlink(fifo)
    assert done, f"reading a watch directory with a FIFO ({where}) hung"
    if where == "mark":
        assert result == [None]  # not a regular file: not known to be the session's
    else:
        assert dict(result[0].generations[0].dead) == {job_id: 1}  # the FIFO skipped


def test_a_symlink_to_dev_zero_or_a_device_is_skipped(app, db, cursor):
    (job_id,) = make_jobs(1)
    sid, directory = dead_session(cursor, db, 4848)
    serial_reports.mark_session(directory, sid, database=db)
    report(directory, 0, 1, "stopped", [job_id])
    os.symlink("/dev/zero", os.path.join(directory, "0", "rank2.json"))
    os.symlink("/dev/null", os.path.join(directory, "0", "rank3.json"))
    ((_, dead, alive),) = serial_reports.unrecorded_starts(db, sid, "nodeA", 4848)[0]
    assert dict(dead) == {job_id: 1} and not alive


def test_a_start_after_an_ensemble_restart_is_recorded_though_the_first_ensemble_ran_the_job(
        app, db, cursor):
    """The session ran the job in its first ensemble (RUNNING written), the ensemble failed
    (its jobs timed out and released: ensemble_restart), the retry was claimed by the same
    session and started in the second ensemble, whose reports alone the sweep reads; the
    launcher died before that start was written: it is a run of its own."""
    from balsam.core import lifecycle
    from balsam.launcher.ensemble_restart import _recover_in

    (job_id,) = make_jobs(1)
    sid, directory = dead_session(cursor, db, 4949)
    leases.start(cursor, sid, [job_id], start_message(sid))  # the first ensemble's run
    since = _recover_in(cursor, sid, [job_id], "interrupted: the ensemble lost a rank")[1]
    assert since > 0
    lifecycle.transition(cursor, [job_id], State.RESTART_READY, "retry")
    assert leases.claim(cursor, sid, 10, serial=True, max_nodes=1)
    cursor.execute("UPDATE core_launchersession SET heartbeat = now() - interval '1 hour' "
                   "WHERE id = %s", [sid])
    serial_reports.mark_session(directory, sid, database=db, since=since,
                                generation=1)  # the second ensemble's launch
    report(directory, 1, 1, "stopped", [job_id])
    assert leases.sweep(cursor, db)[0][0] == sid
    states = [s for s, _ in history(cursor, job_id)]
    assert states.count("RUNNING") == 2, states
    assert states[-3:] == ["RUNNING", "RUN_TIMEOUT", "RESTART_READY"] or states[-2:] == [
        "RUNNING", "RUN_TIMEOUT"]


def test_the_reports_are_read_before_the_session_is_locked(app, db, cursor, monkeypatch):
    """A slow file system must hold no lock: while the sweep reads the reports, another
    transaction can still lock the dead session's row (the sweep locks it afterwards)."""
    from balsam.db.connect import connect

    (job_id,) = make_jobs(1)
    sid, directory = dead_session(cursor, db, 5050)
    serial_reports.mark_session(directory, sid, database=db)
    report(directory, 0, 1, "stopped", [job_id])
    read = serial_reports.unrecorded_starts
    probes = []

    def probed(*args):
        other = connect(db)
        try:
            with other.cursor() as cur:  # raises if the sweep holds the row (NOWAIT)
                cur.execute("SELECT id FROM core_launchersession WHERE id = %s "
                            "FOR UPDATE NOWAIT", [sid])
                probes.append(cur.fetchall())
        finally:
            other.rollback()
            other.close()
        return read(*args)

    monkeypatch.setattr(serial_reports, "unrecorded_starts", probed)
    sweeper = connect(db)
    try:
        with sweeper.cursor() as cur:
            assert leases.sweep(cur, db) == [(sid, 0)]
        sweeper.commit()
    finally:
        sweeper.close()
    assert probes == [[(sid,)]]
    assert [s for s, _ in history(cursor, job_id)][-2:] == ["RUNNING", "RUN_TIMEOUT"]


def test_a_second_sweeper_records_nothing_while_the_first_holds_the_session(app, db, cursor):
    from balsam.db.connect import connect

    (job_id,) = make_jobs(1)
    sid, directory = dead_session(cursor, db, 5151)
    serial_reports.mark_session(directory, sid, database=db)
    report(directory, 0, 1, "stopped", [job_id])
    first, second = connect(db), connect(db)
    try:
        with first.cursor() as one, second.cursor() as two:
            assert [s.lost_starts for s in leases.sweep_sessions(one, db)] == [1]
            assert leases.sweep_sessions(two, db) == []  # skipped: the first holds it
            second.commit()
            first.commit()
            assert leases.sweep_sessions(two, db) == []  # closed
            second.commit()
    finally:
        first.close()
        second.close()
    assert [s for s, _ in history(cursor, job_id)].count("RUNNING") == 1


def test_a_sweep_rolled_back_and_retried_records_each_start_once(app, db, cursor):
    from balsam.db.connect import connect

    (job_id,) = make_jobs(1)
    sid, directory = dead_session(cursor, db, 5555)
    serial_reports.mark_session(directory, sid, database=db)
    report(directory, 0, 1, "stopped", [job_id])
    sweeper = connect(db)
    try:
        with sweeper.cursor() as cur:
            assert [s.lost_starts for s in leases.sweep_sessions(cur, db)] == [1]
            sweeper.rollback()  # the commit failed: nothing removed, nothing recorded
            assert os.path.exists(directory) and "RUNNING" not in [
                s for s, _ in history(cursor, job_id)]
            swept = leases.sweep_sessions(cur, db)
            sweeper.commit()
    finally:
        sweeper.close()
    assert [s.lost_starts for s in swept] == [1]
    leases.after_sweep(db, swept)
    assert [s for s, _ in history(cursor, job_id)].count("RUNNING") == 1
    assert not os.path.exists(directory)


def test_reported_jobs_the_session_no_longer_holds_are_left_alone(app, db, cursor):
    released, elsewhere, done = make_jobs(3)
    sid, directory = dead_session(cursor, db, 5252)
    other = leases.open_session(cursor, hostname="nodeB", pid=1, job_mode="serial",
                                num_nodes=1, lease_seconds=3600)
    leases.release(cursor, sid, [released, elsewhere])
    leases.claim(cursor, other, 10, serial=True, max_nodes=1)  # takes both again
    leases.release(cursor, other, [released])
    leases.start(cursor, sid, [done], start_message(sid))
    leases.finish(cursor, sid, [done], State.RUN_DONE)
    before = {j: history(cursor, j) for j in (released, elsewhere, done)}
    serial_reports.mark_session(directory, sid, database=db)
    report(directory, 0, 1, "stopped", [released, elsewhere, done, done])
    assert leases.sweep(cursor, db) == [(sid, 0)]
    assert {j: history(cursor, j) for j in (released, elsewhere, done)} == before


def test_after_the_sweep_its_watch_directory_goes_and_its_log_line_counts_the_starts(
        app, db, cursor):
    lost, _ = make_jobs(2)
    sid, directory = dead_session(cursor, db, 5353)
    serial_reports.mark_session(directory, sid, database=db)
    report(directory, 0, 1, "stopped", [lost])
    sid2, directory2 = dead_session(cursor, db, 5454)
    serial_reports.mark_session(directory2, sid2 + 1000, database=db)  # not ours
    swept = leases.sweep_sessions(cursor, db)
    assert sorted((s.session, s.lost_starts) for s in swept) == [(sid, 1), (sid2, 0)]
    lines = leases.after_sweep(db, swept)
    assert os.path.exists(directory2) and not os.path.exists(directory)
    assert any(f"session {sid} " in line and "1 start(s) its watchdogs reported" in line
               for line in lines), lines
    assert not any("start(s)" in line for line in lines if f"session {sid2} " in line)
    shutil.rmtree(directory2)


def test_a_fifo_as_an_mpi_mode_launch_report_does_not_hang_the_sweep(db, cursor):
    import threading

    from balsam.core import launch_reports

    path = launch_reports.report_path(db, 987654)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkfifo(path)
    result = []
    reader = threading.Thread(target=lambda: result.append(
        launch_reports.launched(db, 987654, "nodeA", 1)), daemon=True)
    reader.start()
    done = wait_thread(reader)
    if not done:
        unblock(path)
        reader.join(10)
    os.unlink(path)
    assert done and result == [None], "reading a FIFO as the launch report hung"
