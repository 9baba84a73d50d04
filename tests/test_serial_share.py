"""Two serial masters on one database (real PostgreSQL, claimer and writer threads, workers
that never report: ``Silent``): one holds the whole campaign, two jobs running and two queued
behind them; the other's claims find nothing and its slots idle. The idle one says so on its
session row, the full one gives its queued work back, does not claim it again, and the idle
one claims it (:mod:`balsam.launcher.serial_share`). Before, the queued work waited behind the
running tasks while the other launcher idled (issue 16, session 19, 4 launchers)."""
from __future__ import annotations

import time

from launcher_support import add_app, add_jobs
from test_claimer import master_with_claimers

from balsam.core import schema
from balsam.launcher.status_writers import close_status


def settle(master, holds: int, drained: bool = True) -> None:
    """Claim and deal until ``master`` holds ``holds`` jobs and (``drained``) a claim found
    nothing."""
    end = time.monotonic() + 30
    while len(master.inflight) + len(master.queue) < holds or master._claiming() \
            or (drained and not master._drained):
        assert time.monotonic() < end, f"the master did not settle at {holds} job(s)"
        master._next["claim"] = 0.0  # as another session's notification would
        master._claim(time.monotonic())
        master._dispatch()
        time.sleep(0.005)


def idle_slots(cursor, sid: int) -> int:
    cursor.execute(f"SELECT idle_slots FROM {schema.SESSION_TABLE} WHERE id = %s", [sid])
    return cursor.fetchone()[0]


def holders(cursor) -> dict[str, object]:
    cursor.execute(f"SELECT job_id::text, session_id FROM {schema.JOB_TABLE}")
    return dict(cursor.fetchall())


def test_queued_work_goes_to_a_launcher_whose_slots_idle_and_is_not_claimed_back(db, cursor):
    add_app(cursor, "app", "true")
    ids = add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                            for i in range(4)])
    full, sid_full = master_with_claimers(db)
    idle, sid_idle = master_with_claimers(db)
    try:
        settle(full, 4)  # two nodes of one slot: one running and one queued on each
        assert full.load == {1: 2.0, 2: 2.0} and not full.queue
        settle(idle, 0)
        sent = {w: [item.job_id for item in m["work"]] for w, m in full.channel.sent}
        queued = [sent[1][1], sent[2][1]]
        now = time.monotonic()
        full._share(now)
        assert not any("recall" in m for _, m in full.channel.sent)  # nobody idles yet
        idle._share(now)
        assert idle_slots(cursor, sid_idle) == 2  # its claim found nothing: published at once
        assert idle_slots(cursor, sid_full) == 0
        full._share(now + 1.0)  # (it read the others' idle slots at most once a second)
        recalls = sorted(((w, m) for w, m in full.channel.sent if "recall" in m),
                         key=lambda sent: sent[0])
        assert recalls == [(1, {"recall": 1.0, "fits": 1.0}), (2, {"recall": 1.0, "fits": 1.0})]
        full._handle(1, {"recalled": [queued[0]]})  # what the workers give back never started
        full._handle(2, {"recalled": [queued[1]]})
        assert full.load == {1: 1.0, 2: 1.0} and set(full.inflight) == set(ids) - set(queued)
        end = time.monotonic() + 30
        while any(holders(cursor)[j] == sid_full for j in queued):
            assert time.monotonic() < end, "the given work was not released"
            time.sleep(0.01)
        full._next["claim"] = 0.0  # its own release notified it: it does not claim it back
        full._claim(time.monotonic())
        assert not full._claiming()
        settle(idle, 2)
        idle._dispatch()
        assert sorted(s for s in idle.inflight) == sorted(queued)
        idle._share(now + 1.5)
        assert idle_slots(cursor, sid_idle) == 0  # no longer idle: cleared at once
        full._share(now + 2.0)  # nothing queued beyond its slots: gives nothing more
        assert len([m for _, m in full.channel.sent if "recall" in m]) == 2
        rows = holders(cursor)
        assert {j for j in ids if rows[j] == sid_idle} == set(queued)
        assert {j for j in ids if rows[j] == sid_full} == set(ids) - set(queued)
        assert full.given == 2
    finally:
        for master in (full, idle):
            master._close_claimers()
            master._release_all()
            close_status(master.status)


