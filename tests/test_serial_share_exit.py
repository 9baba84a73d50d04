"""When a non-persistent serial launcher with nothing of its own exits while another live session
holds the campaign's remaining work (s20-tail). Work queued there (claimed, never started) is
given back to launchers whose slots idle (:mod:`balsam.launcher.serial_share`): the idle
launcher stays, publishing its idle slots, until it is given some (or the work is gone). Work
that session runs is never given back: the launcher exits as it did before, long before that
work ends. The holder here is a session this test opens and renews (real rows, real lease
functions): what it gives back and when is then the test's choice, not a race."""
from __future__ import annotations

import time

from fault_support import SERIAL, serial_sessions
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, job_row, settings, wait_for

from balsam.core import idle_slots, leases, schema
from balsam.launcher.serial_share import GIVEN_WITHIN_SECONDS

HOLDER = {"hostname": "elsewhere", "pid": 1, "job_mode": "serial", "num_nodes": 1,
          "lease_seconds": 60}
OLD_EXIT_SECONDS = 1.5 * QUICK["heartbeat_seconds"] + QUICK["idle_wait_seconds"]
"""How long an idle launcher stayed while live sessions held jobs it could run (``min_idle``
of :class:`balsam.launcher.context.Housekeeper`; longer than ``idle_exit_seconds`` here)."""


def published(cursor, session_id: int) -> int:
    cursor.execute(f"SELECT idle_slots FROM {schema.SESSION_TABLE} WHERE id = %s", [session_id])
    return int(cursor.fetchone()[0])


def hold(cursor, count: int, run: bool) -> tuple[int, list[str]]:
    """A live serial session holding ``count`` jobs: claimed (queued there) or RUNNING."""
    holder = leases.open_session(cursor, **HOLDER)
    held = [str(row["job_id"]) for row in leases.claim(cursor, holder, count, serial=True,
                                                        max_nodes=1)]
    assert len(held) == count
    if run:
        assert sorted(leases.start(cursor, holder, held)) == sorted(held)
    return holder, held


def test_an_idle_launcher_stays_while_another_session_holds_queued_work_then_runs_it(
        db, cursor):
    add_app(cursor, "app", "true")
    ids = add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                            for i in range(2)])
    holder, held = hold(cursor, 2, run=False)
    with settings(db, local_nodes=1, launcher=QUICK), launchers() as start:
        idle = start(*SERIAL)
        sid = wait_for(idle.session_id, 60, "the launcher's session")
        wait_for(lambda: published(cursor, sid) > 0, 60, "the launcher to publish idle slots")
        stay_until = time.monotonic() + 2 * OLD_EXIT_SECONDS + QUICK["idle_wait_seconds"]
        while time.monotonic() < stay_until:  # (before: it exited after OLD_EXIT_SECONDS)
            assert leases.heartbeat(cursor, holder)
            assert idle.proc.poll() is None, "the launcher exited while work could be given " \
                "to it\n" + idle.diagnosis()
            time.sleep(0.05)
        assert idle_slots.givable(cursor, sid) == 2
        assert leases.release(cursor, holder) == 2  # given back, as serial_share does
        wait_for(lambda: all(job_row(cursor, j)["state"] == "JOB_FINISHED" for j in ids), 60,
                 "the given work to run on the launcher that stayed")
        assert {job_row(cursor, j)["session_id"] for j in ids} <= {sid, None}
        leases.close_session(cursor, holder)
        assert idle.wait(60) == 0
    assert serial_sessions(cursor) == 2  # the holder's and the launcher's: one ensemble


def test_an_idle_launcher_exits_while_another_session_only_runs_its_work(db, cursor):
    add_app(cursor, "app", "true")
    add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                      for i in range(2)])
    holder, held = hold(cursor, 2, run=True)
    with settings(db, local_nodes=1, launcher=QUICK), launchers() as start:
        idle = start(*SERIAL)
        sid = wait_for(idle.session_id, 60, "the launcher's session")
        assert idle_slots.givable(cursor, sid) == 0  # RUNNING work is never given back
        exits_idle(cursor, idle, holder)
    assert all(job_row(cursor, j)["state"] == "RUNNING" for j in held)
    leases.close_session(cursor, holder)


def exits_idle(cursor, idle, holder: int, within: float = 60) -> None:
    """Wait (renewing ``holder``'s lease: it stays live) until ``idle`` exits for idling."""
    end = time.monotonic() + within
    while idle.proc.poll() is None:
        assert time.monotonic() < end, "the launcher did not exit\n" + idle.diagnosis()
        assert leases.heartbeat(cursor, holder)
        time.sleep(0.05)
    assert idle.proc.returncode == 0
    assert "exiting: idle for" in idle.log()


def test_an_idle_launcher_exits_while_the_work_queued_elsewhere_is_too_long_for_its_time(
        db, cursor):
    # Its claims take only jobs that can end before its time limit: such work given back would
    # never be its own. Before, it counted it (idle_slots.givable had no time limit) and stayed
    # idle until its time limit (here 3 minutes; in a batch job, the rest of the allocation).
    add_app(cursor, "app", "true")
    add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED",
                       "wall_time_minutes": 60} for i in range(2)])
    holder, held = hold(cursor, 2, run=False)
    with settings(db, local_nodes=1, launcher=QUICK), launchers() as start:
        idle = start(*SERIAL, "--time-limit-minutes", "3")
        sid = wait_for(idle.session_id, 60, "the launcher's session")
        assert idle_slots.givable(cursor, sid) == 2  # (no limit: it could run them)
        assert idle_slots.givable(cursor, sid, max_wall_minutes=2.9) == 0
        exits_idle(cursor, idle, holder)
    assert all(job_row(cursor, j)["session_id"] == holder for j in held)
    leases.close_session(cursor, holder)


def test_an_idle_launcher_stops_waiting_for_queued_work_its_holder_never_gives(db, cursor):
    # The holder renews its lease and never gives (older code; or a job queued behind a partly
    # used node, which its surplus counts only as the node's overflow). Before, the idle
    # launcher stayed until that work started there (hours behind hour-long tasks).
    add_app(cursor, "app", "true")
    add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                      for i in range(2)])
    holder, held = hold(cursor, 2, run=False)
    with settings(db, local_nodes=1, launcher=QUICK), launchers() as start:
        idle = start(*SERIAL)
        sid = wait_for(idle.session_id, 60, "the launcher's session")
        wait_for(lambda: published(cursor, sid) > 0, 60, "the launcher to publish idle slots")
        began = time.monotonic()
        exits_idle(cursor, idle, holder, GIVEN_WITHIN_SECONDS + 30)
        assert time.monotonic() - began >= GIVEN_WITHIN_SECONDS - 1  # it waited to be given
        assert "not given in" in idle.log()
    assert all(job_row(cursor, j)["session_id"] == holder for j in held)
    leases.close_session(cursor, holder)
