"""A run that started and ended between two writes is recorded with one job-row update (RUNNING,
then its end, both events) -- and stays exact where it can go wrong: a user's kill before the
write refuses the start (reported in ``Written.not_started``; the job stays USER_KILLED and
the run is recorded after the kill, :mod:`balsam.core.killed_starts`), and a batch written
again after a lost commit reply changes nothing and is reported as written, not as refused."""
from __future__ import annotations

import pytest
from launcher_support import add_app, add_jobs, events, job_row

from balsam.core import leases, lifecycle
from balsam.db.database import Database
from balsam.launcher.status import StatusBuffer
from balsam.processing import transitions


@pytest.fixture
def claimed(db, cursor):
    """(database, session id, ids of 4 jobs claimed by that session)."""
    add_app(cursor, "app", "true")
    add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                      for i in range(4)])
    database = Database(db)
    sid = database.run(leases.open_session, hostname="h", pid=1, job_mode="serial",
                       num_nodes=1, lease_seconds=60)
    rows = database.run(leases.claim, sid, 10, serial=True, max_nodes=1)
    yield database, sid, sorted(r["job_id"] for r in rows)
    database.close()


def _run_events(cursor, job_id):
    return [e[2] for e in events(cursor, job_id)][1:]  # after the created-in-state event


def test_runs_that_started_and_ended_between_writes_take_one_update_each(claimed, cursor):
    database, sid, (a, b, _, _) = claimed
    status = StatusBuffer(database, sid, follow=transitions.FINISH_ON_RECORD)
    status.started([a, b])
    status.done(a)
    status.error(b, "exit code 1:\nboom")
    cursor.execute("SELECT job_id::text, xmin::text FROM core_balsamjob "
                   "WHERE job_id = ANY(%s::uuid[])", [[a, b]])
    before = dict(cursor.fetchall())
    written = status.flush()
    assert written.started == [a, b] and written.not_started == [] and written.ended == 2
    cursor.execute("SELECT job_id::text, xmin::text, ctid::text FROM core_balsamjob "
                   "WHERE job_id = ANY(%s::uuid[])", [[a, b]])
    after = {j: x for j, x, _ in cursor.fetchall()}
    assert after[a] != before[a] and after[a] == after[b]  # one transaction wrote both rows
    assert _run_events(cursor, a) == ["RUNNING", "RUN_DONE", "JOB_FINISHED"]
    assert _run_events(cursor, b) == ["RUNNING", "RUN_ERROR"]


def test_a_killed_job_whose_run_started_and_ended_between_writes_is_not_started(claimed,
                                                                                cursor):
    database, sid, (a, b, _, _) = claimed
    lifecycle.kill(cursor, [a])
    status = StatusBuffer(database, sid, follow=transitions.FINISH_ON_RECORD)
    status.started([a, b])
    status.done(a)
    status.done(b)
    written = status.flush()
    assert written.started == [b] and written.not_started == [a] and written.ended == 1
    assert job_row(cursor, a)["state"] == "USER_KILLED"
    # the run began after the kill: recorded after it, the job still killed (killed_starts)
    assert _run_events(cursor, a) == ["USER_KILLED", "RUNNING", "USER_KILLED"]
    assert _run_events(cursor, b) == ["RUNNING", "RUN_DONE", "JOB_FINISHED"]


def test_a_batch_of_whole_runs_written_again_changes_nothing_and_reports_them_written(
        claimed, cursor):
    database, sid, (a, b, c, _) = claimed
    lifecycle.kill(cursor, [c])
    status = StatusBuffer(database, sid, follow=transitions.FINISH_ON_RECORD)
    status.started([a, b, c])
    status.done(a)
    status.timeout(b, "stopped")
    status.done(c)
    batch = status.take()
    first = database.run(status.write, batch)
    again = database.run(status.write, batch)  # as after a commit whose reply was lost
    for written in (first, again):
        assert written.started == [a, b] and written.not_started == [c]
        assert written.ended == 2
    assert _run_events(cursor, a) == ["RUNNING", "RUN_DONE", "JOB_FINISHED"]
    assert _run_events(cursor, b) == ["RUNNING", "RUN_TIMEOUT"]
    assert _run_events(cursor, c) == ["USER_KILLED", "RUNNING", "USER_KILLED"]  # recorded once
    assert [job_row(cursor, j)["state"] for j in (a, b, c)] == [
        "JOB_FINISHED", "RUN_TIMEOUT", "USER_KILLED"]


def test_the_moves_statement_allows_exactly_the_table_s_pairs_into_its_targets():
    import random
    import uuid

    from balsam.core import launcher_moves
    from balsam.core.states import State, allowed_sources

    rng = random.Random(5)
    ends = [State.RUN_DONE, State.RUN_ERROR, State.RUN_TIMEOUT]
    for _ in range(100):
        moves = []
        for _ in range(rng.randint(1, 12)):
            job, end, kind = str(uuid.UUID(int=rng.getrandbits(128))), rng.choice(ends), rng.random()
            moves.append((job, State.RUNNING, "s") if kind < 0.3 else (job, end, "m")
                         if kind < 0.6 else (job, end, "m", State.RUNNING, "s"))
        for follow in (None, transitions.FINISH_ON_RECORD):
            _, params = launcher_moves.moves_sql(moves, 7, follow)
            hops = {m[1] for m in moves} | {State.RUNNING for m in moves if len(m) == 5}
            want = sorted((s.value, t.value) for t in hops for s in allowed_sources(t)
                          if s.value in launcher_moves.LAUNCHER_MOVES[t])
            # (the arrays go as array literals: tests/test_moves_literals.py)
            text = launcher_moves.array_literal
            assert (params[7], params[8]) == (text([p[0] for p in want]), text([p[1] for p in want]))
            assert params[0] == text([m[0] for m in moves])
            assert params[1] == text([m[1].value for m in moves])
            assert params[3] == text([m[3].value if len(m) == 5 else "" for m in moves])
            then = {State.RUN_DONE: State.JOB_FINISHED.value} if follow else {}
            assert params[5] == text([then.get(m[1], "") for m in moves])
