"""Launcher sessions: claims never overlap, holds follow states, expired sessions are swept."""
from __future__ import annotations

import select
import threading
import time

import pytest

from balsam.core import leases, lifecycle
from balsam.core.states import State
from balsam.db.connect import connect


@pytest.fixture
def app(db):
    from balsam.core.models import ApplicationDefinition

    return ApplicationDefinition.objects.create(name="app", executable="true")


def make_jobs(n, state="PREPROCESSED", **fields):
    from balsam.core.models import BalsamJob

    values = {"workflow": "wf", "application": "app", "state": state, **fields}
    return BalsamJob.objects.bulk_create([BalsamJob(name=f"j{i}", **values) for i in range(n)])


def session(cursor, lease_seconds=60, mode="mpi"):
    return leases.open_session(cursor, hostname="host", pid=123, job_mode=mode, num_nodes=4,
                               lease_seconds=lease_seconds)


def wait_for_sql(cursor, query, timeout=60.0):
    """Poll ``query`` (one boolean) until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        cursor.execute(query)
        if cursor.fetchone()[0]:
            return
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {query}"
        time.sleep(0.05)


def holders(cursor):
    cursor.execute("SELECT job_id::text, session_id, state FROM core_balsamjob")
    return {j: (s, st) for j, s, st in cursor.fetchall()}


def test_claim_holds_runnable_unheld_jobs_only(app, cursor):
    jobs = make_jobs(3)
    make_jobs(2, state="CREATED")
    sid = session(cursor)
    claimed = leases.claim(cursor, sid, 10, serial=False, max_nodes=4)
    assert sorted(r["job_id"] for r in claimed) == sorted(str(j.pk) for j in jobs)
    assert set(claimed[0]) == set(leases.CLAIM_COLUMNS) | {"runs", "parents"}
    assert claimed[0]["parents"] == []
    assert claimed[0]["runs"] == 0
    assert leases.claim(cursor, session(cursor), 10, serial=False, max_nodes=4) == []
    held = holders(cursor)
    assert sum(1 for s, _ in held.values() if s == sid) == 3


def test_mpi_claims_largest_first_and_respect_the_node_limit(app, cursor):
    from balsam.core.models import BalsamJob

    for nodes, wall in ((1, 5), (4, 1), (2, 9), (8, 1), (2, 30)):
        BalsamJob(name=f"n{nodes}w{wall}", application="app", state="PREPROCESSED",
                  num_nodes=nodes, wall_time_minutes=wall).save()
    claimed = leases.claim(cursor, session(cursor), 10, serial=False, max_nodes=4)
    assert [r["name"] for r in claimed] == ["n4w1", "n2w30", "n2w9", "n1w5"]


def test_serial_claims_single_rank_jobs_fewest_per_node_first(app, cursor):
    from balsam.core.models import BalsamJob

    for name, pack, ranks, nodes in (("p4", 4, 1, 1), ("p1", 1, 1, 1), ("mpi", 1, 2, 1),
                                     ("big", 1, 1, 2), ("p2", 2, 1, 1)):
        BalsamJob(name=name, application="app", state="RESTART_READY", node_packing_count=pack,
                  ranks_per_node=ranks, num_nodes=nodes).save()
    claimed = leases.claim(cursor, session(cursor), 10, serial=True, max_nodes=4)
    assert [r["name"] for r in claimed] == ["p1", "p2", "p4"]


def test_claim_filters_workflow_substring_literally_walltime_and_exclusions(app, cursor):
    from balsam.core.models import BalsamJob

    for wf, wall in (("sweep_a", 10), ("sweepXa", 10), ("sweep_a", 100), ("other", 1)):
        BalsamJob(name=f"{wf}-{wall}", workflow=wf, application="app", state="PREPROCESSED",
                  wall_time_minutes=wall).save()
    sid = session(cursor)
    got = leases.claim(cursor, sid, 10, serial=False, max_nodes=1, wf_filter="p_a",
                       max_wall_minutes=50)
    assert [r["name"] for r in got] == ["sweep_a-10"]  # '_' is not a wildcard
    rest = leases.claim(cursor, sid, 10, serial=False, max_nodes=1,
                        exclude_ids=(got[0]["job_id"],))
    assert sorted(r["name"] for r in rest) == sorted(["other-1", "sweep_a-100", "sweepXa-10"])


def test_concurrent_claimers_never_get_the_same_job(app, db):
    make_jobs(600)
    results: list[list[str]] = [[], [], [], []]

    def claimer(slot: int) -> None:
        conn = connect(db)
        try:
            with conn.cursor() as cur:
                sid = session(cur)
                conn.commit()
                while True:
                    rows = leases.claim(cur, sid, 7, serial=False, max_nodes=1)
                    conn.commit()
                    if not rows:
                        return
                    results[slot] += [r["job_id"] for r in rows]
        finally:
            conn.close()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    everything = sum(results, [])
    assert len(everything) == 600 and len(set(everything)) == 600


def test_start_runs_only_held_runnable_jobs_and_records_the_message(app, cursor):
    jobs = make_jobs(3)
    sid = session(cursor)
    claimed = [r["job_id"] for r in leases.claim(cursor, sid, 2, serial=False, max_nodes=1)]
    unheld = next(str(j.pk) for j in jobs if str(j.pk) not in claimed)
    lifecycle.kill(cursor, [claimed[1]])
    started = leases.start(cursor, sid, claimed + [unheld], "started on node 0")
    assert started == [claimed[0]]
    cursor.execute("SELECT to_state, message FROM core_jobevent WHERE job_id = %s ORDER BY id",
                   [claimed[0]])
    assert cursor.fetchall() == [("PREPROCESSED", "created in this state"),
                                 ("RUNNING", "started on node 0")]


def test_finishing_releases_the_hold_but_a_user_kill_keeps_it_for_the_launcher(app, cursor):
    make_jobs(3)
    sid = session(cursor)
    ids = [r["job_id"] for r in leases.claim(cursor, sid, 3, serial=False, max_nodes=1)]
    assert sorted(leases.start(cursor, sid, ids)) == sorted(ids)
    assert leases.finish(cursor, sid, [ids[0]], State.RUN_DONE) == [ids[0]]
    assert leases.finish(cursor, sid, [ids[1]], State.RUN_ERROR, {ids[1]: "exit code 3"}) == [ids[1]]
    lifecycle.kill(cursor, [ids[2]])
    held = holders(cursor)
    assert held[ids[0]] == (None, "RUN_DONE")
    assert held[ids[1]] == (None, "RUN_ERROR")
    assert held[ids[2]] == (sid, "USER_KILLED")
    assert leases.killed(cursor, sid) == [ids[2]]
    assert leases.finish(cursor, sid, [ids[2]], State.RUN_DONE) == []  # stays killed
    assert leases.release(cursor, sid) == 1
    assert holders(cursor)[ids[2]] == (None, "USER_KILLED")


def test_another_session_cannot_finish_jobs_it_does_not_hold(app, cursor):
    make_jobs(1)
    mine, other = session(cursor), session(cursor)
    job = leases.claim(cursor, mine, 1, serial=False, max_nodes=1)[0]["job_id"]
    assert leases.start(cursor, other, [job]) == []
    leases.start(cursor, mine, [job])
    assert leases.finish(cursor, other, [job], State.RUN_DONE) == []
    assert holders(cursor)[job] == (mine, "RUNNING")


def test_close_session_times_out_running_jobs_and_releases_claims(app, cursor):
    make_jobs(4)
    sid = session(cursor)
    ids = [r["job_id"] for r in leases.claim(cursor, sid, 4, serial=False, max_nodes=1)]
    leases.start(cursor, sid, ids[:2])
    assert leases.close_session(cursor, sid, "walltime reached") == 2
    held = holders(cursor)
    assert sorted(held[i][1] for i in ids) == ["PREPROCESSED", "PREPROCESSED", "RUN_TIMEOUT",
                                               "RUN_TIMEOUT"]
    assert all(held[i][0] is None for i in ids)
    cursor.execute("SELECT message FROM core_jobevent WHERE to_state = 'RUN_TIMEOUT'")
    assert {m for (m,) in cursor.fetchall()} == {"interrupted: walltime reached while the job ran"}
    assert leases.heartbeat(cursor, sid) is False


def test_sweep_closes_only_expired_sessions_with_a_message_naming_them(app, cursor):
    make_jobs(4)
    dead, alive = session(cursor, lease_seconds=1), session(cursor, lease_seconds=1)
    for sid in (dead, alive):
        ids = [r["job_id"] for r in leases.claim(cursor, sid, 2, serial=False, max_nodes=1)]
        leases.start(cursor, sid, ids[:1])
    # Sessions are swept only once the server has been up a whole lease (1 s here).
    wait_for_sql(cursor, "SELECT pg_postmaster_start_time() < now() - interval '1 second'")
    # One transaction: now() is the same for the heartbeat and the sweeps, so `alive` is within
    # its 1-s lease however long a loaded machine pauses between the statements.
    cursor.execute("BEGIN")
    try:
        cursor.execute("UPDATE core_launchersession SET heartbeat = now() - interval '5 seconds' "
                       "WHERE id = %s", [dead])
        assert leases.heartbeat(cursor, alive)
        assert leases.sweep(cursor) == [(dead, 1)]
        assert leases.sweep(cursor) == []
        assert leases.heartbeat(cursor, dead) is False
    finally:
        cursor.execute("COMMIT")
    cursor.execute("SELECT message FROM core_jobevent WHERE to_state = 'RUN_TIMEOUT'")
    (message,) = cursor.fetchone()
    assert f"launcher session {dead} (host:123) lost its lease" in message
    cursor.execute("SELECT end_reason LIKE 'launcher session%%' FROM core_launchersession "
                   "WHERE id = %s", [dead])
    assert cursor.fetchone()[0] is True
    held = holders(cursor)
    assert sum(1 for s, _ in held.values() if s == dead) == 0
    assert sum(1 for s, _ in held.values() if s == alive) == 2


def test_a_job_change_notifies_listeners_once_per_statement(app, db, cursor):
    listener = connect(db, autocommit=True)
    try:
        with listener.cursor() as lc:
            lc.execute("LISTEN balsam_jobs")
        make_jobs(50)
        cursor.execute("UPDATE core_balsamjob SET args = 'x'")
        deadline = time.monotonic() + 5
        while len(listener.notifies) < 2 and time.monotonic() < deadline:
            select.select([listener], [], [], 0.2)  # the two may arrive separately
            listener.poll()
        select.select([listener], [], [], 0.3)  # and nothing more comes
        listener.poll()
        ops = [n.payload for n in listener.notifies]
        assert ops == ["INSERT runnable", "UPDATE runnable"]  # PREPROCESSED, no session: claimable
    finally:
        listener.close()


def test_holders_elsewhere_gives_heartbeat_age_and_sweep_time_of_sessions_holding_work(
        app, cursor):
    make_jobs(2, workflow="wf_a")
    dead, live, me = session(cursor, lease_seconds=30), session(cursor), session(cursor)
    leases.claim(cursor, dead, 1, serial=False, max_nodes=4)
    leases.claim(cursor, live, 1, serial=False, max_nodes=4)
    cursor.execute("UPDATE core_launchersession SET heartbeat = now() - interval '20 seconds' "
                   "WHERE id = %s", [dead])
    found = sorted(leases.holders_elsewhere(cursor, me, serial=False, max_nodes=4,
                                            wf_filter="a"))
    assert len(found) == 2 and found[0][0] < 1 and 19.9 < found[1][0] < 21
    # 30 s lease, 20 s silent -- and sweeps wait until the server has been up a whole lease
    cursor.execute("SELECT EXTRACT(EPOCH FROM GREATEST(now() - interval '20 seconds', "
                   "pg_postmaster_start_time()) + interval '30 seconds' - now())")
    assert abs(found[1][1] - float(cursor.fetchone()[0])) < 1
    assert leases.holders_elsewhere(cursor, me, serial=False, max_nodes=4, wf_filter="b") == []
    assert len(leases.holders_elsewhere(cursor, dead, serial=False, max_nodes=4)) == 1  # not its own
    cursor.execute("UPDATE core_balsamjob SET num_nodes = 2 WHERE session_id IS NOT NULL")
    assert leases.holders_elsewhere(cursor, me, serial=True, max_nodes=1) == []  # does not fit


def test_lost_starts_are_recorded_once_as_runs_of_unknown_outcome(app, cursor):
    lost, recorded, idle = (str(j.pk) for j in make_jobs(3))
    sid = session(cursor, mode="serial")
    leases.claim(cursor, sid, 3, serial=True, max_nodes=1)
    leases.start(cursor, sid, [recorded], "serial-mode session 1")
    started = {lost: 1, recorded: 1}
    assert leases.record_lost_starts(cursor, sid, started, "serial-mode session 1",
                                     "outcome unknown") == [lost]
    assert leases.record_lost_starts(cursor, sid, started, "serial-mode session 1",
                                     "outcome unknown") == []  # released: never twice
    cursor.execute("SELECT from_state, to_state, message FROM core_jobevent WHERE job_id = %s "
                   "ORDER BY id", [lost])
    assert cursor.fetchall()[-2:] == [
        ("PREPROCESSED", "RUNNING", "serial-mode session 1 (recorded after the run)"),
        ("RUNNING", "RUN_TIMEOUT", "outcome unknown")]
    held = holders(cursor)
    assert held[lost] == (None, "RUN_TIMEOUT") and held[recorded] == (sid, "RUNNING")
    assert held[idle] == (sid, "PREPROCESSED")


def test_one_cycle_statement_starts_and_ends_held_jobs_and_claims_others(app, cursor):
    a, b, c, d = (str(j.pk) for j in make_jobs(4))
    sid, other = session(cursor), session(cursor)
    assert {r["job_id"] for r in leases.claim(cursor, sid, 2, serial=False, max_nodes=1)} == {a, b}
    leases.start(cursor, sid, [a])
    cursor.execute("SELECT count(*) FROM core_jobevent")
    events_before = cursor.fetchone()[0]
    moved, claimed = leases.cycle(
        cursor, sid, [(a, State.RUN_DONE, ""), (b, State.RUNNING, "go"),
                      (c, State.RUNNING, "not held: refused")], 1, serial=False, max_nodes=1)
    assert sorted(moved) == sorted([(a, "RUNNING", "RUN_DONE"), (b, "PREPROCESSED", "RUNNING")])
    assert len(claimed) == 1 and claimed[0]["job_id"] in (c, d)
    assert claimed[0]["parents"] == [] and claimed[0]["runs"] == 0
    cursor.execute("SELECT job_id::text, state, session_id FROM core_balsamjob")
    now = {j: (s, h) for j, s, h in cursor.fetchall()}
    assert now[a] == ("RUN_DONE", None) and now[b] == ("RUNNING", sid)
    assert now[claimed[0]["job_id"]] == ("PREPROCESSED", sid)
    cursor.execute("SELECT job_id::text, from_state, to_state, message, nodes FROM core_jobevent "
                   "ORDER BY id OFFSET %s", [events_before])
    assert sorted(cursor.fetchall()) == sorted([(a, "RUNNING", "RUN_DONE", "", 1.0),
                                                (b, "PREPROCESSED", "RUNNING", "go", None)])
    # Another session's job is not moved; nothing to claim is fine.
    leases.claim(cursor, other, 5, serial=False, max_nodes=1)
    assert leases.cycle(cursor, sid, [(b, State.RUN_ERROR, "x")], 0, serial=False,
                        max_nodes=1)[0] == [(b, "RUNNING", "RUN_ERROR")]
    assert leases.cycle(cursor, sid, [], 3, serial=False, max_nodes=1) == ([], [])


def test_lease_age_counts_from_the_last_heartbeat_or_the_servers_start_and_none_once_closed(
        cursor):
    sid = session(cursor)
    cursor.execute(f"UPDATE {leases.SESSION} SET heartbeat = now() - interval '1 hour' "
                   "WHERE id = %s", [sid])
    cursor.execute("SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())")
    up = float(cursor.fetchone()[0])
    # An hour without a heartbeat, but never more than the server has been up (a restart gives
    # the holder a whole lease again, as the sweep's rule does).
    assert leases.lease_age(cursor, sid) == pytest.approx(min(3600.0, up), abs=5.0)
    leases.heartbeat(cursor, sid)
    assert leases.lease_age(cursor, sid) < 5.0
    leases.close_session(cursor, sid, "test")
    assert leases.lease_age(cursor, sid) is None


def test_a_cycle_with_follow_finishes_a_plain_run_in_its_end_update_and_leaves_the_rest(
        app, cursor):
    from balsam.core.models import ApplicationDefinition
    from balsam.processing import transitions

    ApplicationDefinition.objects.create(name="post", executable="true", postprocess="echo")
    plain, failed = (str(j.pk) for j in make_jobs(2))
    (scripted,) = (str(j.pk) for j in make_jobs(1, application="post"))
    sid = session(cursor)
    leases.claim(cursor, sid, 3, serial=False, max_nodes=1)
    leases.start(cursor, sid, [plain, failed, scripted])
    moved, _ = leases.cycle(cursor, sid, [(plain, State.RUN_DONE, ""), (failed, State.RUN_ERROR, "x"),
                                          (scripted, State.RUN_DONE, "")], 0, serial=False,
                            max_nodes=1, follow=transitions.FINISH_ON_RECORD)
    assert sorted(moved) == sorted([(plain, "RUNNING", "RUN_DONE"), (failed, "RUNNING", "RUN_ERROR"),
                                    (scripted, "RUNNING", "RUN_DONE")])
    cursor.execute("SELECT job_id::text, state FROM core_balsamjob")
    assert dict(cursor.fetchall()) == {plain: "JOB_FINISHED", failed: "RUN_ERROR",
                                       scripted: "RUN_DONE"}
    cursor.execute("SELECT from_state, to_state, message, timestamp FROM core_jobevent "
                   "WHERE job_id = %s ORDER BY id", [plain])
    *_, done, finished = cursor.fetchall()
    assert done[:2] == ("RUNNING", "RUN_DONE")
    assert finished[:3] == ("RUN_DONE", "JOB_FINISHED", "nothing to postprocess or stage out")
    assert finished[3] == done[3]  # one row update, one time
