"""Work queued on a node behind long tasks goes to a node that idles
(:mod:`balsam.launcher.serial_rebalance`): the worker's answer to ``recall`` in-process, then a
real serial-mode launcher (real ``mpiexec``, real PostgreSQL) whose node 1 is held by the
launcher's own long tasks while node 2 runs out of work."""
from __future__ import annotations

import os
import time
from typing import Any

import pytest
from fault_support import SERIAL, add_ticker_app, held_markers, tick_jobs
from launcher_procs import launchers
from launcher_support import QUICK, Inbox, events, job_row, serve, settings, wait_for
from once_support import overlap_seconds, recorded_runs, runs

from balsam.core import schema
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Work, Worker


def sleeper(tmp: str, name: str) -> Work:
    wd = os.path.join(tmp, name)
    return Work(name, ["sleep", "30"], None, {}, wd, os.path.join(wd, f"{name}.out"), 1, 1)


def test_a_worker_gives_back_queued_work_never_what_began(tmp_path):
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]}, kill_grace=0.5)
    try:
        inbox.orders.append({"work": [sleeper(str(tmp_path), f"s{i}") for i in range(4)]})
        serve(worker, inbox, lambda: inbox.collected("started"))
        assert inbox.collected("started") == ["s0"]  # one slot: s1 queued or chained behind
        inbox.orders.append({"recall": 2.0})  # two tasks' worth: the queue's tail
        serve(worker, inbox, lambda: any("recalled" in r for r in inbox.reports))
        assert inbox.collected("recalled") == ["s3", "s2"]
        inbox.orders.append({"recall": 1.0})  # s1, queued or chained behind s0, not begun
        serve(worker, inbox, lambda: len([r for r in inbox.reports if "recalled" in r]) == 2)
        assert inbox.collected("recalled") == ["s3", "s2", "s1"]
        inbox.orders.append({"recall": 5.0})  # nothing waits: answered all the same
        serve(worker, inbox, lambda: len([r for r in inbox.reports if "recalled" in r]) == 3)
        assert inbox.collected("recalled") == ["s3", "s2", "s1"]
        assert list(worker.running) == ["s0"]  # what began runs on
        inbox.orders.append({"kill": ["s0"]})
        serve(worker, inbox, lambda: inbox.collected("killed") == ["s0"])
        assert worker.node.occupancy == 0 and not worker.running
        assert inbox.collected("started") == ["s0"]  # nothing given back ever started
    finally:
        inbox.orders.append({"exit": True})
        serve(worker, inbox, lambda: worker.finished)


@pytest.mark.slow
def test_work_waiting_behind_the_launchers_own_tasks_runs_on_the_node_that_idles(
        db, cursor, scripts):
    # The launcher's own two tasks fill node 1 until the test says so; the master queues some
    # of the other jobs behind them (a node's worth, as behind any running task) and runs the
    # rest on node 2. Once node 2 has run out of work, node 1's queue is taken back and run
    # there. Before, those jobs waited for the launcher's tasks, however long they ran.
    markers, (own_hold,) = held_markers("own")
    add_ticker_app(cursor, scripts)
    own = tick_jobs(cursor, markers, "own", 2, own_hold, priority=10)  # the warm start's
    others = tick_jobs(cursor, markers, "o", 6, os.path.join(markers, "never"), ticks=3)
    with settings(db, local_nodes=2, cores_per_node=2, launcher=QUICK), launchers() as start:
        launcher = start(*SERIAL)
        try:
            wait_for(lambda: all(job_row(cursor, j)["state"] == "JOB_FINISHED" for j in others),
                     180, "every other job to finish while the launcher's own tasks run")
            assert all(job_row(cursor, j)["state"] == "RUNNING" for j in own)
        finally:
            os.remove(own_hold)
        assert launcher.wait(120) == 0, launcher.output()
    assert all(job_row(cursor, j)["state"] == "JOB_FINISHED" for j in own)
    for job_id in own + others:  # once each, recorded once
        assert len(runs(markers, job_id)) == 1 and recorded_runs(cursor, job_id) == 1
    assert overlap_seconds(markers, own + others) == {}
    # no job given back shows a run that was not one
    assert all(sum(e[2] == "RUNNING" for e in events(cursor, j)) == 1 for j in others)


def test_a_worker_with_gpus_gives_back_work_in_the_masters_measure(tmp_path):
    # One GPU: a task of packing 4 takes the whole node's GPU, so the master counts it as a
    # node's worth (MasterClaims._slots: min(packing, gpus)). A recall of one node's worth
    # is one such task, not four (the quarter of the node its packing count says).
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0, 1, 2, 3], 1), {"PATH": os.environ["PATH"]},
                    kill_grace=0.5)
    try:
        work = [sleeper(str(tmp_path), f"s{i}")._replace(packing=4) for i in range(4)]
        inbox.orders.append({"work": work})
        serve(worker, inbox, lambda: inbox.collected("started"))
        assert inbox.collected("started") == ["s0"]  # one GPU: one task at a time
        inbox.orders.append({"recall": 1.0})
        serve(worker, inbox, lambda: any("recalled" in r for r in inbox.reports))
        assert inbox.collected("recalled") == ["s3"]
        inbox.orders.append({"kill": ["s0"]})
        serve(worker, inbox, lambda: "s0" in inbox.collected("killed"))
    finally:
        inbox.orders.append({"stop": 0.5})
        serve(worker, inbox, lambda: inbox.flagged("drained"))  # every task reaped
        inbox.orders.append({"exit": True})
        serve(worker, inbox, lambda: worker.finished)
        worker.close()
    assert "s3" not in inbox.collected("started")