def test_a_master_whose_claims_found_nothing_claims_only_for_its_free_slots(db, cursor):
    add_app(cursor, "app", "true")
    ids = add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                            for i in range(2)])
    master, sid = master_with_claimers(db)
    try:
        master.closed.add(2)  # one open node of one slot: one job running, one queued
        settle(master, 2)
        assert set(master.inflight) == set(ids) and master._drained
        late = add_jobs(cursor, [{"name": "late", "application": "app", "state": "PREPROCESSED"}])
        master._next["claim"] = 0.0  # its insert notified: the master's hold fills its slot
        master._claim(time.monotonic())
        assert not master._claiming()  # left for a launcher with a free slot (before: claimed)
        master._handle(1, {"returned": ids})  # its node's work given back: the slot is free
        master._flush()
        end = time.monotonic() + 30
        while any(holders(cursor)[j] == sid for j in ids):
            assert time.monotonic() < end, "the returned work was not released"
            time.sleep(0.01)
        master._next["claim"] = 0.0
        master._claim(time.monotonic())
        assert sorted(c.asked for c in master.claimers) == [0, 1]  # a claim for that slot
        settle(master, 3, drained=False)  # then, its claims finding work, it fills its prefetch again
        assert {j for j, s in holders(cursor).items() if s == sid} == {*ids, *late}
    finally:
        master._close_claimers()
        master._release_all()
        close_status(master.status)


def test_work_nobody_takes_is_not_given_again_and_again(db, cursor):
    from balsam.core import idle_slots as idle_rows
    from balsam.core import leases

    add_app(cursor, "app", "true")
    ids = add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                            for i in range(4)])
    master, sid = master_with_claimers(db)
    # a launcher that idles but takes none of this work (another workflow filter, say)
    other = leases.open_session(cursor, hostname="h", pid=2, job_mode="serial", num_nodes=2,
                                lease_seconds=60)
    idle_rows.publish(cursor, other, 2)
    try:
        settle(master, 4)
        sent = {w: [item.job_id for item in m["work"]] for w, m in master.channel.sent}
        now = time.monotonic()
        master._share(now)
        assert len([m for _, m in master.channel.sent if "recall" in m]) == 2
        master._handle(1, {"recalled": [sent[1][1]]})
        master._handle(2, {"recalled": [sent[2][1]]})
        master._handle(1, {"returned": [sent[1][0]]})  # its slots free (their tasks given
        master._handle(2, {"returned": [sent[2][0]]})  # back too, say)
        master._flush()
        # all four released first: a claim between the writes filled the slots with two and
        # left the rest, by design, for a launcher with room (the test failed under load)
        end = time.monotonic() + 30
        while any(holders(cursor)[j] == sid for j in ids):
            assert time.monotonic() < end, "the work was not released"
            time.sleep(0.01)
        settle(master, 4)  # nobody else claimed the given work: its own claims take it back
        assert set(master.inflight) == set(ids) and master._drained
        for later in (0.5, 1.0, 1.5, 2.0, 5.0, 10.0):
            master._dispatch()
            master._share(now + later)
        assert len([m for _, m in master.channel.sent if "recall" in m]) == 2  # not again
        assert master._next["untaken"] >= now + 30.0
    finally:
        master._close_claimers()
        master._release_all()
        close_status(master.status)


def test_a_node_half_held_by_the_launchers_own_task_gets_work_after_a_drought(db, cursor):
    # The launcher's own (warm-start) task holds half of node 1; its packing count was never
    # seen in a claim. A master whose claim found nothing still claims for the free half.
    add_app(cursor, "app", "true")
    master, sid = master_with_claimers(db)
    try:
        master.closed.add(2)
        master.hold(1, [["own", 2, [0], 0]])
        settle(master, 1)  # the own task only: the claim found nothing
        (job,) = add_jobs(cursor, [{"name": "j", "application": "app", "state": "PREPROCESSED",
                                    "node_packing_count": 2}])
        settle(master, 2, drained=False)
        assert job in master.inflight and holders(cursor)[job] == sid
    finally:
        master._close_claimers()
        master._release_all()
        close_status(master.status)


