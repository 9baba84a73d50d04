"""A launcher's tasks never outlive its lease (balsam.launcher.fence): the lease floor, the
fence's timing (also across a suspension), the session renewer against the real PostgreSQL, and
the serial launcher's own fences on real process groups. A launcher whose database connection
hangs, with real launchers: ``test_lease_fence_hung.py``."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace
from typing import Optional

import pytest
from launcher_support import QUICK, kill_group_of, process_gone, wait_for

from balsam.core import schema
from balsam.core.tunables import Tunables
from balsam.launcher.fence import LeaseFence, effective_lease, fence_after, lease_floor, start_serial_fence
from balsam.platform.process import start_time


def test_a_lease_too_short_for_the_kill_chain_is_raised_to_the_floor() -> None:
    quick = Tunables.from_settings(dict(QUICK, lease_seconds=6))
    # MPI mode: 3 heartbeats + the kill grace (1 s) + 2 s margin = 6 s: 6 is kept.
    assert lease_floor(quick, "mpi") == 6
    assert effective_lease(quick, "mpi") == (quick, "")
    # Serial mode: the ensemble's shutdown grace (5) + 9 s + the workers' kill grace (1) more.
    raised, why = effective_lease(quick, "serial")
    assert raised.lease_seconds == lease_floor(quick, "serial") == 20
    assert why.startswith("lease_seconds 6 raised to 20: a killed serial-mode launcher's tasks")
    assert "\n" not in why
    defaults = Tunables.from_settings({})
    assert effective_lease(defaults, "serial") == (defaults, "")  # 60 s >= 30+15+2
    assert fence_after(defaults) == 57.0  # the lease less the kill grace and the margin


def test_the_fence_fires_once_when_no_renewal_is_confirmed() -> None:
    calls: list[float] = []
    fence = LeaseFence(0.2, time.monotonic(), calls.append)
    fence.start()
    wait_for(lambda: calls, 30, "the fence to fire")
    fence.close()
    assert fence.fired and len(calls) == 1 and calls[0] >= 0.2


def test_a_closed_or_renewed_fence_does_not_fire() -> None:
    calls: list[float] = []
    fence = LeaseFence(3600.0, time.monotonic() - 3599.0, calls.append)
    fence.renewed(time.monotonic())  # the deadline moves an hour on
    assert fence.confirmed_at > time.monotonic() - 60
    fence.start()
    fence.close()
    assert not fence.fired and calls == []


@pytest.mark.parametrize("renewed", [True, False])
def test_a_fence_armed_past_its_time_asks_before_it_fires(renewed: bool) -> None:
    # Armed with its time run out already (a launcher busy between two ensembles, nothing
    # confirmed meanwhile): it first asks (session_renewer, tested against the DB below).
    # Renewed: it counts from there; not renewed: it fires.
    events: list[str] = []

    def confirm() -> Optional[float]:
        events.append("asked")
        return time.monotonic() if renewed else None

    fence = LeaseFence(0.2, time.monotonic() - 60, lambda _: events.append("fired"),
                       confirm=confirm)
    fence.start()
    wait_for(lambda: "fired" in events, 30, "the fence to fire")
    fence.close()
    assert events[0] == "asked" and events[-1] == "fired" and events.count("fired") == 1


SUSPENDED = textwrap.dedent("""
    import os, sys, time
    from balsam.launcher.fence import LeaseFence
    out, session_open = sys.argv[1], sys.argv[2] == "open"
    def note(name):
        with open(os.path.join(out, name), "w") as f:
            f.write(repr(time.monotonic()))
    def confirm():
        note("confirmed")
        return time.monotonic() if session_open else None
    fence = LeaseFence(3.0, time.monotonic(), lambda unconfirmed: note("fired"), confirm=confirm)
    fence.start()
    note("ready")
    time.sleep(600)
