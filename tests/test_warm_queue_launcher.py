"""The warm queue (function tasks queued behind short running ones in their warm processes,
``launcher/serial_warm.py``) under real serial-mode launchers, real mpiexec ensembles and the
real database: every function appends the start and the end of each of its runs to one log
under a lock, and the tests check against the database that each job's recorded runs
(RUNNING events) are exactly the runs that happened, that no two tasks ever ran at once on a
one-task-at-a-time node (a queued task begins only after the one ahead returned, on its
place), and that nothing submitted is lost -- with functions that raise, one whose process
dies between tasks, outcomes too big for the master's batch, a launcher stopped (SIGTERM)
with tasks queued inside warm processes, and a task that turns long on a two-place node (the
tasks queued behind it are taken back and run in the other place). Whether a given task was
queued behind another depends on timing (the pool queues only while tasks take under 10 ms);
the checks hold either way, and every wait is for a condition, with generous deadlines."""
from __future__ import annotations

import os
import shutil
import signal
import time
from collections import Counter

import pytest
from launcher_procs import launchers
from launcher_support import QUICK, settings, wait_for
from once_support import kill, rank_pid
from test_api import make_site

from balsam import defaults
from balsam.api import Job, sites
from balsam.core import lifecycle, schema

APPS = '''import fcntl
import os
import time

from balsam.site import ApplicationDefinition


def note(log, what, name):
    with open(log, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(f"{what} {name} {os.getpid()} {time.monotonic_ns()}\\n")
        fh.flush()


class Step(ApplicationDefinition):
    """Logs its run; raises when asked; returns ``size`` characters (a big one goes through
    the runner's own database path)."""

    def run(self, log, name, size=0, fail=False):
        note(log, "START", name)
        try:
            if fail:
                raise ValueError(f"{name} failed on purpose")
            return name + "x" * size
        finally:
            note(log, "END", name)


class Gate(ApplicationDefinition):
    """Logs its start, then runs until ``gate`` exists."""

    def run(self, log, name, gate):
        note(log, "START", name)
        end = time.monotonic() + 600  # bounded: a test cut short never opens the gate
        while not os.path.exists(gate) and time.monotonic() < end:
            time.sleep(0.005)
        note(log, "END", name)


class Die(ApplicationDefinition):
    """Its warm process dies under it (what is queued behind it never ran)."""

    def run(self, log, name):
        note(log, "START", name)
        note(log, "DIE", name)
        os._exit(3)
'''

BIG = defaults.PYFUNC_INLINE_BYTES + 10


@pytest.fixture
def site(db):
    yield make_site(db, fn=APPS)
    shutil.rmtree(os.path.join(db, "apps"), ignore_errors=True)
    sites.forget_apps()


def step(site: str, log: str, name: str, **params) -> Job:
    return Job(site_path=site, app_name="fn.Step", workdir=f"wq/{name}",
               parameters={"log": log, "name": name, **params})


def in_claim_order(jobs: list[Job]) -> list[Job]:
    """``jobs`` with wall times that make serial claims take them in this order (claims go by
    priority, packing, longest wall time first; jobs equal in all three come in no set order)."""
    for i, job in enumerate(jobs):
        job.wall_time_min = len(jobs) - i
    return jobs


def runs(log: str) -> list[tuple[str, str, int, int]]:
    """(what, job name, pid, monotonic ns) of every line of the log, in order."""
    if not os.path.exists(log):
        return []
    with open(log) as fh:
        lines = [line.split() for line in fh.read().splitlines()]
    return [(what, name, int(pid), int(ns)) for what, name, pid, ns in lines]


def recorded_runs(cursor, names: dict[str, str]) -> dict[str, int]:
    """Job name (``names``: job id -> name) -> how many RUNNING events its history has."""
    cursor.execute(f"SELECT j.job_id, count(e.id) FROM {schema.JOB_TABLE} j "
                   f"LEFT JOIN {schema.EVENT_TABLE} e ON e.job_id = j.job_id "
                   "AND e.to_state = 'RUNNING' GROUP BY j.job_id")
    return {names[str(job_id)]: n for job_id, n in cursor.fetchall()}


def final_states(cursor, names: dict[str, str]) -> dict[str, str]:
    cursor.execute(f"SELECT job_id, state FROM {schema.JOB_TABLE}")
    return {names[str(job_id)]: state for job_id, state in cursor.fetchall()}


def ended_runs(cursor, job_id: str) -> int:
    cursor.execute(f"SELECT count(*) FROM {schema.EVENT_TABLE} WHERE job_id = %s "
                   "AND from_state = 'RUNNING'", [job_id])
    return int(cursor.fetchone()[0])


