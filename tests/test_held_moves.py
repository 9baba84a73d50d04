"""A user may move a job a live launcher session holds only by killing it (real PostgreSQL, the
real CLI): any other move released the hold, and another launcher could claim the job and run
it while the first still ran it (a double run, the first run left out of the history). Once the
holder's lease expired (the sweep's rule) the user's rules apply as before."""
from __future__ import annotations

import pytest
from cli_support import assert_one_line_error, events, snapshot
from conftest import run_balsam
from launcher_support import add_app, add_jobs, job_row
from test_launcher_common import open_session

from balsam.core import leases, lifecycle, schema
from balsam.core.states import InvalidStateError
from balsam.db.database import Database


@pytest.fixture
def held(db, cursor):
    """(database, session id, [a claimed PREPROCESSED job, a RUNNING one]) of a live session."""
    add_app(cursor, "app", "true")
    ids = add_jobs(cursor, [{"name": f"h{i}", "application": "app", "state": "PREPROCESSED"}
                            for i in range(2)])
    database = Database(db)
    sid = database.run(open_session)
    claimed = sorted(r["job_id"] for r in database.run(leases.claim, sid, 10, serial=False,
                                                      max_nodes=2))
    assert claimed == sorted(ids)
    assert database.run(leases.start, sid, claimed[1:], "launcher session started") == claimed[1:]
    yield database, sid, claimed
    database.close()


def expire(cursor, sid: int) -> None:
    """The session's lease runs out (heartbeat an hour old, lease 0 s): its launcher is gone."""
    cursor.execute(f"UPDATE {schema.SESSION_TABLE} SET heartbeat = heartbeat - interval '1 hour', "
                   "lease_seconds = 0 WHERE id = %s", [sid])


def test_a_user_cannot_move_a_job_a_live_session_holds_even_forced(held, cursor):
    database, sid, (claimed, running) = held
    for job_id, force in ((claimed, False), (claimed, True), (running, True)):
        assert lifecycle.transition(cursor, [job_id], "READY", user=True, force=force) == []
        with pytest.raises(InvalidStateError, match=f"held by the live launcher session {sid}"):
            lifecycle.transition_one(cursor, job_id, "RESTART_READY", user=True, force=force)
    assert [job_row(cursor, j)["session_id"] for j in (claimed, running)] == [sid, sid]
    assert [job_row(cursor, j)["state"] for j in (claimed, running)] == ["PREPROCESSED",
                                                                         "RUNNING"]
    # so no other launcher can claim either job (before, a move to READY or RESTART_READY
    # released it: runnable again, claimed and run by another launcher while the first ran it)
    other = database.run(open_session)
    assert database.run(leases.claim, other, 10, serial=False, max_nodes=2) == []
    # A kill is the one move allowed: the job stays held, so its launcher finds and stops it.
    assert lifecycle.transition(cursor, [claimed], "USER_KILLED", user=True) == [
        (claimed, "PREPROCESSED")]
    assert lifecycle.kill(cursor, [running]) == [running]
    assert [job_row(cursor, j)["session_id"] for j in (claimed, running)] == [sid, sid]
    # A killed job its launcher has not let go yet (its task may still run) stays killed too.
    with pytest.raises(InvalidStateError, match="held by the live launcher session"):
        lifecycle.transition_one(cursor, running, "RESTART_READY", user=True, force=True)


def test_once_the_holders_lease_expired_the_user_rules_apply_again(held, cursor):
    _, sid, (claimed, running) = held
    expire(cursor, sid)
    assert lifecycle.transition(cursor, [claimed], "READY", user=True) == [
        (claimed, "PREPROCESSED")]
    assert lifecycle.transition(cursor, [running], "READY", user=True) == []  # RUNNING: force
    assert lifecycle.transition_one(cursor, running, "READY", user=True, force=True) == "RUNNING"
    assert [job_row(cursor, j)["session_id"] for j in (claimed, running)] == [None, None]


def test_a_released_job_moves_as_before(held, cursor):
    database, sid, (claimed, _) = held
    assert database.run(leases.release, sid, [claimed]) == 1
    assert lifecycle.transition_one(cursor, claimed, "READY", user=True) == "PREPROCESSED"


def test_balsam_modify_state_of_a_held_job_is_refused_in_one_line(held, cursor):
    _, sid, (claimed, running) = held
    before = snapshot(cursor)
    for job_id, extra in ((claimed, ()), (running, ("--force",))):
        assert_one_line_error(run_balsam("modify", job_id, "state", "READY", *extra),
                              f"held by the live launcher session {sid}: it can only be killed")
    assert snapshot(cursor) == before
    proc = run_balsam("modify", claimed, "state", "USER_KILLED")
    assert proc.returncode == 0, proc.stderr
    assert events(cursor, claimed)[-1][:2] == ("PREPROCESSED", "USER_KILLED")


def test_a_handler_may_still_set_the_state_of_the_job_its_worker_holds(held, cursor):
    """A transition worker holds a job in the state it processes (here RUN_ERROR); the job's
    error handler script may decide its outcome itself (classic handler semantics)."""
    _, sid, _ = held
    (job_id,) = add_jobs(cursor, [{"name": "e", "application": "app", "state": "RUN_ERROR"}])
    cursor.execute(f"UPDATE {schema.JOB_TABLE} SET session_id = %s WHERE job_id = %s",
                   [sid, job_id])
    assert lifecycle.transition_one(cursor, job_id, "RESTART_READY", "handler: try again",
                                    user=True) == "RUN_ERROR"
    assert job_row(cursor, job_id)["session_id"] is None


def test_a_job_a_live_session_holds_is_not_removed_until_its_launcher_lets_it_go(held, cursor):
    """Removed while held, a job's launcher would no longer find it: a kill could not reach
    its task, which would run on unwatched. `rm` refuses in one line and removes nothing
    (the queryset's delete and `lifecycle.delete_jobs` too); once let go, it goes."""
    from balsam.core.models import BalsamJob

    _, sid, (claimed, running) = held
    (free,) = add_jobs(cursor, [{"name": "free", "application": "app", "state": "READY"}])
    before = snapshot(cursor)
    assert_one_line_error(run_balsam("rm", "jobs", "--name", "", "--yes"),
                          f"is held by the live launcher session {sid}", "(and 1 more)",
                          "nothing removed")
    assert_one_line_error(run_balsam("rm", "job", "--id", claimed, "--yes"),
                          f"{claimed[:8]} is held by the live launcher session {sid}")
    assert snapshot(cursor) == before  # the free job too: one transaction, nothing removed
    with pytest.raises(InvalidStateError, match="held by the live launcher session"):
        BalsamJob.objects.filter(pk__in=[running, free]).delete()
    assert lifecycle.kill(cursor, [running]) == [running]  # killed, not yet let go: still held
    with pytest.raises(InvalidStateError, match=f"{running[:8]} is held"):
        lifecycle.delete_jobs(cursor, [running])
    assert snapshot(cursor) != before and job_row(cursor, running)["state"] == "USER_KILLED"
    expire(cursor, sid)  # its launcher is gone: the user's rules apply again
    proc = run_balsam("rm", "jobs", "--name", "", "--yes")
    assert proc.returncode == 0, proc.stderr
    cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE}")
    assert cursor.fetchone()[0] == 0
