"""Launcher core, in process against the real PostgreSQL: the reconnecting Database, batched
state recording, claiming into task specs, tunables/settings, time limits, housekeeping, and the
`balsam launcher` command line."""
from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
from conftest import make_public_tmpdir, run_balsam
from launcher_support import add_app, add_jobs, events, job_row, wait_for

from balsam.core import leases, lifecycle, schema
from balsam.core.tunables import Tunables
from balsam.db import dbsettings, serverinfo
from balsam.db.database import FIRST_BACKOFF_SECONDS, Database, WakeEvent
from balsam.errors import BalsamError, DatabaseUnavailable
from balsam.launcher.context import Context, Housekeeper, SessionLost
from balsam.launcher.job_source import JobSource
from balsam.launcher.main import remaining_limit
from balsam.launcher.status import StatusBuffer
from balsam.platform.allocation import Allocation
from balsam.processing import transitions
from balsam.processing.steps import Limits


@pytest.fixture
def mirror(db):
    """A second DB directory naming the same server (server-info + credentials copied), whose
    server-info a test may break and repair without touching the session DB."""
    root = make_public_tmpdir("balsam-l1-mirror-")
    path = os.path.join(root, "db")
    os.makedirs(path)
    shutil.copy(serverinfo.path_of(db), serverinfo.path_of(path))
    shutil.copytree(os.path.join(db, ".auth"), os.path.join(path, ".auth"))
    yield path
    shutil.rmtree(root, ignore_errors=True)


def set_port(db_path: str, port):
    serverinfo.update(db_path, port=port)


def select_one(cur):
    cur.execute("SELECT 1")
    return cur.fetchone()[0]


def open_session(cur, lease_seconds=60):
    return leases.open_session(cur, hostname="host", pid=1, job_mode="mpi", num_nodes=2,
                               lease_seconds=lease_seconds)


# ---- Database ---------------------------------------------------------------------------------

def test_database_counts_statements_and_reconnects_after_the_connection_is_killed(db, cursor):
    database = Database(db)
    assert database.run(select_one) == 1
    assert (database.statements, database.transactions, database.reconnects) == (1, 1, 0)
    cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                   "WHERE application_name = 'balsam-launcher'")
    assert database.run(select_one) == 1
    assert database.reconnects == 1
    database.close()


def test_database_follows_server_info_to_a_new_port(mirror):
    database = Database(mirror)
    port = serverinfo.read(mirror)["port"]
    set_port(mirror, 1)  # nothing listens there
    with pytest.raises(DatabaseUnavailable):
        database.try_run(select_one)
    set_port(mirror, port)
    time.sleep(FIRST_BACKOFF_SECONDS * 2)  # the back-off the failure started
    assert database.try_run(select_one) == 1
    database.close()


def test_run_waits_with_back_off_until_the_server_is_back(mirror):
    database = Database(mirror, reconnect_max_seconds=0.2)
    port = serverinfo.read(mirror)["port"]
    set_port(mirror, None)  # stopped
    threading.Timer(0.6, set_port, (mirror, port)).start()
    began = time.monotonic()
    assert database.run(select_one) == 1
    assert 0.5 < time.monotonic() - began < 20  # bounded: not the 0.6-s outage's multiples
    database.close()


def test_run_gives_up_when_the_stop_event_is_set(mirror):
    stop = threading.Event()
    database = Database(mirror, stop=stop, reconnect_max_seconds=0.1)
    set_port(mirror, None)
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(DatabaseUnavailable):
        database.run(select_one)


def test_other_errors_roll_back_propagate_and_leave_the_connection_usable(db, cursor):
    import psycopg2

    database = Database(db)

    def insert_then_fail(cur):
        add_app(cur, "ghost", "true")
        cur.execute("SELECT no_such_column FROM core_balsamjob")

    with pytest.raises(psycopg2.errors.UndefinedColumn):
        database.run(insert_then_fail)
    cursor.execute(f"SELECT count(*) FROM {schema.APP_TABLE}")
    assert cursor.fetchone()[0] == 0
    assert database.run(select_one) == 1 and database.reconnects == 0