def timed_out_jobs(cursor, names: dict[str, str]) -> set[str]:
    """Names of the jobs with a RUN_TIMEOUT in their history."""
    cursor.execute(f"SELECT DISTINCT job_id FROM {schema.EVENT_TABLE} "
                   "WHERE to_state = 'RUN_TIMEOUT'")
    return {names[str(job_id)] for (job_id,) in cursor.fetchall() if str(job_id) in names}


def name_of(job: Job) -> str:
    return str(job.parameters["name"])


def assert_one_at_a_time(lines: list[tuple[str, str, int, int]], interrupted: set[str]) -> None:
    """Each START is followed by that run's END (or DIE) before any other START: a node that
    holds one task at a time never ran two. A run of a job in ``interrupted`` may have no end
    (its process was stopped under it); the next START then comes from another process."""
    open_run = None
    for what, name, pid, _ in lines:
        if what == "START":
            if open_run is not None:
                assert open_run[0] in interrupted and open_run[1] != pid, \
                    f"{name} started in {pid} while {open_run} ran"
            open_run = (name, pid)
        else:
            assert open_run == (name, pid), f"{what} of {name} in {pid} while {open_run} ran"
            open_run = None


@pytest.mark.slow
def test_queued_function_tasks_each_run_once_one_at_a_time_and_are_all_recorded(site, cursor,
                                                                              tmp_path):
    """120 instant tasks on a one-task-at-a-time node (queued behind each other while short),
    every 7th raising, every 11th returning an outcome too big for the master's batch, and one
    whose warm process dies under it (``os._exit``) with tasks likely queued behind it."""
    log = str(tmp_path / "runs.log")
    jobs = [step(site, log, f"s{i:03d}", fail=i % 7 == 3, size=BIG if i % 11 == 5 else 0)
            for i in range(120)]
    die = Job(site_path=site, app_name="fn.Die", workdir="wq/die",
              parameters={"log": log, "name": "die"})
    Job.objects.bulk_create(jobs[:60] + [die] + jobs[60:])
    names = {str(j.id): name_of(j) for j in jobs + [die]}
    with settings(site, launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "serial")
        assert launcher.wait(240) == 0, launcher.output()

    lines = runs(log)
    starts = Counter(name for what, name, _, _ in lines if what == "START")
    assert_one_at_a_time(lines, interrupted=set())
    expected = {name_of(j): "FAILED" if j.parameters["fail"] else "JOB_FINISHED" for j in jobs}
    expected["die"] = "FAILED"
    assert final_states(cursor, names) == expected
    # Each job ran exactly once, and its history shows exactly that run.
    assert starts == Counter({name: 1 for name in expected})
    assert recorded_runs(cursor, names) == {name: 1 for name in expected}
    for job in jobs:
        if job.parameters["fail"]:
            with pytest.raises(ValueError, match=f"{name_of(job)} failed on purpose"):
                job.result()
        else:
            assert job.result() == name_of(job) + "x" * job.parameters["size"]
    cursor.execute(f"SELECT message FROM {schema.EVENT_TABLE} WHERE job_id = %s "
                   "AND to_state = 'RUN_ERROR'", [str(die.id)])
    assert [m for (m,) in cursor.fetchall()], "the dead process's task has no RUN_ERROR"


@pytest.mark.slow
def test_a_launcher_stopped_with_tasks_queued_loses_none_and_records_each_run(site, cursor,
                                                                           tmp_path):
    """SIGTERM to the launcher while a task that waits for a gate runs, after a stream of
    instant tasks through one place (the ones after it likely queued behind it in its warm
    process, sent while it was young): a task stopped or cancelled unrun is recorded as what
    happened (no RUNNING for one that never began), nothing stays RUNNING, and a second
    launcher runs the rest: every job finishes, each run recorded once."""
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    hold = Job(site_path=site, app_name="fn.Gate", workdir="wq/hold",
               parameters={"log": log, "name": "hold", "gate": gate})
    jobs = [step(site, log, f"t{i:04d}") for i in range(300)]
    Job.objects.bulk_create(jobs[:200] + [hold] + jobs[200:])
    names = {str(j.id): name_of(j) for j in jobs + [hold]}
    with settings(site, launcher=QUICK), launchers() as start:
        first = start("--consume-all", "--job-mode", "serial")
        wait_for(lambda: any(n == "hold" for _, n, *_ in runs(log)), 120, "the gated task")
        first.signal(signal.SIGTERM)
        assert first.wait(120) == 0, first.output()
        between = final_states(cursor, names)
        assert "RUNNING" not in between.values()
        lines = runs(log)
        # No RUNNING recorded for a task that never began, none missing for one that did.
        begun = Counter(n for w, n, *_ in lines if w == "START")
        assert recorded_runs(cursor, names) == {name: begun[name] for name in names.values()}
        assert between["hold"] in ("RUN_TIMEOUT", "RESTART_READY")
        assert [n for w, n, *_ in lines if w == "START"][-1] == "hold"  # nothing began after
        with open(gate, "w"):
            pass
        second = start("--consume-all", "--job-mode", "serial")
        assert second.wait(240) == 0, second.output()

    lines = runs(log)
    starts = Counter(name for what, name, _, _ in lines if what == "START")
    assert_one_at_a_time(lines, interrupted={"hold"})
    assert final_states(cursor, names) == {name: "JOB_FINISHED" for name in names.values()}
    assert recorded_runs(cursor, names) == {name: starts[name] for name in names.values()}
    # Only the run the stop interrupted is run again; every job ran.
    assert starts == Counter({name: 2 if name == "hold" else 1 for name in names.values()})


