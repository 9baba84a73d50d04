"""The one state writer (balsam.core.lifecycle) used directly on plain psycopg2 cursors."""
from __future__ import annotations

import multiprocessing
import random
import threading
import time
import uuid

import pytest

from balsam.core import bulk, lifecycle, schema
from balsam.core.states import InvalidStateError
from balsam.errors import BalsamError


def add_jobs(cur, count, state="CREATED", **values):
    """Insert ``count`` jobs in ``state`` (no events recorded); return their ids as strings."""
    rows = [schema.new_job_row(dict(values, name=f"{values.get('name', 'j')}{i}")) for i in range(count)]
    bulk.copy_jobs(cur, rows)
    ids = [str(r["job_id"]) for r in rows]
    if state != "CREATED":
        cur.execute("UPDATE core_balsamjob SET state = %s WHERE job_id = ANY(%s::uuid[])", [state, ids])
    return ids


def states_of(cur, ids):
    cur.execute("SELECT job_id::text, state FROM core_balsamjob WHERE job_id = ANY(%s::uuid[])", [ids])
    return dict(cur.fetchall())


def events_of(cur, ids):
    cur.execute("SELECT job_id::text, from_state, to_state, message FROM core_jobevent "
                "WHERE job_id = ANY(%s::uuid[]) ORDER BY id", [ids])
    return cur.fetchall()


def test_transition_moves_jobs_and_records_per_job_messages(cursor):
    ids = add_jobs(cursor, 3)
    moved = lifecycle.transition(cursor, ids, "READY", {ids[0]: "first", uuid.UUID(ids[1]): "second"})
    assert sorted(moved) == sorted((i, "CREATED") for i in ids)
    assert states_of(cursor, ids) == dict.fromkeys(ids, "READY")
    assert sorted(events_of(cursor, ids)) == sorted([
        (ids[0], "CREATED", "READY", "first"), (ids[1], "CREATED", "READY", "second"),
        (ids[2], "CREATED", "READY", "")])
    lifecycle.transition(cursor, ids, "STAGED_IN", "same for all")
    assert [e[3] for e in events_of(cursor, ids)[3:]] == ["same for all"] * 3


def test_event_time_is_the_time_of_the_change(cursor):
    (job,) = add_jobs(cursor, 1)
    cursor.execute("SELECT clock_timestamp()")
    before = cursor.fetchone()[0]
    lifecycle.transition(cursor, [job], "READY")
    cursor.execute("SELECT clock_timestamp()")
    after = cursor.fetchone()[0]
    cursor.execute("SELECT timestamp FROM core_jobevent WHERE job_id = %s", [job])
    assert before <= cursor.fetchone()[0] <= after


def test_mixed_allowed_and_disallowed_jobs_only_allowed_move(cursor):
    created = add_jobs(cursor, 2, name="c")
    running = add_jobs(cursor, 2, "RUNNING", name="r")
    finished = add_jobs(cursor, 1, "JOB_FINISHED", name="f")
    killed = add_jobs(cursor, 1, "USER_KILLED", name="k")
    missing = str(uuid.uuid4())
    everything = created + running + finished + killed + [missing]
    moved = lifecycle.transition(cursor, everything, "FAILED", "bad")
    assert sorted(moved) == sorted((j, "CREATED") for j in created)  # RUNNING -> FAILED: not allowed
    states = states_of(cursor, everything)
    assert [states[j] for j in running] == ["RUNNING", "RUNNING"]
    assert states[finished[0]] == "JOB_FINISHED" and states[killed[0]] == "USER_KILLED"
    assert sorted(e[0] for e in events_of(cursor, everything)) == sorted(created)
    moved = lifecycle.transition(cursor, everything, "RUN_ERROR", {j: f"tail {j[:4]}" for j in running})
    assert sorted(moved) == sorted((j, "RUNNING") for j in running)
    assert sorted(e[3] for e in events_of(cursor, running)) == sorted(f"tail {j[:4]}" for j in running)


def test_an_empty_request_or_no_allowed_source_does_nothing(cursor):
    ids = add_jobs(cursor, 1)
    assert lifecycle.transition(cursor, [], "READY") == []
    assert lifecycle.transition(cursor, ids, "RUNNING", user=True) == []
    assert lifecycle.transition(cursor, ids, "READY", sources=["RUNNING"]) == []
    assert states_of(cursor, ids) == {ids[0]: "CREATED"}
    assert events_of(cursor, ids) == []