def test_wait_wakes_on_another_sessions_change_but_not_on_its_own(db, cursor):
    database = Database(db)
    database.listen()
    database.run(lambda cur: add_app(cur, "app", "true"))
    database.run(lambda cur: add_jobs(cur, [{"name": "mine", "application": "app"}]))
    began = time.monotonic()
    assert database.wait(0.3) is False  # its own insert does not wake it
    assert time.monotonic() - began >= 0.29
    theirs = threading.Timer(0.1, add_jobs, (cursor, [{"name": "theirs", "application": "app"}]))
    theirs.start()
    began = time.monotonic()
    assert database.wait(30) is True  # woken, not timed out (a loaded machine is slow)
    theirs.join(60)  # its cursor is the fixture's: done with it before the teardown uses it
    database.close()



def test_a_wait_returns_when_its_wake_event_is_set_not_after_its_timeout(db):
    stop = WakeEvent()
    database = Database(db, stop=stop)
    database.listen()
    answers: list[bool] = []
    waiter = threading.Thread(target=lambda: answers.append(database.wait(600.0)))
    waiter.start()
    stop.set()
    waiter.join(120.0)  # the wait's own timeout is 600 s
    assert not waiter.is_alive() and answers == [False]
    assert database.wait(600.0) is False  # once set, a wait returns at once
    database.close()
    stop.close()


def test_a_transition_pool_stops_without_sitting_out_its_idle_wait(db):
    import logging

    from balsam.processing.worker import TransitionPool

    pool = TransitionPool(2, db, wf_filter=None, base_env={}, limits=Limits(60.0),
                          log=logging.getLogger("test"), heartbeat_seconds=600.0,
                          lease_seconds=1200, idle_wait_seconds=600.0,
                          reconnect_max_seconds=5.0)
    pool.start()
    wait_for(lambda: _open_sessions(db) == 2, 120.0, "both workers' sessions")
    wait_for(lambda: all(w.db.connected for w in pool.workers), 120.0, "every connection")
    pool.stop(timeout=120.0)  # each waits for notifications up to 600 s
    assert not any(w.is_alive() for w in pool.workers)
    assert _open_sessions(db) == 0  # each worker closed its session on the way out


def _open_sessions(db_path: str) -> int:
    database = Database(db_path, "test-sessions")
    try:
        return int(database.run(lambda cur: (
            cur.execute(f"SELECT count(*) FROM {schema.SESSION_TABLE} WHERE ended_at IS NULL"),
            cur.fetchone()[0])[1]))
    finally:
        database.close()


def test_unlisten_drops_pending_notifications_and_stops_new_ones(db, cursor):
    database = Database(db)
    database.listen()
    database.run(lambda cur: add_app(cur, "app", "true"))
    add_jobs(cursor, [{"name": "before", "application": "app"}])
    time.sleep(0.1)
    database.unlisten()
    add_jobs(cursor, [{"name": "after", "application": "app"}])
    assert database.wait(0.3) is False  # neither the pending change nor the new one
    database.close()



def test_an_early_master_reads_the_session_id_or_gives_up():
    """Rank 0 of an ensemble started before the session reads the id from its stdin: 0 (exit)
    on end-of-file, on a stop, or when nothing comes in time."""
    from balsam.launcher.rank_boot import session_from_launcher

    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"4")
    threading.Timer(0.1, os.write, (write_fd, b"2\n")).start()
    assert session_from_launcher(threading.Event(), 5, read_fd) == 42
    began = time.monotonic()
    assert session_from_launcher(threading.Event(), 0.3, read_fd) == 0
    assert 0.25 < time.monotonic() - began < 4.5  # its 0.3-s wait, not the next call's 5 s
    stop = threading.Event()
    stop.set()
    assert session_from_launcher(stop, 5, read_fd) == 0
    os.close(write_fd)
    assert session_from_launcher(threading.Event(), 5, read_fd) == 0
    os.close(read_fd)


# ---- StatusBuffer -----------------------------------------------------------------------------