def log_says(launcher, text: str) -> bool:
    path = launcher.log_path()
    if not path or not os.path.exists(path):
        return False
    with open(path) as fh:
        return text in fh.read()


@pytest.mark.slow
def test_user_kills_of_a_queued_task_and_of_the_task_ahead_of_queued_ones(site, cursor,
                                                                         tmp_path):
    """Two gated tasks in a stream of instant ones through one place, each with two tasks
    after it (likely queued behind it in its warm process). A user kills the first task after
    the first gate (its successor, taken back with it, must still run once), then the second
    gated task itself while it runs (the two after it go back to the queue and run once).
    Every job not killed runs once, recorded once; nothing runs twice or at once."""
    log = str(tmp_path / "runs.log")

    def gated(name: str) -> Job:
        return Job(site_path=site, app_name="fn.Gate", workdir=f"wq/{name}",
                   parameters={"log": log, "name": name, "gate": str(tmp_path / name)})

    order = ([step(site, log, f"a{i:02d}") for i in range(30)] + [gated("g1")]
             + [step(site, log, n) for n in ("k1", "b1")]
             + [step(site, log, f"c{i:02d}") for i in range(30)] + [gated("g2")]
             + [step(site, log, n) for n in ("a2", "b2")]
             + [step(site, log, f"d{i:02d}") for i in range(30)])
    Job.objects.bulk_create(in_claim_order(order))  # k1 behind g1 (else k1 may run first)
    names = {str(j.id): name_of(j) for j in order}
    by_name = {name: job_id for job_id, name in names.items()}
    cursor.execute("SELECT wall_time_minutes FROM core_balsamjob WHERE job_id = ANY(%s::uuid[]) "
                   "ORDER BY wall_time_minutes DESC", [[by_name["g1"], by_name["k1"]]])
    assert [m for (m,) in cursor.fetchall()] == [len(order) - 30, len(order) - 31]
    killed_line = "was killed by a user"
    with settings(site, launcher={**QUICK, "kill_check_seconds": 0.2}), \
            launchers() as start:
        launcher = start("--consume-all", "--job-mode", "serial")
        wait_for(lambda: any(n == "g1" for _, n, *_ in runs(log)), 120, "g1 to start")
        lifecycle.kill(cursor, [by_name["k1"]])
        # The kill normally reaches k1 queued inside g1's process (forwarded to its worker,
        # the launcher's log says); if k1 was not sent yet, the log never says so: the checks
        # below hold either way, only the path taken differs.
        deadline = time.monotonic() + 10
        wait_for(lambda: log_says(launcher, f"job {by_name['k1'][:8]} {killed_line}")
                 or time.monotonic() > deadline, 60, "the kill to be forwarded")
        open(str(tmp_path / "g1"), "w").close()
        # g2 is killed once its run is recorded (a kill between its start and the master's
        # batched RUNNING write is recorded too since session 14, core/killed_starts.py: that
        # path is tested in tests/test_killed_starts.py; here the kill of a RUNNING job).
        wait_for(lambda: recorded_runs(cursor, names)["g2"] == 1, 120, "g2's run recorded")
        lifecycle.kill(cursor, [by_name["g2"]])
        assert launcher.wait(240) == 0, launcher.output()

    lines = runs(log)
    starts = Counter(name for what, name, _, _ in lines if what == "START")
    states, recorded = final_states(cursor, names), recorded_runs(cursor, names)
    assert_one_at_a_time(lines, interrupted={"k1", "g2"})
    assert states.pop("k1") == states.pop("g2") == "USER_KILLED"
    assert states == {name: "JOB_FINISHED" for name in states}
    assert starts["g2"] == recorded["g2"] == 1
    # Killed before it could begin (behind g1, whose gate opens after the kill): never run, in
    # the usual path; if its task began before the kill reached it, that run is recorded after
    # the kill (core/killed_starts.py), even if stopped before the function's first line.
    assert starts["k1"] <= recorded["k1"] <= 1
    # Once each, recorded once; run twice only if a run was stopped under it (a task that
    # began behind k1 in the microseconds before a kill that came late: RUN_TIMEOUT, retried).
    timed_out = timed_out_jobs(cursor, names)
    for name in states:
        assert recorded[name] == starts[name] <= (2 if name in timed_out else 1), name
        assert starts[name] >= 1, name


