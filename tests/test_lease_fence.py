"""A launcher's tasks never outlive its lease (balsam.launcher.fence): the lease floor, and the
self-fence of a launcher whose database connection hangs -- real PostgreSQL (one launcher's
server processes SIGSTOPped, the others untouched), real MPI- and serial-mode launchers,
ticking tasks; the serial launcher's own fence also on real process groups."""
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
from conftest import make_public_tmpdir
from launcher_support import (
    QUICK,
    add_app,
    add_jobs,
    job_row,
    kill_group_of,
    launchers,
    process_gone,
    settings,
    wait_for,
)
from once_support import (
    TICKER,
    descendants,
    kill,
    overlap_seconds,
    rank_pid,
    recorded_runs,
    runs,
    shm_segments,
    unrecorded_runs,
    watchdog_of,
    write_script,
)
from test_exactly_once import launcher_log, scripts, tickers  # noqa: F401 - a fixture

from balsam.core import schema
from balsam.core.tunables import Tunables
from balsam.launcher.fence import LeaseFence, effective_lease, fence_after, lease_floor, start_serial_fence
from balsam.platform.process import start_time

MPI = ("--consume-all", "--job-mode", "mpi")


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
    ensemble = subprocess.Popen(["sleep", "600"], start_new_session=True)
    own = subprocess.Popen(["sh", "-c", "trap '' TERM; exec sleep 600"], start_new_session=True)
    print(ensemble.pid, own.pid, flush=True)
    tunables = Tunables.from_settings({"lease_seconds": 4, "kill_grace_seconds": 1})
    ctx = SimpleNamespace(tunables=tunables, log=logging.getLogger("fence"),
                          watchdog=SimpleNamespace(registered={ensemble.pid, own.pid}))
    start_serial_fence(ctx, ensemble.pid, time.monotonic())  # fires 1 s on
    time.sleep(600)
    sys.exit(0)