@pytest.fixture
def claimed(db, cursor):
    """(database, session id, ids of 4 jobs claimed by that session)."""
    add_app(cursor, "app", "true")
    add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                      for i in range(4)])
    database = Database(db)
    sid = database.run(open_session)
    rows = database.run(leases.claim, sid, 10, serial=False, max_nodes=2)
    yield database, sid, sorted(r["job_id"] for r in rows)
    database.close()


def test_flush_writes_running_first_then_each_end_in_one_statement(claimed, cursor):
    database, sid, (a, b, c, d) = claimed
    status = StatusBuffer(database, sid, start_message="started here")
    status.started([a, b, c, d])
    status.done(a)
    status.error(b, "exit code 3:\nboom")
    status.timeout(c, "stopped")
    before = (database.statements, database.transactions)
    written = status.flush()
    assert written.started == [a, b, c, d] and written.not_started == [] and written.ended == 3
    assert (database.statements - before[0], database.transactions - before[1]) == (1, 1)
    assert [(e[1], e[2], e[3]) for e in events(cursor, b)][-2:] == [
        ("PREPROCESSED", "RUNNING", "started here"), ("RUNNING", "RUN_ERROR", "exit code 3:\nboom")]
    cursor.execute("SELECT to_state, entered_at, timestamp, nodes FROM core_jobevent "
                   "WHERE job_id = %s ORDER BY id", [a])
    (_, _, created, _), running, done = cursor.fetchall()
    # One row update, both events: the span of RUNNING is recorded, and its nodes.
    assert running[0] == "RUNNING" and running[1] == created and running[3] is None
    assert done[0] == "RUN_DONE" and done[1] == running[2] <= done[2] and done[3] == 1.0
    assert job_row(cursor, d)["state"] == "RUNNING" and job_row(cursor, d)["session_id"] == sid
    assert job_row(cursor, a)["session_id"] is None
    assert status.pending == 0 and not status.due()


def test_a_start_whose_running_was_written_by_a_lost_commit_still_gets_its_end(claimed,
                                                                               cursor):
    database, sid, (a, b, _, _) = claimed
    status = StatusBuffer(database, sid)
    status.started([a, b])
    batch = status.take()
    database.run(status.write, batch)  # the commit happened; the launcher did not learn it
    status.restore(batch)
    status.done(a)
    status.error(b, "boom")
    written = status.flush()
    assert written.started == [a, b] and written.not_started == [] and written.ended == 2
    assert [e[2] for e in events(cursor, a)] == ["PREPROCESSED", "RUNNING", "RUN_DONE"]
    assert [e[2] for e in events(cursor, b)] == ["PREPROCESSED", "RUNNING", "RUN_ERROR"]


def test_writing_a_batch_again_changes_nothing(claimed, cursor):
    database, sid, (a, b, _, _) = claimed
    status = StatusBuffer(database, sid)
    status.started([a])
    status.done(b)  # b never ran: its end is not recorded
    batch = status.take()
    first = database.run(status.write, batch)
    again = database.run(status.write, batch)  # as after a commit whose outcome was lost
    assert first.started == again.started == [a] and again.not_started == []
    assert first.ended == again.ended == 0
    assert [e[2] for e in events(cursor, a)] == ["PREPROCESSED", "RUNNING"]


def test_a_start_refused_because_the_user_killed_the_job_is_reported(claimed, cursor):
    database, sid, (a, b, _, _) = claimed
    lifecycle.kill(cursor, [a])
    status = StatusBuffer(database, sid)
    status.started([a, b])
    written = status.flush()
    assert written.started == [b] and written.not_started == [a]
    assert job_row(cursor, a)["state"] == "USER_KILLED"


def test_flush_keeps_everything_pending_while_the_database_is_unreachable(db, cursor, mirror):
    add_app(cursor, "app", "true")
    (job_id,) = add_jobs(cursor, [{"name": "j", "application": "app", "state": "PREPROCESSED"}])
    database = Database(mirror)
    sid = database.run(open_session)
    database.run(leases.claim, sid, 1, serial=False, max_nodes=1)
    status = StatusBuffer(database, sid, flush_seconds=0.0)
    status.started([job_id])
    port = serverinfo.read(mirror)["port"]
    database.close()
    set_port(mirror, 1)
    status.done(job_id)
    assert status.flush() is None
    assert status.pending == 2 and status.due()
    set_port(mirror, port)
    time.sleep(FIRST_BACKOFF_SECONDS * 2)
    assert status.flush().ended == 1
    assert [e[2] for e in events(cursor, job_id)] == ["PREPROCESSED", "RUNNING", "RUN_DONE"]