""")


def _noted(tmp_path, name: str) -> float:
    return float((tmp_path / name).read_text())


@pytest.mark.slow
@pytest.mark.parametrize("session", ["open", "swept"])
def test_a_fence_whose_time_ran_out_while_the_process_was_stopped_asks_before_it_fires(
        tmp_path, session) -> None:
    # A suspended job (SIGSTOP of the whole process, as `scontrol suspend` does) past its
    # fence's time: its tasks were stopped too, so the fence first renews the lease on its own
    # (here a callable standing for session_renewer, tested against the DB below). Renewed
    # (the session still open): it goes on counting from the renewal, firing only a whole
    # fence time later; not renewed (swept): it fires at once.
    proc = subprocess.Popen([sys.executable, "-c", SUSPENDED, str(tmp_path), session])
    try:
        wait_for(lambda: (tmp_path / "ready").exists(), 60, "the fence to start")
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(3.0 + 5.0 + 2.0)  # the suspension: past the fence's time and the gap rule
        os.kill(proc.pid, signal.SIGCONT)
        wait_for(lambda: (tmp_path / "fired").exists(), 120, "the fence to fire")
        confirmed, fired = _noted(tmp_path, "confirmed"), _noted(tmp_path, "fired")
        if session == "open":
            assert fired - confirmed >= 3.0 - 0.5  # a whole fence time after the renewal
        else:
            assert fired >= confirmed  # asked first, then fired
    finally:
        proc.kill()
        proc.wait()


def test_the_session_renewer_renews_an_open_session_and_refuses_a_swept_one(db, cursor) -> None:
    import logging

    from balsam.core import leases
    from balsam.db.database import Database
    from balsam.launcher.fence import session_renewer

    database = Database(db)
    try:
        sid = database.run(leases.open_session, hostname="h", pid=1, job_mode="mpi",
                           num_nodes=1, lease_seconds=60)
    finally:
        database.close()
    cursor.execute(f"UPDATE {schema.SESSION_TABLE} SET heartbeat = now() - interval '50 s' "
                   "WHERE id = %s", [sid])
    ctx = SimpleNamespace(db_path=db, session_id=sid, log=logging.getLogger("fence-test"))
    before = time.monotonic()
    sent = session_renewer(ctx)()
    assert sent is not None and before <= sent <= time.monotonic()
    cursor.execute(f"SELECT now() - heartbeat < interval '10 s' FROM {schema.SESSION_TABLE} "
                   "WHERE id = %s", [sid])
    assert cursor.fetchone()[0]  # renewed
    cursor.execute(f"UPDATE {schema.SESSION_TABLE} SET ended_at = now() WHERE id = %s", [sid])
    assert session_renewer(ctx)() is None  # swept meanwhile: its jobs may run elsewhere


SERIAL_FENCED = textwrap.dedent("""
    import logging, subprocess, sys, time
    from types import SimpleNamespace
    from balsam.core.tunables import Tunables
    from balsam.launcher.fence import start_serial_fence
    from balsam.platform.process import start_time
    ensemble = subprocess.Popen(["sleep", "600"], start_new_session=True)
    own = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 600"], start_new_session=True)
    print(ensemble.pid, own.pid, flush=True)
    tunables = Tunables.from_settings({"lease_seconds": 4, "kill_grace_seconds": 1})
    ctx = SimpleNamespace(tunables=tunables, log=logging.getLogger("fence"),
                          watchdog=SimpleNamespace(registered={p: start_time(p)
                                                           for p in (ensemble.pid, own.pid)}))
    start_serial_fence(ctx, ensemble.pid, time.monotonic())  # fires 1 s on
    time.sleep(600)
    sys.exit(0)
""")


def assert_the_fence_kills_the_tasks_and_exits_1(script: str) -> None:
    """Run ``script``: it prints the pids of the tasks it started (each in a group of its own,
    ignoring SIGTERM) and arms a fence that fires 1 s on, nothing confirming a renewal. The
    process exits 1 and every one of the tasks is dead."""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    starts: dict[int, Optional[int]] = {}
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        starts = {pid: start_time(pid) for pid in pids}
        assert proc.wait(120) == 1
        wait_for(lambda: all(process_gone(p) for p in pids), 60, "both to be dead")
    finally:
        proc.kill()
        proc.wait()
        for pid in pids:
            kill_group_of(pid, starts.get(pid))


@pytest.mark.slow
def test_the_serial_fence_kills_the_ensemble_and_the_launchers_tasks_and_exits_1() -> None:
    # A real process running the fence over a real ensemble group and a task of its own that
    # ignores SIGTERM, nothing confirming: after 1 s both are dead and the process ended (1).
    assert_the_fence_kills_the_tasks_and_exits_1(SERIAL_FENCED)


OWN_FENCED = textwrap.dedent("""
    import logging, subprocess, sys, time
    from types import SimpleNamespace
    from balsam.core.tunables import Tunables
    from balsam.launcher.fence import start_own_tasks_fence
    from balsam.platform.process import start_time
    own = [subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 600"], start_new_session=True)
           for _ in range(2)]
    print(*(p.pid for p in own), flush=True)
    tunables = Tunables.from_settings({"lease_seconds": 4, "kill_grace_seconds": 1})
    ctx = SimpleNamespace(tunables=tunables, log=logging.getLogger("fence"), db_path="",
                          session_id=0, opened_at=time.monotonic(), lease_since=0.0)
    start_own_tasks_fence(ctx, {p.pid: start_time(p.pid) for p in own})  # fires 1 s on
    time.sleep(600)
    sys.exit(0)
