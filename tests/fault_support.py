"""Set-ups shared by the fault tests (``test_exactly_once``, ``test_lease_fence_hung``,
``test_warm_start_faults``, ``test_killed_starts``), so that each test reads as its scenario:
ticker jobs held going by a file the test removes (their script in the ``scripts`` fixture of
``conftest.py``), processes frozen and killed at once, a launcher's database
server processes stopped, and the checks such tests end with.

Every wait is for a condition (:func:`launcher_support.wait_for`), never a sleep; the trails the
ticker leaves (:mod:`once_support`) say what ran when, after the fact."""
from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from conftest import make_public_tmpdir
from launcher_procs import Launcher
from launcher_support import add_app, add_jobs, job_row, wait_for, write_script
from once_support import (
    TICKER,
    descendants,
    kill,
    overlap_seconds,
    recorded_runs,
    runs,
    unrecorded_runs,
)

from balsam.core import schema

SERIAL = ("--consume-all", "--job-mode", "serial")
MPI = ("--consume-all", "--job-mode", "mpi")


def add_ticker_app(cursor: Any, scripts: str) -> None:
    """The app ``tick``: one run of a job leaves a trail of ticks (:data:`once_support.TICKER`)."""
    add_app(cursor, "tick", write_script(scripts, "tick.sh", TICKER))


def held_markers(*holds: str) -> tuple[str, list[str]]:
    """A new markers directory and the hold files ``<markers>/<hold>`` (created): a run given
    ``HOLD=<file>`` ticks on while the file exists (the test removes it)."""
    markers = make_public_tmpdir("balsam-once-markers-")
    paths = [os.path.join(markers, name) for name in holds]
    for path in paths:
        open(path, "w").close()
    return markers, paths


def tick_jobs(cursor: Any, markers: str, prefix: str, count: int, hold: str, priority: int = 0,
              ticks: int = 1) -> list[str]:
    """``count`` ticker jobs, two per node, that run ``ticks`` ticks and on while ``hold``
    exists (runnable at once: PREPROCESSED, as the warm start needs)."""
    return add_jobs(cursor, [{"name": f"{prefix}{i}", "application": "tick",
                              "priority": priority, "node_packing_count": 2,
                              "state": "PREPROCESSED",
                              "environ_vars": f"MARKERS={markers}:TICKS={ticks}:HOLD={hold}"}
                             for i in range(count)])


def tickers(cursor: Any, scripts: str, count: int, ticks: int, stubborn: bool = False,
            packing: int = 4, hold: bool = False) -> tuple[list[str], str]:
    """``count`` jobs running the ticker; (their ids, the markers directory). ``hold``: runs
    go on past ``ticks`` while ``<markers>/hold`` exists (created here; the test removes it)."""
    markers, _ = held_markers(*(["hold"] if hold else []))
    add_ticker_app(cursor, scripts)
    env = f"MARKERS={markers}:TICKS={ticks}" + (":STUBBORN=1" if stubborn else "")
    if hold:
        env += f":HOLD={os.path.join(markers, 'hold')}"
    ids = add_jobs(cursor, [{"name": f"t{i}", "application": "tick", "environ_vars": env,
                             "node_packing_count": packing} for i in range(count)])
    return ids, markers


def running(cursor: Any) -> int:
    """How many jobs are RUNNING."""
    cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE state = 'RUNNING'")
    return int(cursor.fetchone()[0])


def all_finished(cursor: Any, ids: Iterable[str]) -> bool:
    return all(job_row(cursor, j)["state"] == "JOB_FINISHED" for j in ids)


def open_sessions(cursor: Any) -> int:
    """Launcher sessions not ended (processing sessions aside)."""
    cursor.execute(f"SELECT count(*) FROM {schema.SESSION_TABLE} WHERE ended_at IS NULL "
                   "AND job_mode <> 'processing'")
    return int(cursor.fetchone()[0])


def serial_sessions(cursor: Any) -> int:
    """Serial-mode sessions, ended or not (one launcher: one, however many ensembles)."""
    cursor.execute(f"SELECT count(*) FROM {schema.SESSION_TABLE} WHERE job_mode = 'serial'")
    return int(cursor.fetchone()[0])