# ---- JobSource --------------------------------------------------------------------------------

def source_for(db, database, sid, nodes=2):
    alloc = Allocation(("n1",) * nodes, 4, 0, "local", "", None)
    return JobSource(database, sid, alloc, db, "mpi", None, {"PATH": "/usr/bin", "KEEP": "1",
                                                             "PMI_RANK": "3"})


def test_claims_become_specs_with_parents_variables_and_cached_apps(db, cursor, tmp_path):
    envscript = str(tmp_path / "env.sh")
    open(envscript, "w").close()
    add_app(cursor, "app", "/bin/echo", envscript=envscript)
    (parent,) = add_jobs(cursor, [{"name": "p", "application": "app", "state": "JOB_FINISHED"}])
    (child,) = add_jobs(cursor, [{"name": "c", "application": "app", "state": "PREPROCESSED",
                                  "args": "a b", "environ_vars": "X=1", "num_nodes": 2}])
    cursor.execute(f"INSERT INTO {schema.DEP_TABLE} (parent_id, child_id) VALUES (%s, %s)",
                   [parent, child])
    database = Database(db)
    sid = database.run(open_session)
    source = source_for(db, database, sid)
    (spec,) = source.claim(5, serial=False, max_nodes=2)
    assert (spec.job_id, spec.app_argv, spec.envscript, spec.num_nodes) == (
        child, ["/bin/echo", "a", "b"], envscript, 2)
    assert spec.workdir == schema.working_directory(db, "wf", "c", child)
    assert spec.env["BALSAM_PARENT_IDS"] == f'["{parent}"]' and spec.env["X"] == "1"
    assert spec.env["KEEP"] == "1" and "PMI_RANK" not in spec.env
    add_jobs(cursor, [{"name": "d", "application": "app", "state": "PREPROCESSED"}])
    before = database.statements
    assert [s.name for s in source.claim(5, serial=False, max_nodes=2)] == ["d"]
    assert database.statements - before == 1  # claim with parents: the app came from the cache
    database.close()


def test_jobs_that_cannot_start_fail_with_the_reason_and_the_placer_releases_the_rest(db,
                                                                                      cursor):
    add_app(cursor, "app", "/bin/true")
    add_app(cursor, "noscript", "/bin/true", envscript="/nonexistent/env.sh")
    add_app(cursor, "quote", "/bin/echo 'unclosed")
    ids = add_jobs(cursor, [
        {"name": "ghost", "application": "gone", "state": "PREPROCESSED"},
        {"name": "noscript", "application": "noscript", "state": "PREPROCESSED"},
        {"name": "quote", "application": "quote", "state": "PREPROCESSED"},
        {"name": "big", "application": "app", "state": "PREPROCESSED", "num_nodes": 2},
        {"name": "small", "application": "app", "state": "PREPROCESSED"}])
    database = Database(db)
    sid = database.run(open_session)
    source = source_for(db, database, sid)

    def keep_big_only(rows):
        return [r for r in rows if r["name"] in ("big", "ghost", "noscript", "quote")]

    specs = database.run(source.claim_in, 10, serial=False, max_nodes=2, place=keep_big_only)
    assert [s.name for s in specs] == ["big"]
    rows = {job_row(cursor, j)["name"]: job_row(cursor, j) for j in ids}
    assert rows["small"]["state"] == "PREPROCESSED" and rows["small"]["session_id"] is None
    assert rows["big"]["session_id"] == sid
    reasons = {name: events(cursor, rows[name]["job_id"])[-1] for name in
               ("ghost", "noscript", "quote")}
    assert {n: (e[2], e[3]) for n, e in reasons.items()} == {
        "ghost": ("FAILED", "cannot start: application 'gone' does not exist"),
        "noscript": ("FAILED", "cannot start: envscript /nonexistent/env.sh of application "
                               "'noscript' does not exist"),
        "quote": ("FAILED", f"cannot start: cannot parse the command of job "
                            f"{str(rows['quote']['job_id'])[:8]}: No closing quotation")}
    assert source.failed == 3
    database.close()