@pytest.mark.slow
def test_a_dead_worker_rank_with_tasks_queued_behind_its_running_one(site, cursor, tmp_path):
    """The worker rank is SIGKILLed while a gated task runs in a warm process, the tasks after
    it likely queued behind it: its watchdog stops that process (the run is never overlapped by
    its retry), counts as started only the queued ones that began (none here: the warm process
    notes each queued task it begins; ``tests/test_warm_queue_lost.py``), the launcher
    restarts the ensemble and every job finishes, each run recorded exactly."""
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    hold = Job(site_path=site, app_name="fn.Gate", workdir="wq/hold",
               parameters={"log": log, "name": "hold", "gate": gate})
    jobs = [step(site, log, f"r{i:02d}") for i in range(60)]
    Job.objects.bulk_create(jobs[:30] + [hold] + jobs[30:])
    names = {str(j.id): name_of(j) for j in jobs + [hold]}
    with settings(site, launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "serial")
        wait_for(lambda: any(n == "hold" for _, n, *_ in runs(log)), 120, "the gated task")
        kill(wait_for(lambda: rank_pid(launcher.pid, 1), 60, "worker rank 1"), signal.SIGKILL)
        # The gate opens once the first run is known dead (its end recorded).
        wait_for(lambda: ended_runs(cursor, str(hold.id)), 120,
                 "the interrupted run to be recorded")
        open(gate, "w").close()
        assert launcher.wait(240) == 0, launcher.output()

    lines = runs(log)
    starts = Counter(name for what, name, _, _ in lines if what == "START")
    assert_one_at_a_time(lines, interrupted={"hold"})
    assert final_states(cursor, names) == {name: "JOB_FINISHED" for name in names.values()}
    # Each run recorded, and no other: a task queued and never begun is not counted started.
    assert recorded_runs(cursor, names) == {name: starts[name] for name in names.values()}
    # Run again: the gated task, and any task whose end the master had not written when the
    # ensemble went down with the rank (recorded RUN_TIMEOUT, outcome unknown), never more.
    timed_out = timed_out_jobs(cursor, names)
    assert starts["hold"] == 2 and "hold" in timed_out
    for name in names.values():
        assert 1 <= starts[name] <= (2 if name in timed_out else 1), name


@pytest.mark.slow
def test_tasks_queued_behind_a_run_that_turns_long_finish_in_the_other_place(site, cursor,
                                                                           tmp_path):
    """A node with two places (packing count 2), a stream of instant function tasks, and a
    gated one ("hold") in the middle of it (tasks likely queued behind it while it was young):
    every other job finishes while "hold" still runs (its gate opens only then), so none waited
    for it; each runs once, recorded once."""
    log, gate = str(tmp_path / "runs.log"), str(tmp_path / "gate")
    hold = Job(site_path=site, app_name="fn.Gate", workdir="wq/hold", node_packing_count=2,
               parameters={"log": log, "name": "hold", "gate": gate})
    jobs = [step(site, log, f"p{i:03d}") for i in range(240)]
    for job in jobs:
        job.node_packing_count = 2
    Job.objects.bulk_create(in_claim_order(jobs[:160] + [hold] + jobs[160:]))
    names = {str(j.id): name_of(j) for j in jobs + [hold]}
    others = [name_of(j) for j in jobs]
    with settings(site, launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "serial")
        wait_for(lambda: all(final_states(cursor, names)[n] == "JOB_FINISHED" for n in others),
                 240, "every job but the gated one to finish")
        assert final_states(cursor, names)["hold"] == "RUNNING"
        open(gate, "w").close()
        assert launcher.wait(240) == 0, launcher.output()

    starts = Counter(name for what, name, _, _ in runs(log) if what == "START")
    assert final_states(cursor, names) == {name: "JOB_FINISHED" for name in names.values()}
    assert starts == Counter({name: 1 for name in names.values()})
    assert recorded_runs(cursor, names) == dict(starts)
    assert not timed_out_jobs(cursor, names)