def test_a_free_half_node_gets_work_though_another_nodes_queued_job_does_not_fit_it(db, cursor):
    # Node A runs two half-node jobs; node B one, with a whole-node job queued behind it. One
    # of A's jobs goes: half of A is free, and B's queued job does not fit it (B gives nothing
    # back when asked). A job added then is claimed for A's free half; before, B's queued job
    # offset it (no free slot counted) and the half node idled while B's task ran.
    add_app(cursor, "app", "true")
    halves = add_jobs(cursor, [{"name": f"h{i}", "application": "app", "state": "PREPROCESSED",
                                "node_packing_count": 2, "priority": 2} for i in range(3)])
    (whole,) = add_jobs(cursor, [{"name": "whole", "application": "app", "priority": 1,
                                  "state": "PREPROCESSED"}])
    master, sid = master_with_claimers(db)
    try:
        settle(master, 4)
        assert sorted(master.load.values()) == [1.0, 1.5]
        behind, full = master.inflight[whole], 3 - master.inflight[whole]
        gone = next(j for j in halves if master.inflight[j] == full)
        master._handle(full, {"returned": [gone]})  # half of node `full` is free
        master._flush()
        now = time.monotonic()
        master._rebalance(now)
        master._rebalance(now + 1.0)
        assert master.channel.sent[-1] == (behind, {"recall": 0.5, "fits": 0.5})
        master._handle(behind, {"recalled": []})  # the whole-node job does not fit half a node
        end = time.monotonic() + 30
        while holders(cursor)[gone] == sid:
            assert time.monotonic() < end, "the returned job was not released"
            time.sleep(0.01)
        master._next["claim"] = 0.0  # its release notified the master
        master._claim(time.monotonic())
        assert master._claiming()  # a claim for the free half (before: none)
        settle(master, 4, drained=False)
        master._dispatch()
        assert master.inflight[gone] == full and holders(cursor)[gone] == sid
    finally:
        master._close_claimers()
        master._release_all()
        close_status(master.status)


def test_a_full_master_after_a_drought_counts_its_free_slots_not_at_every_turn(db, cursor):
    # Counting the free slots goes over every worker (~1 ms at 4,096 nodes); a master whose
    # claims found nothing and whose slots are full counted them at each turn of its loop.
    add_app(cursor, "app", "true")
    add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                      for i in range(2)])
    master, _ = master_with_claimers(db)
    try:
        settle(master, 2)
        counted = []
        count = master._free_slots
        master._free_slots = lambda: counted.append(1) or count()
        master._next["claim"] = 0.0  # a notification: counted once
        now = time.monotonic()
        for _ in range(50):
            master._claim(now)
        assert len(counted) == 1 and not master._claiming()
        master._claim(now + 0.1)
        assert len(counted) == 2
    finally:
        master._close_claimers()
        master._release_all()
        close_status(master.status)


def test_a_master_whose_hold_is_full_gives_at_once_when_another_launcher_idles(db, cursor):
    # The full master holds exactly its prefetch (4 a slot, 2 nodes of one slot): it never
    # claims again, so it never saw an empty claim. Before, it gave only after one (its next
    # task end: an hour with hour-long tasks) while the other launcher idled; now the other's
    # publish is notified and the full one gives at its next loop turn.
    from balsam.defaults import IDLE_SLOTS_NOTIFY_CHANNEL

    add_app(cursor, "app", "true")
    add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                      for i in range(8)])
    full, _ = master_with_claimers(db)
    idle, sid_idle = master_with_claimers(db)
    full.ctx.db.listen()
    getattr(full.ctx.db, "listen_also", lambda channel: None)(IDLE_SLOTS_NOTIFY_CHANNEL)
    try:
        settle(full, 8, drained=False)
        full._claim(time.monotonic())
        assert not full._drained and not full._claiming()  # full: no claim, none empty
        settle(idle, 0)
        now = time.monotonic()
        for later in (0.0, 0.6):  # (before: published at the second check)
            idle._share(now + later)
        assert idle_slots(cursor, sid_idle) == 2
        end = time.monotonic() + 10
        while not any("recall" in m for _, m in full.channel.sent) and full.given == 0:
            assert time.monotonic() < end, "the full master gave nothing to the idle launcher"
            full.ctx.db.notified()  # (the loop's nap collects notifications)
            full._share(time.monotonic())
            time.sleep(0.01)
        assert full._drained  # from now on it claims only for its free slots
    finally:
        for master in (full, idle):
            master._close_claimers()
            master._release_all()
            close_status(master.status)