def test_reconcile_times_out_unknown_running_jobs_and_releases_unknown_claims(claimed, db,
                                                                             cursor):
    database, sid, (a, b, c, d) = claimed
    database.run(leases.start, sid, [a, b])
    source = source_for(db, database, sid)
    assert database.run(source.reconcile_in, {b, d}) == (1, 1)
    assert job_row(cursor, a)["state"] == "RUN_TIMEOUT" and job_row(cursor, a)["session_id"] is None
    assert job_row(cursor, c)["session_id"] is None
    assert job_row(cursor, b)["session_id"] == sid and job_row(cursor, d)["session_id"] == sid
    assert "lost its database connection" in events(cursor, a)[-1][3]


# ---- settings, tunables, time -----------------------------------------------------------------

def test_settings_have_local_nodes_and_launcher_tunables_and_accept_whole_numbers(tmp_path):
    path = str(tmp_path)
    (tmp_path / "settings.yml").write_text(dbsettings.render_default(path))
    loaded = dbsettings.load(path)
    assert loaded["local_nodes"] == 1
    assert loaded["launcher"]["lease_seconds"] == 60
    assert loaded["launcher"]["max_concurrent_runs"] == 1000
    (tmp_path / "settings.yml").write_text("launcher:\n  heartbeat_seconds: 2\n")
    tunables = Tunables.from_settings(dbsettings.load(path)["launcher"])
    assert tunables.heartbeat_seconds == 2.0 and tunables.idle_exit_seconds == 10.0
    (tmp_path / "settings.yml").write_text("launcher:\n  lease_seconds: soon\n")
    with pytest.raises(BalsamError, match="`launcher.lease_seconds` must be a whole number, not 'soon'"):
        dbsettings.load(path)
    with pytest.raises(BalsamError, match="launcher.kill_grace_seconds must be a positive"):
        Tunables.from_settings(dict(dbsettings.defaults()["launcher"], kill_grace_seconds=0))


def test_remaining_time_takes_the_earlier_limit_less_a_bounded_margin():
    assert remaining_limit(0, None, 1000.0, 30) == (None, 0.0)
    assert remaining_limit(10, None, 1000.0, 30) == (570.0, 30)
    assert remaining_limit(10, 1300.0, 1000.0, 30) == (270.0, 30)
    assert remaining_limit(0.2, None, 1000.0, 30) == (9.0, 3.0)  # a quarter of a short limit
    assert remaining_limit(0, 900.0, 1000.0, 30) == (0.0, 0.0)


def make_context(db, database, sid, **kw):
    import logging

    tunables = Tunables.from_settings(dict(dbsettings.defaults()["launcher"], heartbeat_seconds=1,
                                           idle_exit_seconds=0.2, idle_wait_seconds=0.05))
    values = dict(db_path=db, settings={}, tunables=tunables,
                  alloc=Allocation(("n1",), 2, 0, "local", "", None), db=database,
                  session_id=sid, job_mode="mpi", wf_filter=None, persistent=False,
                  processing=True, gpus_per_node=0, stop=threading.Event(),
                  log=logging.getLogger("test"), base_env={}, flavour="mpich",
                  mpi_executable=None)
    values.update(kw)
    return Context(**values)


def test_the_deadline_stops_the_launcher_and_bounds_the_wall_time_of_claims(db):
    ctx = make_context(db, None, 0, stop_at=time.monotonic() + 90)
    assert 1.49 < ctx.max_wall_minutes() <= 1.5 and not ctx.should_stop()
    ctx.stop_at = time.monotonic() - 1
    assert ctx.should_stop() and ctx.stop_reason == "the launcher's time limit was reached"
    ctx = make_context(db, None, 0)
    assert ctx.max_wall_minutes() is None
    ctx.request_stop("the launcher received SIGTERM")
    assert ctx.should_stop() and ctx.stop_reason == "the launcher received SIGTERM"