def test_a_job_named_twice_moves_once(cursor):
    ids = add_jobs(cursor, 1)
    assert lifecycle.transition(cursor, ids * 2, "READY") == [(ids[0], "CREATED")]
    assert len(events_of(cursor, ids)) == 1


def test_sources_narrow_the_allowed_states(cursor):
    created = add_jobs(cursor, 1, name="c")
    ready = add_jobs(cursor, 1, "READY", name="r")
    moved = lifecycle.transition(cursor, created + ready, "FAILED", sources=["READY"])
    assert moved == [(ready[0], "READY")]
    assert states_of(cursor, created) == {created[0]: "CREATED"}
    with pytest.raises(InvalidStateError, match="invalid state 'NOPE'"):
        lifecycle.transition(cursor, created, "FAILED", sources=["NOPE"])
    # sources never widen the table: FAILED has no system exit
    assert lifecycle.transition(cursor, ready, "READY", sources=["FAILED"]) == []


def test_user_rules_and_force(cursor):
    finished = add_jobs(cursor, 1, "JOB_FINISHED", name="f")
    killed = add_jobs(cursor, 1, "USER_KILLED", name="k")
    assert lifecycle.transition(cursor, finished + killed, "RESTART_READY") == []
    assert lifecycle.transition(cursor, finished + killed, "RESTART_READY", user=True) == [
        (finished[0], "JOB_FINISHED")]
    assert lifecycle.transition(cursor, killed, "RESTART_READY", user=True, force=True) == [
        (killed[0], "USER_KILLED")]


def test_transition_one_returns_the_old_state_or_says_why_not(cursor):
    (job,) = add_jobs(cursor, 1)
    assert lifecycle.transition_one(cursor, job, "READY", "ok") == "CREATED"
    with pytest.raises(InvalidStateError, match=f"job {job[:8]} cannot move from READY to RUN_DONE"):
        lifecycle.transition_one(cursor, job, "RUN_DONE")
    lifecycle.transition_one(cursor, job, "USER_KILLED")
    with pytest.raises(InvalidStateError, match="was killed by a user"):
        lifecycle.transition_one(cursor, job, "READY", user=True)
    missing = uuid.uuid4()
    with pytest.raises(InvalidStateError, match=f"job {missing} does not exist"):
        lifecycle.transition_one(cursor, missing, "READY")


def test_a_failed_transaction_leaves_neither_state_nor_event(db):
    from balsam.db.connect import connect

    conn = connect(db)
    try:
        with conn.cursor() as cur:
            ids = add_jobs(cur, 2)
            conn.commit()
            lifecycle.transition(cur, ids, "READY")
            conn.rollback()
            assert states_of(cur, ids) == dict.fromkeys(ids, "CREATED")
            assert events_of(cur, ids) == []
    finally:
        conn.close()


def _race(db, ids, target, barrier, out, seed):
    """Move each job RUNNING -> target one at a time (autocommit), in a shuffled order."""
    from balsam.db.connect import connect

    conn = connect(db, autocommit=True)
    order = list(ids)
    random.Random(seed).shuffle(order)
    won = []
    with conn.cursor() as cur:
        barrier.wait()
        for start in range(0, len(order), 5):
            won += [j for j, _ in lifecycle.transition(cur, order[start:start + 5], target,
                                                       f"by {target}", sources=["RUNNING"])]
    conn.close()
    out.put((target, won))


def test_concurrent_processes_never_both_move_the_same_job(db, cursor):
    ids = add_jobs(cursor, 200, "RUNNING")
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(db, ids, target, barrier, out, seed))
             for seed, target in enumerate(["RUN_DONE", "USER_KILLED"])]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    done, killed = set(results["RUN_DONE"]), set(results["USER_KILLED"])
    assert not done & killed
    assert done | killed == set(ids)
    assert len(results["RUN_DONE"]) == len(done) and len(results["USER_KILLED"]) == len(killed)
    evs = events_of(cursor, ids)
    assert len(evs) == 200  # exactly one event out of RUNNING per job
    assert {e[0] for e in evs} == set(ids)
    assert all(e[1] == "RUNNING" for e in evs)
    states = states_of(cursor, ids)
    assert all(states[j] == "RUN_DONE" for j in done) and all(states[j] == "USER_KILLED" for j in killed)
    assert all(e[3] == f"by {e[2]}" for e in evs)