def test_recalled_work_is_claimed_again_once_its_release_is_committed_by_a_writer_thread(
        db, cursor):
    # At scale the master's releases are written by status writer threads and its claims made
    # by claimer threads, each on a connection of its own: the claim asked at once after a
    # recall cannot see jobs whose release is not committed yet. Here the release waits on a
    # row lock the test holds until that claim was answered; the jobs must still be claimed
    # again and sent to the node that idles (not after ``idle_wait_seconds``: 600 here).

    from launcher_support import add_app, add_jobs
    from test_claimer import master_with_claimers

    from balsam.db.connect import connect
    from balsam.launcher.status_writers import close_status

    add_app(cursor, "app", "true")
    ids = add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                            for i in range(2)])
    master, sid = master_with_claimers(db)
    master.t = master.t.replace(idle_wait_seconds=600.0)
    lock = connect(db)  # a transaction of its own
    try:
        master.closed.add(2)  # the claim all goes to worker 1: one running, one queued
        end = time.monotonic() + 30
        while len(master.inflight) < 2 or master._claiming():  # then nothing more to claim
            assert time.monotonic() < end, "the jobs were not claimed and sent"
            master._claim(time.monotonic())
            master._dispatch()
            time.sleep(0.005)
        master.closed.clear()
        assert set(master.inflight) == set(ids) and set(master.inflight.values()) == {1}
        now = time.monotonic()
        master._rebalance(now)
        master._rebalance(now + 1.0)  # worker 1 over, worker 2 idle, at two checks in a row
        assert master.channel.sent[-1] == (1, {"recall": 1.0, "fits": 1.0})
        queued = ids[1]  # worker 1's answer: its queued task, never started
        with lock.cursor() as held:
            held.execute(f"SELECT 1 FROM {schema.JOB_TABLE} WHERE job_id = %s FOR UPDATE",
                         [queued])
        master._handle(1, {"recalled": [queued]})
        assert master.load[1] == 1.0 and queued not in master.inflight
        master._claim(time.monotonic())  # as the loop goes on: a claim, if one is due now
        end = time.monotonic() + 30
        while master._claiming() or not writer_waits_on_a_lock(cursor):
            assert time.monotonic() < end, "the release did not wait on the lock"
            master._claim(time.monotonic())
            master._rebalance(time.monotonic())
            time.sleep(0.005)
        lock.commit()  # the release commits now, after the claim that could not see it
        end = time.monotonic() + 30
        while queued not in sent_to(master, 2):
            assert time.monotonic() < end, "the recalled job was not claimed again"
            master._claim(time.monotonic())
            master._rebalance(time.monotonic())
            master._dispatch()
            time.sleep(0.005)
        cursor.execute(f"SELECT session_id FROM {schema.JOB_TABLE} WHERE job_id = %s", [queued])
        assert cursor.fetchone()[0] == sid and master.inflight[queued] == 2
    finally:
        lock.close()
        master._close_claimers()
        close_status(master.status)


def writer_waits_on_a_lock(cursor: Any) -> bool:
    cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                   "'%%writer%%' AND wait_event_type = 'Lock'")
    return bool(cursor.fetchone()[0])


def sent_to(master: Any, worker: int) -> list[str]:
    return [w.job_id for k, m in master.channel.sent if k == worker for w in m.get("work", ())]