def test_housekeeper_raises_session_lost_once_the_session_was_swept(db, cursor):
    database = Database(db)
    sid = database.run(open_session)
    house = Housekeeper(make_context(db, database, sid))
    house.beat()
    assert house.beats == 1
    leases.close_session(cursor, sid, "swept for the test")
    house.next_beat = 0.0
    with pytest.raises(SessionLost, match=f"session {sid} was closed by a sweep"):
        house.beat()
    database.close()


def test_idle_exit_only_after_the_idle_time_with_nothing_outstanding(db, cursor):
    database = Database(db)
    ctx = make_context(db, database, database.run(open_session))
    house = Housekeeper(ctx)  # it has run nothing yet: it waits for work to be submitted
    outstanding = [1]
    assert not house.idle_exit(lambda: outstanding[0], now=0.0)
    outstanding[0] = 0
    assert not house.idle_exit(lambda: outstanding[0], now=0.1)
    assert not house.idle_exit(lambda: outstanding[0], now=0.2)
    assert house.idle_exit(lambda: outstanding[0], now=0.31)
    assert ctx.exit_reason == "idle for 0.2 s with nothing to run"
    ctx.persistent = True
    assert not Housekeeper(ctx).idle_exit(lambda: 0, now=100.0)
    ctx.persistent = False
    other = leases.open_session(cursor, hostname="other", pid=2, job_mode="serial",
                                num_nodes=1, lease_seconds=60)
    house = Housekeeper(ctx)  # it has run something, but another launcher could add work
    house.busy()
    assert not house.idle_exit(lambda: 0, now=0.0)
    assert not house.idle_exit(lambda: 0, now=0.1)
    assert house.idle_exit(lambda: 0, now=0.31)
    assert ctx.exit_reason == "idle for 0.2 s with nothing to run"
    leases.close_session(cursor, other)
    database.close()


def test_a_launcher_whose_work_is_done_exits_at_once_when_nothing_can_add_more(db, cursor):
    add_app(cursor, "app", "true")
    database = Database(db)
    sid = database.run(open_session)
    ctx = make_context(db, database, sid, wf_filter="mine")
    # Its own transition workers (same host and pid) and jobs outside its filter do not count.
    leases.open_session(cursor, hostname="host", pid=1, job_mode="processing", num_nodes=0,
                        lease_seconds=60)
    add_jobs(cursor, [{"name": "x", "workflow": "theirs", "application": "app",
                       "state": "PREPROCESSED"}])

    def outstanding():
        return database.run(transitions.outstanding, sid, "mine", serial=False, max_nodes=1)

    house = Housekeeper(ctx)
    house.busy()
    assert house.idle_exit(outstanding, now=0.0)
    assert ctx.exit_reason == "nothing left to run and no other launcher or service to add work"
    database.close()


def test_a_finished_launcher_stays_while_work_can_still_come(db, cursor):
    """A child waiting on a parent another launcher runs, a child whose parent processing will
    finish, or a running service: no early exit."""
    add_app(cursor, "app", "true")
    parent, child = add_jobs(cursor, [
        {"name": "parent", "application": "app", "state": "PREPROCESSED"},
        {"name": "child", "application": "app", "state": "CREATED"}])
    lifecycle.add_dependency(cursor, parent, child)
    lifecycle.transition(cursor, [child], "AWAITING_PARENTS")
    other = leases.open_session(cursor, hostname="other", pid=2, job_mode="serial",
                                num_nodes=1, lease_seconds=60)
    leases.claim(cursor, other, 1, serial=True, max_nodes=1)
    leases.start(cursor, other, [parent])
    database = Database(db)
    sid = database.run(open_session)
    ctx = make_context(db, database, sid)

    def outstanding(processing=True):
        return database.run(transitions.outstanding, sid, None, serial=False, max_nodes=1,
                            processing=processing)

    for processing in (True, False):  # waiting on a running parent: processing or not
        house = Housekeeper(ctx)
        house.busy()
        assert not house.idle_exit(lambda p=processing: outstanding(p), now=0.0)
        assert not house.idle_exit(lambda p=processing: outstanding(p), now=0.05)
    leases.finish(cursor, other, [parent], lifecycle.State.RUN_DONE)
    leases.close_session(cursor, other)
    house = Housekeeper(ctx)
    house.busy()  # the parent's processing is still to come, then the child's run
    assert outstanding() == 2 and not house.idle_exit(outstanding, now=0.0)
    cursor.execute("SELECT pg_advisory_lock(%s)", [leases.SERVICE_LOCK_KEY])
    try:
        assert database.run(leases.others_alive, sid)
        house = Housekeeper(ctx)
        house.busy()  # a running service may add work
        assert not house.idle_exit(lambda: 0, now=0.0)
        assert house.idle_since == 0.0
    finally:
        cursor.execute("SELECT pg_advisory_unlock(%s)", [leases.SERVICE_LOCK_KEY])
    assert not database.run(leases.others_alive, sid)
    database.close()


