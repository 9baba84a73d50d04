"""RUNNING visits that were no run (MPI mode recorded the job RUNNING ahead of its launch, which
never came) count as no run: in a task's attempt number (``BALSAM_JOB_ATTEMPT``, from the
claim's ``runs``), and when the session of a launcher that died is swept (its watchdog's report
says what it launched: :mod:`balsam.core.launch_reports`). Real PostgreSQL, no mocks."""
from __future__ import annotations

import pytest

from balsam.core import killed_starts, leases, lifecycle
from balsam.core.retries import NOT_STARTED_SUFFIX
from balsam.core.states import State


@pytest.fixture
def app(db):
    from balsam.core.models import ApplicationDefinition

    return ApplicationDefinition.objects.create(name="app", executable="true")


def make_jobs(n):
    from balsam.core.models import BalsamJob

    return [str(j.pk) for j in BalsamJob.objects.bulk_create(
        [BalsamJob(name=f"j{i}", workflow="wf", application="app", state="PREPROCESSED")
         for i in range(n)])]


def session(cursor):
    return leases.open_session(cursor, hostname="host", pid=123, job_mode="mpi", num_nodes=4,
                               lease_seconds=60)


def runs_at_claim(cursor, job_ids):
    """{job id: runs} read by a new session's claim (then released)."""
    sid = session(cursor)
    claimed = leases.claim(cursor, sid, 10, serial=False, max_nodes=4)
    leases.close_session(cursor, sid, "test")
    return {r["job_id"]: r["runs"] for r in claimed if r["job_id"] in job_ids}


def test_the_attempt_number_counts_real_runs_only(app, cursor):
    stopped, timed_out, killed, ran_killed = make_jobs(4)
    sid = session(cursor)
    leases.claim(cursor, sid, 4, serial=False, max_nodes=4)
    leases.start(cursor, sid, [stopped, timed_out, killed, ran_killed], "ahead")
    # A launcher's stop kept one ready ahead from starting; another ran and timed out.
    leases.finish(cursor, sid, [stopped], State.RUN_TIMEOUT, "stopped" + NOT_STARTED_SUFFIX)
    leases.finish(cursor, sid, [timed_out], State.RUN_TIMEOUT, "stopped")
    # A user killed two: one never launched (marked by its launcher), one that ran.
    lifecycle.kill(cursor, [killed, ran_killed])
    assert killed_starts.record_unlaunched(cursor, sid, [killed]) == [killed]
    leases.close_session(cursor, sid, "test")
    lifecycle.transition(cursor, [stopped, timed_out], "RESTART_READY", "retry")
    assert len(lifecycle.transition(cursor, [killed, ran_killed], "PREPROCESSED", "reset",
                                    user=True, force=True)) == 2
    runs = runs_at_claim(cursor, {stopped, timed_out, killed, ran_killed})
    # Before: every RUNNING visit counted (1 each), so the next real run of the two that never
    # ran got BALSAM_JOB_ATTEMPT 2.
    assert runs == {stopped: 0, timed_out: 1, killed: 0, ran_killed: 1}
    # A second no-run visit after a real one: still one run.
    sid = session(cursor)
    leases.claim(cursor, sid, 4, serial=False, max_nodes=4)
    leases.start(cursor, sid, [timed_out], "ahead")
    leases.finish(cursor, sid, [timed_out], State.RUN_TIMEOUT, "stopped" + NOT_STARTED_SUFFIX)
    leases.close_session(cursor, sid, "test")
    lifecycle.transition(cursor, [timed_out], "RESTART_READY", "retry")
    assert runs_at_claim(cursor, {timed_out}) == {timed_out: 1}