def test_recalled_work_is_claimed_again_though_the_master_holds_more_than_half_its_target(
        db, cursor):
    # Tasks that ended fast had the master queue 4 nodes' worth on each worker; then they
    # turned long. The master claims only once it holds half a batch less than its target
    # (4 tasks per slot: 12 here), and it holds 10: worker 3, its work done, idles. Worker 1
    # gives a task back: it must be claimed again and sent to worker 3 (it was released and
    # left unclaimed, worker 3 idle, until more recalls had brought the hold down to 6).

    from launcher_support import add_app, add_jobs
    from test_claimer import Silent, master_with_claimers

    from balsam.launcher.status_writers import close_status, open_status

    add_app(cursor, "app", "true")
    add_jobs(cursor, [{"name": f"j{i:02}", "application": "app", "state": "PREPROCESSED"}
                      for i in range(10)])
    master, sid = master_with_claimers(db)
    master._close_claimers()  # one connection (no writer threads): releases commit at once
    close_status(master.status)
    master.status = open_status(master.ctx.db, sid, writers=1, flush_seconds=0.01,
                                start_message="", processing=False)
    master.channel = Silent(3)
    master.load = {1: 0.0, 2: 0.0, 3: 0.0}
    master.t = master.t.replace(idle_wait_seconds=600.0)
    master._claim(time.monotonic())
    assert len(master.queue) == 10
    master.closed.add(3)
    master.rate = 100.0  # fast: 4 nodes' worth queued behind what runs
    master._dispatch()
    assert not master.queue and master.load == {1: 5.0, 2: 5.0, 3: 0.0}
    master.closed.clear()
    master.rate = 0.0  # then long
    now = time.monotonic()
    master._rebalance(now)
    master._rebalance(now + 1.0)
    (worker, recall), = [(w, m) for w, m in master.channel.sent if "recall" in m]
    assert recall == {"recall": 1.0, "fits": 1.0}
    given = sent_to(master, worker)[-1]  # its queue's tail
    master._handle(worker, {"recalled": [given]})
    end = time.monotonic() + 30
    while given not in sent_to(master, 3):
        assert time.monotonic() < end, "the recalled job was not claimed again"
        master._claim(time.monotonic())
        master._rebalance(time.monotonic())
        master._dispatch()
        time.sleep(0.005)
    assert master.inflight[given] == 3 and master.load[3] == 1.0
    cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE session_id = %s", [sid])
    assert cursor.fetchone()[0] == 10  # all held again
    master._release_all()


def test_a_whole_node_task_is_not_taken_back_when_no_single_node_has_room_for_it(
        db, cursor, tmp_path):
    # Worker 1 runs a whole-node task with another queued behind it; workers 2 and 3 each run
    # a half-node task: half a node free on each, a node's worth in all, but no node where the
    # queued task can start. Taken back, it went to worker 2 and waited there behind that
    # worker's task instead (a release, a claim and a dispatch for nothing).
    from launcher_support import add_app, add_jobs
    from test_claimer import Silent, master_with_claimers

    from balsam.launcher.serial_dispatch import work_item
    from balsam.launcher.status_writers import close_status, open_status

    add_app(cursor, "app", "sleep 30")
    add_jobs(cursor, [{"name": n, "application": "app", "state": "PREPROCESSED",
                       "node_packing_count": k, "priority": p}
                      for n, k, p in (("long", 1, 9), ("whole", 1, 8), ("h2", 2, 0),
                                      ("h3", 2, 0))])
    master, sid = master_with_claimers(db)
    master._close_claimers()
    close_status(master.status)
    master.status = open_status(master.ctx.db, sid, writers=1, flush_seconds=0.01,
                                start_message="", processing=False)
    master.channel = Silent(3)
    master.load = {1: 0.0, 2: 0.0, 3: 0.0}
    specs = {s.job_id: s for s in master.source.claim(10, serial=True, max_nodes=1)}
    by_name = {s.workdir.rsplit("/", 1)[-1].split("_")[0]: s for s in specs.values()}
    for worker, name in ((1, "long"), (1, "whole"), (2, "h2"), (3, "h3")):
        spec = by_name[name]  # as the dispatch left them
        master.inflight[spec.job_id] = worker
        master.weight[spec.job_id] = 1.0 / spec.node_packing_count
        master.load[worker] += 1.0 / spec.node_packing_count
    inbox = Inbox()
    node1 = Worker(inbox, NodeSlots([0, 1], 0), {"PATH": os.environ["PATH"]}, kill_grace=0.5)
    try:
        inbox.orders.append({"work": [work_item(by_name[n])._replace(
            argv=["sleep", "30"], workdir=str(tmp_path / n),
            output_path=str(tmp_path / n / "out")) for n in ("long", "whole")]})
        serve(node1, inbox, lambda: inbox.collected("started"))
        now = time.monotonic()
        master._rebalance(now)
        master._rebalance(now + 1.0)
        recalls = [m for w, m in master.channel.sent if w == 1 and "recall" in m]
        if recalls:  # asked: the worker's answer
            inbox.orders.append(recalls[0])
            serve(node1, inbox, lambda: any("recalled" in r for r in inbox.reports))
            master._handle(1, {"recalled": inbox.collected("recalled")})
        assert inbox.collected("recalled") == []
        assert [w.job_id for w in node1.queue] + list(node1._chained_work) == [
            by_name["whole"].job_id]  # still behind the long task, queued or chained
        assert master.inflight[by_name["whole"].job_id] == 1 and master.load[1] == 2.0
        # Nothing changed: not asked again at every later check (it was, once a second).
        asked = len([m for w, m in master.channel.sent if "recall" in m])
        for later in range(2, 8):
            master._rebalance(now + later)
        assert len([m for w, m in master.channel.sent if "recall" in m]) == asked
        master.load[3] = 0.0  # h3 ended: a whole node free, where "whole" fits
        master._rebalance(now + 8)
        master._rebalance(now + 9)
        assert master.channel.sent[-1] == (1, {"recall": 1.0, "fits": 1.0})
    finally:
        inbox.orders.append({"stop": 0.5})
        serve(node1, inbox, lambda: inbox.flagged("drained"))  # every task reaped
        inbox.orders.append({"exit": True})
        serve(node1, inbox, lambda: node1.finished)
        node1.close()
        master._release_all()