def test_the_launcher_knows_the_service_lock_key():
    from balsam.service import control

    assert leases.SERVICE_LOCK_KEY == control.LOCK_KEY


def test_a_silent_session_holding_runnable_jobs_keeps_a_launcher_up_and_is_swept_on_time(
        db, cursor):
    add_app(cursor, "app", "true")
    (job_id,) = add_jobs(cursor, [{"name": "held", "application": "app",
                                   "state": "PREPROCESSED"}])
    dead = open_session(cursor, lease_seconds=1)
    leases.claim(cursor, dead, 1, serial=False, max_nodes=1)
    cursor.execute(f"UPDATE {schema.SESSION_TABLE} SET heartbeat = now() - interval '1 hour', "
                   "started_at = now() - interval '1 hour' WHERE id = %s", [dead])
    database = Database(db)
    house = Housekeeper(make_context(db, database, database.run(open_session)))
    for now in (0.0, 0.1, 0.2, 0.31):
        assert not house.idle_exit(lambda: 0, now=now)
    assert house.next_sweep is not None and house.due_in(0.31) < 1.5
    time.sleep(house.due_in(0.31))  # the database's clock must pass the expiry too
    house.beat(now=house.next_sweep)
    assert job_row(cursor, job_id)["session_id"] is None  # swept: the claim is released
    database.close()


# ---- the command line -------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--job-mode", "mpi"], "one of the arguments --consume-all --wf-filter is required"),
    (["--consume-all", "--wf-filter", "x", "--job-mode", "mpi"],
     "argument --wf-filter: not allowed with argument --consume-all"),
    (["--consume-all"], "the following arguments are required: --job-mode"),
    (["--consume-all", "--job-mode", "fast"], "argument --job-mode: invalid choice: 'fast'"),
    (["--consume-all", "--job-mode", "mpi", "--time-limit-minutes", "-1"],
     "argument --time-limit-minutes: '-1' must be a finite number >= 0"),
    (["--consume-all", "--job-mode", "mpi", "--limit-nodes", "0"],
     "argument --limit-nodes: '0' must be a finite number >= 1"),
    (["--consume-all", "--job-mode", "mpi", "--gpus-per-node", "two"],
     "argument --gpus-per-node: 'two' is not a whole number"),
    (["--consume-all", "--job-mode", "mpi", "--offset-nodes", "5"],
     "--offset-nodes 5 is out of range: the allocation has 1 node(s), so it must be 0..0"),
    (["--wf-filter", " ", "--job-mode", "mpi"],
     "--wf-filter needs a non-empty workflow name (or use --consume-all)"),
])
def test_bad_launcher_arguments_are_one_line_errors_with_status_2(db, args, message):
    proc = run_balsam("launcher", *args, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_a_launcher_refused_for_its_arguments_opens_no_session(db, cursor):
    proc = run_balsam("launcher", "--consume-all", "--job-mode", "mpi", "--offset-nodes", "3")
    assert proc.returncode == 2
    cursor.execute(f"SELECT count(*) FROM {schema.SESSION_TABLE}")
    assert cursor.fetchone()[0] == 0
