"""A serial master whose claims came back empty still takes back work waiting behind long tasks
while it checks the database again (:mod:`balsam.launcher.serial_rebalance`): with several
launchers on one DB, every other launcher's status write notifies it and it claims again every
few ms, so a rule "no claim in flight" let the check run only by chance (bench_scale.py,
4 launchers: their last tenth of the run 78-91% busy while work remained)."""
from __future__ import annotations

import time

from launcher_support import add_app, add_jobs
from test_claimer import master_with_claimers

from balsam.launcher.status_writers import close_status


def test_work_is_taken_back_while_a_claim_rechecks_a_database_that_had_nothing(db, cursor):
    add_app(cursor, "app", "true")
    # two per node: a master whose claims found nothing re-checks only while it holds fewer
    # jobs than it has slots (serial_share), here 3 of 4
    ids = add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED",
                             "node_packing_count": 2} for i in range(3)])
    master, _ = master_with_claimers(db)
    master.t = master.t.replace(idle_wait_seconds=600.0)
    try:
        master.closed.add(2)  # the claim all goes to worker 1: two running, one queued
        end = time.monotonic() + 30
        while len(master.inflight) < 3 or master._claiming():  # and an empty answer after
            assert time.monotonic() < end, "the jobs were not claimed and sent"
            master._claim(time.monotonic())
            master._dispatch()
            time.sleep(0.005)
        master.closed.clear()
        assert set(master.inflight) == set(ids) and set(master.inflight.values()) == {1}
        assert not any("recall" in m for _, m in master.channel.sent)
        master._next["claim"] = 0.0  # another session's write notified: claim again
        master._claim(time.monotonic())
        assert master._claiming()  # a claim in flight (its answer not taken) at both checks
        now = time.monotonic()
        master._rebalance(now)
        master._rebalance(now + 1.0)  # worker 1 over, worker 2 idle, at two checks in a row
        assert master.channel.sent[-1] == (1, {"recall": 0.5, "fits": 1.0})
        end = time.monotonic() + 30
        while master._claiming():  # the re-check's answer: nothing (all three are held)
            assert time.monotonic() < end, "the claim was not answered"
            master._claim(time.monotonic())
            time.sleep(0.005)
        assert not master.queue
    finally:
        master._close_claimers()
        master._release_all()
        close_status(master.status)