""")


@pytest.mark.slow
def test_the_serial_fence_kills_the_ensemble_and_the_launchers_tasks_and_exits_1() -> None:
    # A real process running the fence over a real ensemble group and a task of its own that
    # ignores SIGTERM, nothing confirming: after 1 s both are dead and the process ended (1).
    proc = subprocess.Popen([sys.executable, "-c", SERIAL_FENCED], stdout=subprocess.PIPE,
                            text=True)
    ensemble = own = 0
    starts: dict[int, Optional[int]] = {}
    try:
        ensemble, own = (int(p) for p in proc.stdout.readline().split())
        starts = {pid: start_time(pid) for pid in (ensemble, own)}
        assert proc.wait(120) == 1
        wait_for(lambda: process_gone(ensemble) and process_gone(own), 60, "both to be dead")
    finally:
        proc.kill()
        for pid in (ensemble, own):
            if pid:
                kill_group_of(pid, starts.get(pid))


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
    proc = subprocess.Popen([sys.executable, "-c", OWN_FENCED], stdout=subprocess.PIPE,
                            text=True)
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
                              session_id=0, watchdog=SimpleNamespace(registered={own.pid}))
        # Due at once: it asks first (no database here: not renewed), then fires.
        fence = start_serial_fence(ctx, ensemble.pid, time.monotonic() - 60)
        wait_for(lambda: fence.fired, 30, "the fence to fire")
        fence.close()
        assert own.poll() is None
    finally:
        own.kill()
        own.wait()


def backends_of(cursor, application_name: str) -> list[int]:
    cursor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                   [application_name])
    return [int(r[0]) for r in cursor.fetchall()]


def stop_idle_backends(cursor, application_name: str) -> list[int]:
    """SIGSTOP the server processes of ``application_name`` while each is idle (between
    transactions: it holds no lock a sweep would wait for); returns their pids."""
    pids = backends_of(cursor, application_name)
    assert pids, f"no server process of {application_name}"

    def stopped_idle(pid: int) -> bool:
        kill(pid, signal.SIGSTOP)
        cursor.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid])
        if cursor.fetchone()[0] == "idle":
            return True
        kill(pid, signal.SIGCONT)  # in a statement: let it finish, try again
        return False

    for pid in pids:
        wait_for(lambda pid=pid: stopped_idle(pid), 60, f"server process {pid} to be idle", 0.01)
    return pids


@pytest.mark.slow
def test_a_launcher_whose_connection_hangs_stops_its_tasks_before_its_lease_expires(
        db, cursor, scripts):  # noqa: F811 - the fixture
    # The task ignores SIGTERM: only the fence's SIGKILL ends it. The second launcher sweeps
    # the hung launcher's session once its lease expired and runs the job again.
    (job,), markers = tickers(cursor, scripts, 1, ticks=10, stubborn=True, hold=True)
    lease = 10  # the fence fires 7 s after the last confirmed renewal was sent
    with settings(db, local_nodes=1, launcher=dict(QUICK, lease_seconds=lease)), \
            launchers() as start:
        first = start(*MPI)
        wait_for(lambda: runs(markers, job), 60, "the first run to tick")
        session = job_row(cursor, job)["session_id"]
        backends = stop_idle_backends(cursor, "balsam-launcher")
        try:
            cursor.execute(f"SELECT EXTRACT(EPOCH FROM heartbeat) FROM {schema.SESSION_TABLE} "
                           "WHERE id = %s", [session])
            expires = float(cursor.fetchone()[0]) + lease  # renewals stopped with its server
            second = start(*MPI, "--persistent")
            (pid,) = runs(markers, job)
            wait_for(lambda: process_gone(pid), 120, "the fence to stop the first run")
            os.remove(os.path.join(markers, "hold"))  # the second run ticks 10 times
            assert first.wait(120) == 1  # a lost session: nothing recorded
            wait_for(lambda: job_row(cursor, job)["state"] == "JOB_FINISHED", 180,
                     "the second launcher to run the job again")
            second.signal(signal.SIGTERM)
            assert second.wait(60) == 0
        finally:
            for backend in backends:
                kill(backend, signal.SIGCONT)
        log = launcher_log(first)
    assert "no renewal of the lease confirmed for" in log, log
    trails = runs(markers, job)
    assert len(trails) == 2
    assert trails[pid][1] < expires, (trails, expires)  # dead before the lease could expire
    (again,) = (span for p, span in trails.items() if p != pid)
    print(f"first run's last tick {expires - trails[pid][1]:.1f} s before its lease expired, "
          f"second run's first tick {again[0] - expires:.1f} s after")
    assert overlap_seconds(markers, [job]) == {}
    assert recorded_runs(cursor, job) == 2 and unrecorded_runs(cursor, markers, [job]) == {}
    cursor.execute(f"SELECT end_reason FROM {schema.SESSION_TABLE} WHERE id = %s", [session])
    assert "lost its lease" in cursor.fetchone()[0]  # swept by the second launcher


@pytest.mark.slow
def test_a_serial_master_whose_connection_hangs_has_its_ensemble_killed_before_the_lease(
        db, cursor, scripts):  # noqa: F811 - the fixture
    # The master's server process is SIGSTOPped: its loop hangs in a statement and renews no
    # more. The stuck limit (the 20-s reconnection back-off + 2 heartbeats: 22 s) comes after
    # the 20-s lease; the fence's rule (20 - 1 - 2 = 17 s, less the 2-s read allowance: 15 s)
    # kills the ensemble in time, and the
    # worker's watchdog its task (which ignores SIGTERM). A new ensemble runs the job again.
    (job,), markers = tickers(cursor, scripts, 1, ticks=10, stubborn=True, hold=True)
    lease, limit = 20, 22
    tunables = dict(QUICK, lease_seconds=lease, reconnect_max_seconds=20)
    with settings(db, local_nodes=1, launcher=tunables), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "serial")
        wait_for(lambda: runs(markers, job), 60, "the first run to tick")
        # Past the ensemble's start-up (the launcher does not judge it for max(limit, lease)).
        started = time.monotonic()
        wait_for(lambda: time.monotonic() - started > limit + 1, 60, "the start-up to pass", 0.5)
        session = job_row(cursor, job)["session_id"]
        backends = stop_idle_backends(cursor, "balsam-serial-master")
        try:
            cursor.execute(f"SELECT EXTRACT(EPOCH FROM heartbeat) FROM {schema.SESSION_TABLE} "
                           "WHERE id = %s", [session])
            expires = float(cursor.fetchone()[0]) + lease
            (pid,) = runs(markers, job)
            wait_for(lambda: process_gone(pid), 120, "the first run to be stopped")
            os.remove(os.path.join(markers, "hold"))
            assert launcher.wait(240) == 0
        finally:
            for backend in backends:
                kill(backend, signal.SIGCONT)
        log = launcher_log(launcher)
    assert "the serial-mode ensemble is stuck (its master has not renewed the lease" in log, log
    assert "(limit 15 s)" in log, log
    trails = runs(markers, job)
    assert len(trails) == 2 and trails[pid][1] < expires, (trails, expires)
    assert overlap_seconds(markers, [job]) == {}
    assert job_row(cursor, job)["state"] == "JOB_FINISHED"
    assert recorded_runs(cursor, job) == 2 and unrecorded_runs(cursor, markers, [job]) == {}


@pytest.mark.slow
def test_a_serial_launcher_cut_off_with_its_master_kills_everything_before_the_lease(
        db, cursor, scripts):  # noqa: F811 - the fixture
    # Both server processes stop (the launcher's first: it then judges nothing, and the master
    # renews until its own stops): no look at the lease returns. The launcher's own fence
    # (17 s after the lease was last renewed, by its last confirmed look) kills the ensemble and
    # its task (which ignores SIGTERM) and exits 1; a second launcher sweeps the session once
    # the lease expired and runs the job again.
    (job,), markers = tickers(cursor, scripts, 1, ticks=10, stubborn=True, hold=True)
    lease = 20
    tunables = dict(QUICK, lease_seconds=lease, reconnect_max_seconds=5)
    with settings(db, local_nodes=1, launcher=tunables), launchers() as start:
        first = start("--consume-all", "--job-mode", "serial")
        wait_for(lambda: runs(markers, job), 60, "the first run to tick")
        wait_for(lambda: "lease fence armed" in launcher_log(first), 180,
                 "the launcher's first confirmed look at the lease", 0.2)
        session = job_row(cursor, job)["session_id"]
        backends = stop_idle_backends(cursor, "balsam-launcher")
        try:
            backends += stop_idle_backends(cursor, "balsam-serial-master")
            cursor.execute(f"SELECT EXTRACT(EPOCH FROM heartbeat) FROM {schema.SESSION_TABLE} "
                           "WHERE id = %s", [session])
            expires = float(cursor.fetchone()[0]) + lease  # nothing renews it any more
            (pid,) = runs(markers, job)
            wait_for(lambda: process_gone(pid), 120, "the fence to stop the first run")
            assert first.wait(120) == 1  # as after a lost session: nothing recorded
        finally:
            for backend in backends:
                kill(backend, signal.SIGCONT)
        log = launcher_log(first)
        os.remove(os.path.join(markers, "hold"))  # the second run ticks 10 times
        second = start(*MPI, "--persistent")
        wait_for(lambda: job_row(cursor, job)["state"] == "JOB_FINISHED", 180,
                 "the second launcher to run the job again")
        second.signal(signal.SIGTERM)
        assert second.wait(60) == 0
    assert "no lease age confirmed for" in log, log
    assert "the serial-mode ensemble is stuck" not in log, log
    trails = runs(markers, job)
    assert len(trails) == 2
    assert trails[pid][1] < expires, (trails, expires)  # dead before the lease could expire
    (again,) = (span for p, span in trails.items() if p != pid)
    print(f"first run's last tick {expires - trails[pid][1]:.1f} s before its lease expired, "
          f"second run's first tick {again[0] - expires:.1f} s after")
    assert overlap_seconds(markers, [job]) == {}
    assert recorded_runs(cursor, job) == 2 and unrecorded_runs(cursor, markers, [job]) == {}
    cursor.execute(f"SELECT end_reason FROM {schema.SESSION_TABLE} WHERE id = %s", [session])
    assert "lost its lease" in cursor.fetchone()[0]  # swept by the second launcher


@pytest.mark.slow
def test_a_serial_ensemble_cut_off_in_its_start_up_is_fenced_before_the_lease(
        db, cursor, scripts):  # noqa: F811 - the fixture
    # As above, but both server processes stop as soon as the first run ticks: within the
    # ensemble's start-up, before any look at the lease (the first comes max(limit, lease) =
    # 20 s after the start). Before, the fence was armed only by that look, which hung: the
    # task (ignoring SIGTERM, held) ran past the lease. Now it counts from the session's
    # opening: the run is dead before the lease could expire, the launcher exits 1.
    (job,), markers = tickers(cursor, scripts, 1, ticks=10, stubborn=True, hold=True)
    lease = 20
    tunables = dict(QUICK, lease_seconds=lease, reconnect_max_seconds=5)
    with settings(db, local_nodes=1, launcher=tunables), launchers() as start:
        first = start("--consume-all", "--job-mode", "serial")
        wait_for(lambda: runs(markers, job), 60, "the first run to tick")
        session = job_row(cursor, job)["session_id"]
        wait_for(lambda: backends_of(cursor, "balsam-serial-master"), 60, "the master's connection")
        backends = stop_idle_backends(cursor, "balsam-launcher")
        try:
            backends += stop_idle_backends(cursor, "balsam-serial-master")
            cursor.execute(f"SELECT EXTRACT(EPOCH FROM heartbeat) FROM {schema.SESSION_TABLE} "
                           "WHERE id = %s", [session])
            expires = float(cursor.fetchone()[0]) + lease  # nothing renews it any more
            (pid,) = runs(markers, job)
            wait_for(lambda: process_gone(pid), 120, "the fence to stop the first run")
            assert first.wait(120) == 1  # as after a lost session: nothing recorded
        finally:
            for backend in backends:
                kill(backend, signal.SIGCONT)
        log = launcher_log(first)
    assert "no lease age confirmed for" in log, log
    assert "the serial-mode ensemble is stuck" not in log, log
    trails = runs(markers, job)
    assert trails[pid][1] < expires, (trails, expires)  # dead before the lease could expire
    print(f"the run's last tick {expires - trails[pid][1]:.1f} s before its lease expired")


@pytest.mark.slow
def test_the_launchers_own_task_outliving_its_ensemble_is_fenced_before_the_lease(
        db, cursor, scripts):  # noqa: F811 - the fixture
    # The warm start's task (ignoring SIGTERM, held) outlives its ensemble: worker rank 1
    # vanishes with its watchdog on the only node, so no ensemble follows and the launcher
    # waits for its own task, renewing the lease itself. Then its server process stops: the
    # renewal hangs. Before, nothing was fenced there: the task ran past the lease (and a
    # sweeper could run the job again beside it). Now the launcher's fence kills it before
    # the lease could expire and ends the launcher (1); a second launcher runs the job again.
    markers = make_public_tmpdir("balsam-once-markers-")
    hold = os.path.join(markers, "hold")
    open(hold, "w").close()
    add_app(cursor, "tick", write_script(scripts, "tick.sh", TICKER))
    (job,) = add_jobs(cursor, [{"name": "own", "application": "tick", "state": "PREPROCESSED",
                                "node_packing_count": 2, "environ_vars":
                                f"MARKERS={markers}:TICKS=10:STUBBORN=1:HOLD={hold}"}])
    lease = 20
    tunables = dict(QUICK, lease_seconds=lease, reconnect_max_seconds=5)
    with settings(db, local_nodes=1, cores_per_node=2, launcher=tunables), \
            launchers() as start:
        first = start("--consume-all", "--job-mode", "serial")
        wait_for(lambda: runs(markers, job), 60, "the launcher's own task to tick")
        wait_for(lambda: "warm start: 1 task(s) started by the launcher" in launcher_log(first),
                 60, "the warm start")
        rank1 = wait_for(lambda: rank_pid(first.pid, 1), 60, "worker rank 1")
        wait_for(lambda: watchdog_of(rank1), 60, "rank 1's watchdog")  # it has reported
        files = shm_segments(rank1)
        node = [rank1] + descendants(rank1)  # with its watchdog: nothing reports it dead
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in node:
                kill(pid, sig)
        # Its only node lost, no ensemble follows: the launcher waits for its own task.
        wait_for(lambda: "the serial-mode ensemble failed" in launcher_log(first), 120,
                 "the launcher to give up its ensemble", 0.2)
        session = job_row(cursor, job)["session_id"]
        backends = stop_idle_backends(cursor, "balsam-launcher")
        try:
            cursor.execute(f"SELECT EXTRACT(EPOCH FROM heartbeat) FROM {schema.SESSION_TABLE} "
                           "WHERE id = %s", [session])
            expires = float(cursor.fetchone()[0]) + lease  # nothing renews it any more
            (pid,) = runs(markers, job)
            wait_for(lambda: process_gone(pid), 120, "the fence to stop the launcher's task")
            assert first.wait(120) == 1  # as after a lost session: nothing recorded
        finally:
            for backend in backends:
                kill(backend, signal.SIGCONT)
        log = launcher_log(first)
        for path in files:  # its remover, the watchdog, was killed with it: the node's file
            if os.path.exists(path):  # goes with a lost node (here, unless the launcher saw it)
                os.unlink(path)
        os.remove(hold)  # the second run ticks 10 times
        second = start(*MPI, "--persistent")
        wait_for(lambda: job_row(cursor, job)["state"] == "JOB_FINISHED", 180,
                 "the second launcher to run the job again")
        second.signal(signal.SIGTERM)
        assert second.wait(60) == 0
    assert "stopping the launcher's own task(s) before the lease could expire" in log, log
    trails = runs(markers, job)
    assert len(trails) == 2
    assert trails[pid][1] < expires, (trails, expires)  # dead before the lease could expire
    print(f"the run's last tick {expires - trails[pid][1]:.1f} s before its lease expired")
    assert overlap_seconds(markers, [job]) == {}
    assert recorded_runs(cursor, job) == 2 and unrecorded_runs(cursor, markers, [job]) == {}