def assert_all_ran_once_at_a_time(cursor: Any, markers: str, ids: list[str]) -> None:
    """Every job finished, no two runs of one job ticked at once, and no run that ticked is
    missing from its job's history."""
    assert all_finished(cursor, ids)
    assert overlap_seconds(markers, ids) == {} and unrecorded_runs(cursor, markers, ids) == {}


def vanish(pids: list[int]) -> None:
    """SIGSTOP every process of ``pids``, then SIGKILL them: all vanish at once, none reacting
    to another's death in between (a watchdog must not report its rank's death)."""
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            kill(pid, sig)


def lose_node(rank: int) -> list[int]:
    """A node crash: worker rank ``rank``, its watchdog and its tasks vanish at once (nothing
    reports its tasks dead); the pids killed."""
    node = [rank] + descendants(rank)
    vanish(node)
    return node


def stop_once_finished(launcher: Launcher, cursor: Any, ids: list[str], what: str) -> None:
    """Wait until the jobs ``ids`` finished (``what`` ran them), then SIGTERM the persistent
    ``launcher``: it exits 0."""
    wait_for(lambda: all_finished(cursor, ids), 180, what)
    launcher.signal(signal.SIGTERM)
    assert launcher.wait(60) == 0


def backends_of(cursor: Any, application_name: str) -> list[int]:
    """The pids of the server processes of connections named ``application_name``."""
    cursor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                   [application_name])
    return [int(r[0]) for r in cursor.fetchall()]


def stop_idle_backends(cursor: Any, application_name: str, stopped: list[int]) -> None:
    """SIGSTOP the server processes of ``application_name`` while each is idle (between
    transactions: it holds no lock a sweep would wait for); each is added to ``stopped``."""
    pids = backends_of(cursor, application_name)
    assert pids, f"no server process of {application_name}"

    def stopped_idle(pid: int) -> bool:
        kill(pid, signal.SIGSTOP)
        cursor.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid])
        if cursor.fetchone()[0] == "idle":
            stopped.append(pid)
            return True
        kill(pid, signal.SIGCONT)  # in a statement: let it finish, try again
        return False

    for pid in pids:
        wait_for(lambda pid=pid: stopped_idle(pid), 60, f"server process {pid} to be idle", 0.01)


@contextmanager
def connections_hung(cursor: Any, *application_names: str) -> Iterator[None]:
    """The server processes of each of ``application_names`` stopped in turn while idle (a
    launcher's connection that hangs); all of them continued (SIGCONT) at exit."""
    stopped: list[int] = []
    try:
        for name in application_names:
            stop_idle_backends(cursor, name, stopped)
        yield
    finally:
        for pid in stopped:
            kill(pid, signal.SIGCONT)


def lease_expiry(cursor: Any, session_id: int, lease: float) -> float:
    """When the session's lease expires (epoch seconds) if nothing renews it from now on."""
    cursor.execute(f"SELECT EXTRACT(EPOCH FROM heartbeat) FROM {schema.SESSION_TABLE} "
                   "WHERE id = %s", [session_id])
    return float(cursor.fetchone()[0]) + lease


def assert_fenced_then_run_again(cursor: Any, markers: str, job: str, pid: int,
                                 expires: float) -> None:
    """The job ran twice: the first run (``pid``) last ticked before its lease could expire,
    the runs never overlapped and both are in the job's history."""
    trails = runs(markers, job)
    assert len(trails) == 2
    assert trails[pid][1] < expires, (trails, expires)  # dead before the lease could expire
    (again,) = (span for p, span in trails.items() if p != pid)
    print(f"first run's last tick {expires - trails[pid][1]:.1f} s before its lease expired, "
          f"second run's first tick {again[0] - expires:.1f} s after")
    assert overlap_seconds(markers, [job]) == {}
    assert recorded_runs(cursor, job) == 2 and unrecorded_runs(cursor, markers, [job]) == {}


def assert_swept(cursor: Any, session_id: int) -> None:
    """The session was ended by another launcher's sweep (its lease expired)."""
    cursor.execute(f"SELECT end_reason FROM {schema.SESSION_TABLE} WHERE id = %s", [session_id])
    assert "lost its lease" in cursor.fetchone()[0]