def test_concurrent_threads_with_one_big_statement_each(db, cursor):
    from balsam.db.connect import connect

    ids = add_jobs(cursor, 200, "PREPROCESSED")
    results: dict = {}
    barrier = threading.Barrier(2)

    def claim(name):
        conn = connect(db)
        with conn.cursor() as cur:
            barrier.wait()
            results[name] = lifecycle.transition(cur, list(reversed(ids)) if name == "b" else ids,
                                                 "RUNNING", f"launcher {name}")
            time.sleep(0.05)  # hold the row locks a moment so the other statement waits on them
            conn.commit()
        conn.close()

    threads = [threading.Thread(target=claim, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    a, b = {j for j, _ in results["a"]}, {j for j, _ in results["b"]}
    assert not a & b and a | b == set(ids)
    assert len(events_of(cursor, ids)) == 200


def test_kill_recursive_over_a_tree(cursor):
    root, a, b, c, d, done, other = add_jobs(cursor, 7)
    for parent, child in [(root, a), (root, b), (a, c), (c, d), (b, d), (a, done)]:
        lifecycle.add_dependency(cursor, parent, child)
    lifecycle.transition(cursor, [done], "FAILED")
    killed = lifecycle.kill(cursor, [root], recursive=True, message="stop all")
    assert sorted(killed) == sorted([root, a, b, c, d])
    states = states_of(cursor, [root, a, b, c, d, done, other])
    assert states == {root: "USER_KILLED", a: "USER_KILLED", b: "USER_KILLED", c: "USER_KILLED",
                      d: "USER_KILLED", done: "FAILED", other: "CREATED"}
    assert {e[3] for e in events_of(cursor, killed)} == {"stop all"}
    assert lifecycle.kill(cursor, [root], recursive=True) == []  # already killed: nothing to do


def test_kill_without_recursion_touches_only_the_named_jobs(cursor):
    parent, child = add_jobs(cursor, 2)
    lifecycle.add_dependency(cursor, parent, child)
    running = add_jobs(cursor, 1, "RUNNING", name="r")
    assert sorted(lifecycle.kill(cursor, [parent] + running)) == sorted([parent] + running)
    assert states_of(cursor, [child]) == {child: "CREATED"}
    cursor.execute("SELECT message FROM core_jobevent WHERE job_id = %s", [parent])
    assert cursor.fetchone()[0] == "Killed by user"


def test_delete_jobs_fails_waiting_children_with_the_parent_named(cursor):
    p1, p2, waiting, running, kept = add_jobs(cursor, 5)
    lifecycle.add_dependency(cursor, p1, waiting)
    lifecycle.add_dependency(cursor, p2, waiting)
    lifecycle.add_dependency(cursor, p1, running)
    cursor.execute("UPDATE core_balsamjob SET state = 'RUNNING' WHERE job_id = %s", [running])
    assert lifecycle.delete_jobs(cursor, [p1, p2]) == 2
    assert states_of(cursor, [waiting, running, kept]) == {
        waiting: "FAILED", running: "RUNNING", kept: "CREATED"}
    (ev,) = events_of(cursor, [waiting])
    assert ev[1:3] == ("CREATED", "FAILED")
    assert ev[3].startswith("parent job removed: ")
    assert f"j0 {p1[:8]}" in ev[3] and f"j1 {p2[:8]}" in ev[3]
    cursor.execute("SELECT count(*) FROM core_jobdependency")
    assert cursor.fetchone()[0] == 0
    assert lifecycle.delete_jobs(cursor, []) == 0


def test_add_dependency_refusals(cursor):
    a, b = add_jobs(cursor, 2)
    started = add_jobs(cursor, 1, "READY", name="s")[0]
    with pytest.raises(BalsamError, match="cannot depend on itself"):
        lifecycle.add_dependency(cursor, a, a)
    with pytest.raises(BalsamError, match="parent job .* does not exist"):
        lifecycle.add_dependency(cursor, uuid.uuid4(), a)
    with pytest.raises(BalsamError, match="child job .* does not exist"):
        lifecycle.add_dependency(cursor, a, uuid.uuid4())
    with pytest.raises(BalsamError, match=f"child job {started[:8]} is already READY"):
        lifecycle.add_dependency(cursor, a, started)
    lifecycle.add_dependency(cursor, a, b)
    with pytest.raises(BalsamError, match=f"job {b[:8]} already depends on {a[:8]}"):
        lifecycle.add_dependency(cursor, a, b)
    with pytest.raises(BalsamError, match="would create a cycle"):
        lifecycle.add_dependency(cursor, b, a)
    cursor.execute("SELECT parent_id::text, child_id::text FROM core_jobdependency")
    assert cursor.fetchall() == [(a, b)]


def test_a_cycle_through_a_10000_job_chain_is_rejected(db):
    from balsam.db.connect import connect

    conn = connect(db)
    try:
        with conn.cursor() as cur:
            chain = add_jobs(cur, 10_000)
            bulk.insert_edges(cur, list(zip(chain[:-2], chain[1:-1])))
            lifecycle.add_dependency(cur, chain[-2], chain[-1])  # extending the deep end is fine
            conn.commit()
            with pytest.raises(BalsamError, match="would create a cycle"):
                lifecycle.add_dependency(cur, chain[-1], chain[0])
            conn.rollback()
            lifecycle.add_dependency(cur, chain[0], chain[-1])  # a shortcut is no cycle
            conn.commit()
            cur.execute("SELECT count(*) FROM core_jobdependency")
            assert cur.fetchone()[0] == 10_000
    finally:
        conn.close()


def test_set_parents_replaces_edges(cursor):
    a, b, c = add_jobs(cursor, 3)
    lifecycle.set_parents(cursor, c, [a, a, b])
    cursor.execute("SELECT parent_id::text FROM core_jobdependency WHERE child_id = %s ORDER BY id", [c])
    assert [r[0] for r in cursor.fetchall()] == [a, b]
    lifecycle.set_parents(cursor, c, [b])
    cursor.execute("SELECT parent_id::text FROM core_jobdependency WHERE child_id = %s", [c])
    assert [r[0] for r in cursor.fetchall()] == [b]


def test_check_new_edges(cursor):
    (old,) = add_jobs(cursor, 1)
    x, y = str(uuid.uuid4()), str(uuid.uuid4())
    new = {x: "CREATED", y: "CREATED"}
    assert lifecycle.check_new_edges(cursor, [(old, x), (x, y), (x, y)], new) == [(old, x), (x, y)]
    with pytest.raises(BalsamError, match="cycle"):
        lifecycle.check_new_edges(cursor, [(x, y), (y, x)], new)
    with pytest.raises(BalsamError, match="cannot depend on itself"):
        lifecycle.check_new_edges(cursor, [(x, x)], new)
    with pytest.raises(BalsamError, match="does not exist"):
        lifecycle.check_new_edges(cursor, [(str(uuid.uuid4()), x)], new)
    with pytest.raises(BalsamError, match="is not new"):
        lifecycle.check_new_edges(cursor, [(x, old)], new)
    with pytest.raises(BalsamError, match="is READY"):
        lifecycle.check_new_edges(cursor, [(old, x)], {x: "READY"})


def test_record_created(cursor):
    a, b = add_jobs(cursor, 2)
    lifecycle.record_created(cursor, [(a, "PREPROCESSED"), (b, "CREATED")])
    assert events_of(cursor, [a, b]) == [(a, "CREATED", "PREPROCESSED", "created in this state")]


def test_concurrent_edges_cannot_close_a_cycle_together(db, cursor):
    from balsam.db.connect import connect

    a, b, c = add_jobs(cursor, 3)
    outcome: dict = {}
    barrier = threading.Barrier(3)

    def add(parent, child):
        conn = connect(db)
        try:
            with conn.cursor() as cur:
                barrier.wait()
                try:
                    lifecycle.add_dependency(cur, parent, child)
                    time.sleep(0.2)  # commit late: the others must not decide before this one ends
                    conn.commit()
                    outcome[(parent, child)] = "added"
                except BalsamError as exc:
                    conn.rollback()
                    outcome[(parent, child)] = str(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=add, args=edge) for edge in [(a, b), (b, c), (c, a)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(outcome.values()).count("added") == 2
    assert sum("would create a cycle" in v for v in outcome.values()) == 1
    cursor.execute("SELECT count(*) FROM core_jobdependency")
    assert cursor.fetchone()[0] == 2
