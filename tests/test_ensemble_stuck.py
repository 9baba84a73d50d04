"""The launcher's look at its serial ensemble's lease (:class:`balsam.launcher.ensemble_stuck.
StuckWatch`) against the real PostgreSQL, at chosen monotonic times (the launcher's loop looks
several times a second): a master whose lease is older than the limit is stuck; a gap in the
launcher's own looks (the whole job was suspended, so the master could not renew either) gives
the master time to renew before it is judged. The real frozen master is in
``tests/test_exactly_once.py``."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

from launcher_support import wait_for
from test_launcher_common import open_session, set_port  # noqa: F401 - a fixture

from balsam.core import leases
from balsam.core.tunables import Tunables
from balsam.db.database import Database
from balsam.launcher.ensemble_stuck import StuckWatch, stuck_after

STEP = 0.25
"""The simulated launcher loop's period (seconds of the chosen clock)."""


def first_stuck(watch: StuckWatch, start: float, end: float) -> Optional[float]:
    """The first time in [start, end) at which the loop, looking every STEP, finds it stuck."""
    now = start
    while now < end:
        if watch.stuck(now) is not None:
            return now
        now += STEP
    return None


def test_a_lease_older_than_the_limit_is_stuck_and_a_suspension_gives_the_master_time(db):
    tunables = Tunables.from_settings({"lease_seconds": 4, "reconnect_max_seconds": 1,
                                       "heartbeat_seconds": 0.5})
    limit = stuck_after(tunables)
    assert limit == 2.0
    database = Database(db, "stuck-watch-test")
    try:
        sid = database.run(open_session)
        database.run(lambda cur: cur.execute(
            f"UPDATE {leases.SESSION} SET heartbeat = now() - interval '1 hour' WHERE id = %s",
            [sid]))
        # (the age counts from the server's start if that came later: wait for it to pass)
        wait_for(lambda: database.run(leases.lease_age, sid) > limit, 60,
                 "the session's lease to be older than the limit")
        watch = StuckWatch(SimpleNamespace(  # type: ignore[arg-type]
            tunables=tunables, db=database, session_id=sid), now=0.0)
        # A new ensemble has max(limit, lease) to come up; then the old lease is stuck.
        came_up = max(limit, tunables.lease_seconds)
        assert first_stuck(watch, 0.0, 100.0) == came_up
        # The launcher did not look for 600 s (suspended with its ensemble): not judged at the
        # resume, nor until the master had half the limit to renew; then the old lease is.
        resumed = came_up + 600.0
        assert first_stuck(watch, resumed, resumed + limit / 2) is None
        assert first_stuck(watch, resumed + limit / 2, resumed + 100.0) == resumed + limit / 2
        # Suspended again; this time the master renews after the resume: never stuck.
        resumed += 1000.0
        assert watch.stuck(resumed) is None
        database.run(leases.heartbeat, sid)
        assert first_stuck(watch, resumed + STEP, resumed + limit / 2 + 1.0) is None
    finally:
        database.close()


def test_a_master_is_stuck_by_the_fence_rule_before_its_lease_could_expire(db):
    # A 6-s lease whose workers' tasks need 1 s to die: stuck at an age of 3 s (the lease less
    # the kill grace less the 2-s margin), though the reconnection back-off sets the limit at
    # 31 s; a fresh lease is looked at again before it could reach that age, not a period on.
    tunables = Tunables.from_settings({"lease_seconds": 6, "reconnect_max_seconds": 30,
                                       "heartbeat_seconds": 0.5})
    database = Database(db, "stuck-watch-test")
    try:
        sid = database.run(open_session)
        database.run(lambda cur: cur.execute(
            f"UPDATE {leases.SESSION} SET heartbeat = now() - interval '1 hour' WHERE id = %s",
            [sid]))
        wait_for(lambda: database.run(leases.lease_age, sid) > 3.0, 60,
                 "the session's lease to be older than 3 s")
        watch = StuckWatch(SimpleNamespace(  # type: ignore[arg-type]
            tunables=tunables, db=database, session_id=sid), now=0.0)
        assert (watch.limit, watch.fence, watch.period) == (31.0, 3.0, 7.75)
        came_up = max(watch.limit, tunables.lease_seconds)  # (the ensemble's start-up)
        assert first_stuck(watch, 0.0, came_up) is None
        assert "(limit 3 s)" in str(watch.stuck(came_up))
        database.run(leases.heartbeat, sid)
        assert watch.stuck(came_up + watch.period) is None
        assert watch.next_check <= came_up + watch.period + watch.fence
        assert watch.next_check < came_up + 2 * watch.period  # not a period on: the fence's
    finally:
        database.close()


STUBBORN = """#!/bin/sh
trap '' TERM
echo $$ > pid
exec sleep 120
"""


def test_a_stop_after_the_launchers_stuck_kill_is_not_called_the_forwarded_stops_end(
        db, cursor, scripts):
    """The launcher kills a stuck ensemble; a SIGTERM reaches the launcher while it waits for
    the worker watchdogs (a task ignoring SIGTERM: the kill grace). The ensemble ended by the
    launcher's kill, not by a forwarded stop while it started: no such label."""
    import os
    import signal

    from launcher_procs import launchers
    from launcher_support import QUICK, add_app, add_jobs, settings, workdir, write_script
    from once_support import kill, rank_pid

    from balsam.platform.process import start_time

    add_app(cursor, "quick", "true")
    add_app(cursor, "stubborn", write_script(scripts, "stubborn.sh", STUBBORN))
    add_jobs(cursor, [{"name": "warm", "application": "quick", "state": "PREPROCESSED",
                       "priority": 10}])  # (the launcher's own first task: s goes to worker 1)
    (job_id,) = add_jobs(cursor, [{"name": "s", "application": "stubborn",
                                   "state": "PREPROCESSED"}])
    pid_file = os.path.join(workdir(db, cursor, job_id), "pid")
    tunables = dict(QUICK, lease_seconds=30, reconnect_max_seconds=1, kill_grace_seconds=8)
    task = task_started = 0
    try:
        with settings(db, local_nodes=1, cores_per_node=1, launcher=tunables), \
                launchers() as start:
            launcher = start("--consume-all", "--job-mode", "serial")
            wait_for(lambda: os.path.exists(pid_file) and open(pid_file).read().strip(), 90,
                     "the task to start")
            task = int(open(pid_file).read())
            task_started = start_time(task) or 0
            master = wait_for(lambda: rank_pid(launcher.pid, 0), 10, "the master rank")
            kill(master, signal.SIGSTOP)
            wait_for(lambda: "waiting for the watchdogs of worker ranks" in launcher.log(), 120,
                     "the launcher to kill the stuck ensemble and wait for worker 1's watchdog")
            assert "ensemble is stuck" in launcher.log()
            launcher.signal(signal.SIGTERM)  # while its worker's watchdog waits out the grace
            launcher.wait(120)
            log = launcher.log()
    finally:
        if task:
            kill(task, started=task_started)
    assert "forwarding the stop" not in log, log
    assert "still starting" not in log, log
    assert "(killed by the launcher: stuck)" in log, log