""")


@pytest.mark.slow
def test_the_own_tasks_fence_stops_the_launchers_tasks_and_exits_1() -> None:
    # The launcher's own tasks after their ensemble ended (they ignore SIGTERM), nothing
    # confirming a renewal: a second after the session's opening both are dead and the
    # process ended with status 1 (the session left to a sweep).
    assert_the_fence_kills_the_tasks_and_exits_1(OWN_FENCED)


def test_the_serial_fence_does_nothing_once_the_ensemble_was_reaped() -> None:
    # The launcher's loop reaped the ensemble (it has moved on): the fence fires but neither
    # kills the launcher's own task nor ends this process.
    ensemble = subprocess.Popen(["sleep", "600"], start_new_session=True)
    own = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        ensemble.kill()
        ensemble.wait()
        tunables = Tunables.from_settings({"lease_seconds": 4, "kill_grace_seconds": 1})
        ctx = SimpleNamespace(tunables=tunables, log=logging.getLogger("fence"), db_path="",
                              session_id=0,
                              watchdog=SimpleNamespace(registered={own.pid: start_time(own.pid)}))
        # Due at once: it asks first (no database here: not renewed), then fires.
        fence = start_serial_fence(ctx, ensemble.pid, time.monotonic() - 60)
        wait_for(lambda: fence.fired, 30, "the fence to fire")
        fence.close()
        assert own.poll() is None
    finally:
        own.kill()
        own.wait()


def test_the_fence_leaves_alone_a_group_whose_id_now_names_another_process() -> None:
    """The loop reaped a task but had not yet removed it from the watchdog when the fence
    fired, and another process took its id meanwhile (session 21): the fence signals groups
    with their leaders' start times, read when registered, so that one is left alone."""
    import threading

    from balsam.launcher.fence import start_fence

    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    own = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        took = start_time(other.pid)
        assert took is not None
        # "other" stands for the process that took the id of a task started one tick earlier.
        registered = {other.pid: took - 1, own.pid: start_time(own.pid)}
        severed = threading.Event()
        tunables = Tunables.from_settings({"lease_seconds": 4, "kill_grace_seconds": 1})
        ctx = SimpleNamespace(tunables=tunables, log=logging.getLogger("fence"), db_path="",
                              session_id=0, opened_at=time.monotonic() - 60,
                              db=SimpleNamespace(sever=severed.set),
                              watchdog=SimpleNamespace(registered=registered))
        fence = start_fence(ctx)  # due at once: asks (no database: not renewed), then fires
        wait_for(severed.is_set, 30, "the fence to stop the tasks and sever the connection")
        fence.close()
        assert own.wait(10) == -signal.SIGTERM
        assert other.poll() is None
    finally:
        for proc in (other, own):
            proc.kill()
            proc.wait()


def test_a_task_started_after_the_watchdog_died_is_still_stopped_by_the_fence() -> None:
    """The fence stops the groups the launcher registered with its watchdog; a group whose
    line the watchdog could not take (its process was killed: the pipe has no reader) was not
    kept, so the fence left that task running past the lease (review of session 21)."""
    import threading

    from balsam.launcher.fence import start_fence
    from balsam.launcher.watchdog import Watchdog

    dog = Watchdog(1.0)
    assert dog.proc is not None
    dog.proc.kill()  # (the test's own watchdog process)
    dog.proc.wait()
    own = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        dog.add(own.pid, "j")  # the pipe's reader is gone: the line is refused
        severed = threading.Event()
        tunables = Tunables.from_settings({"lease_seconds": 4, "kill_grace_seconds": 1})
        ctx = SimpleNamespace(tunables=tunables, log=logging.getLogger("fence"), db_path="",
                              session_id=0, opened_at=time.monotonic() - 60,
                              db=SimpleNamespace(sever=severed.set), watchdog=dog)
        fence = start_fence(ctx)  # due at once: asks (no database: not renewed), then fires
        wait_for(severed.is_set, 30, "the fence to stop the tasks and sever the connection")
        fence.close()
        assert own.wait(10) == -signal.SIGTERM
    finally:
        own.kill()
        own.wait()
        dog.close()
