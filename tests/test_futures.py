"""``balsam.launcher.futures`` against a real PostgreSQL. Job states are driven from another
thread through ``balsam.core.lifecycle.transition`` on its own connection, as a launcher would."""
from __future__ import annotations

import threading
import time

import pytest

POLL = 0.05
PATH_TO_FINISHED = ["PREPROCESSED", "RUNNING", "RUN_DONE", "JOB_FINISHED"]
PATH_TO_FAILED = ["PREPROCESSED", "RUNNING", "RUN_ERROR", "FAILED"]


@pytest.fixture
def models(db):
    from balsam.core import models as m

    m.ApplicationDefinition.objects.create(name="sim", executable="echo")
    return m


@pytest.fixture
def futures(models):
    from balsam.launcher import futures as f

    return f


@pytest.fixture
def make_job(models):
    def make(name="job"):
        job = models.BalsamJob(name=name, workflow="wf", application="sim")
        job.save()
        return job
    return make


@pytest.fixture
def drive(db):
    """drive(job, states, delay, data=None): move the job through ``states`` from another thread,
    ``delay`` seconds after starting (optionally writing ``data`` first, as a task would)."""
    from balsam.core import lifecycle, schema
    from balsam.db.connect import connect

    threads, errors = [], []

    def run(job_id, states, delay, data):
        try:
            move(job_id, states, delay, data)
        except BaseException as exc:  # reported by the test's teardown
            errors.append(exc)

    def move(job_id, states, delay, data):
        time.sleep(delay)
        conn = connect(db, autocommit=True)
        try:
            with conn.cursor() as cur:
                if data is not None:
                    import json

                    cur.execute(f"UPDATE {schema.JOB_TABLE} SET data = %s WHERE job_id = %s",
                                [json.dumps(data), job_id])
                for state in states:
                    msg = "exit code 3" if state == "RUN_ERROR" else f"to {state}"
                    assert lifecycle.transition(cur, [job_id], state, msg), state
        finally:
            conn.close()

    def start(job, states, delay=0.2, data=None):
        thread = threading.Thread(target=run, args=(str(job.pk), states, delay, data))
        thread.start()
        threads.append(thread)
        return thread

    yield start
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []


def test_result_waits_for_the_job_and_runs_the_done_callback_once(futures, make_job, drive):
    job = make_job()
    calls = []

    def on_done(finished, scale):
        calls.append(finished.state)
        return finished.data["value"] * scale

    future = futures.FutureTask(job, on_done, None, 10)
    assert future.active and not future.done
    drive(job, PATH_TO_FINISHED, data={"value": 4})
    assert future.result(timeout=30, poll_period=POLL) == 40
    assert future.result() == 40 and calls == ["JOB_FINISHED"]  # refreshed in place, called once
    assert job.state == "JOB_FINISHED" and job.data == {"value": 4}
    assert (future.done, future.failed, future.cancelled, future.active) == (True, False, False, False)


def test_a_failed_job_raises_task_failed_without_a_fail_callback(futures, make_job, drive):
    job = make_job("broken")
    future = futures.FutureTask(job, lambda j: "never")
    drive(job, PATH_TO_FAILED, delay=0.1)
    with pytest.raises(futures.TaskFailed, match=r"job \[broken \| \w{8}\] failed: .*FAILED\] to FAILED"):
        future.result(timeout=30, poll_period=POLL)
    assert future.failed and not future.done


def test_a_failed_job_runs_the_fail_callback_once_and_its_error_is_kept(futures, make_job, drive):
    job = make_job()
    calls = []

    def on_fail(failed):
        calls.append(failed.state)
        raise RuntimeError("handler broke")

    future = futures.FutureTask(job, lambda j: "never", on_fail)
    drive(job, PATH_TO_FAILED, delay=0.1)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="handler broke"):
            future.result(timeout=30, poll_period=POLL)
    assert calls == ["FAILED"]
    other = futures.FutureTask(make_job("b"), lambda j: "never", lambda j: f"fixed {j.name}")
    drive(other.job, PATH_TO_FAILED, delay=0)
    assert other.result(timeout=30, poll_period=POLL) == "fixed b"


def test_result_times_out_with_timeout_error(futures, make_job, drive):
    job = make_job("slow")
    future = futures.FutureTask(job, lambda j: "done")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"job \[slow \| \w{8}\] is still CREATED after 0.3 s"):
        future.result(timeout=0.3, poll_period=POLL)
    assert 0.3 <= time.monotonic() - started < 10  # not the job's end (a loaded machine is slow)
    with pytest.raises(futures.TimeoutError):
        future.result(timeout=0)
    drive(job, ["PREPROCESSED", "RUNNING"], delay=0).join(30)  # the states are written
    with pytest.raises(TimeoutError, match="is still RUNNING after 0.1 s"):
        future.result(timeout=0.1, poll_period=POLL)
    drive(job, ["RUN_DONE", "JOB_FINISHED"], delay=0.2)
    assert future.result(timeout=30, poll_period=POLL) == "done"  # a timeout is not final


def test_a_job_killed_elsewhere_or_deleted_is_cancelled_and_runs_no_callback(futures, models,
                                                                             make_job, drive):
    job = make_job()
    future = futures.FutureTask(job, lambda j: pytest.fail("done callback ran"),
                                lambda j: pytest.fail("fail callback ran"))
    drive(job, ["PREPROCESSED", "USER_KILLED"], delay=0.1)
    assert future.result(timeout=30, poll_period=POLL) is None
    assert future.cancelled and not future.active and job.state == "USER_KILLED"
    gone = make_job("gone")
    vanishing = futures.FutureTask(gone, lambda j: "never")
    models.BalsamJob.objects.filter(pk=gone.pk).delete()
    assert vanishing.result(timeout=5, poll_period=POLL) is None and vanishing.cancelled


def test_cancel_kills_the_job_once(futures, models, make_job):
    job = make_job()
    future = futures.FutureTask(job, lambda j: "never")
    assert future.cancel() is True
    assert models.BalsamJob.objects.get(pk=job.pk).state == "USER_KILLED"
    assert list(models.JobEvent.objects.filter(job_id=job.pk).values_list("from_state", "to_state")) \
        == [("CREATED", "USER_KILLED")]
    assert future.cancelled and future.result() is None
    assert future.cancel() is False


def test_wait_any_returns_when_one_ends_and_sorts_by_outcome(futures, make_job, drive):
    jobs = [make_job(f"j{i}") for i in range(4)]
    futs = [futures.FutureTask(j, lambda j: j.name) for j in jobs]
    drive(jobs[2], PATH_TO_FINISHED, delay=0.2)
    result = futures.wait(futs, timeout=30, poll_period=POLL)
    assert isinstance(result, futures.WaitResult)
    assert (result.done, result.failed, result.cancelled) == ([futs[2]], [], [])
    assert result.active == [futs[0], futs[1], futs[3]]
    drive(jobs[0], PATH_TO_FAILED, delay=0)
    drive(jobs[1], ["USER_KILLED"], delay=0.1)
    drive(jobs[3], PATH_TO_FINISHED, delay=0.3)
    result = futures.wait(futs, timeout=30, return_when="ALL_COMPLETED", poll_period=POLL)
    assert result == futures.WaitResult([], [futs[2], futs[3]], [futs[0]], [futs[1]])
    assert futures.wait([], timeout=0) == futures.WaitResult([], [], [], [])


def test_wait_times_out_and_checks_return_when(futures, make_job, drive):
    futs = [futures.FutureTask(make_job(f"j{i}"), lambda j: 1) for i in range(3)]
    drive(futs[0].job, PATH_TO_FINISHED, delay=0).join(30)  # the states are written
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="2 of 3 jobs still active after 0.3 s"):
        futures.wait(futs, timeout=0.3, return_when=futures.ALL_COMPLETED, poll_period=POLL)
    assert 0.3 <= time.monotonic() - started < 10  # not the job's end (a loaded machine is slow)
    assert futures.wait(futs, timeout=0).done == [futs[0]]  # ANY: one has ended already
    with pytest.raises(ValueError, match="return_when must be"):
        futures.wait(futs, return_when="FIRST_EXCEPTION")


def test_wait_polls_all_futures_with_one_query(futures, models, make_job, drive):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    jobs = [make_job(f"j{i}") for i in range(30)]
    futs = [futures.FutureTask(j, lambda j: 1) for j in jobs]
    with CaptureQueriesContext(connection) as queries, pytest.raises(TimeoutError):
        futures.wait(futs, timeout=0)
    assert len(queries) == 1
    for job in jobs[:5]:
        drive(job, PATH_TO_FINISHED, delay=0).join()
    with CaptureQueriesContext(connection) as queries:
        result = futures.wait(futs, timeout=0)
    assert len(queries) == 2  # the states of all 30, then the full rows of the 5 that ended
    assert result.done == futs[:5] and len(result.active) == 25
    assert all(f.job.state == "JOB_FINISHED" for f in futs[:5])
    with CaptureQueriesContext(connection) as queries, pytest.raises(TimeoutError):
        futures.wait(futs, timeout=0, return_when="ALL_COMPLETED")
    assert len(queries) == 1  # ended futures are not polled again


def test_a_future_needs_a_saved_job(futures, models):
    for job in (None, models.BalsamJob(name="unsaved")):
        with pytest.raises(TypeError, match="needs a saved BalsamJob"):
            futures.FutureTask(job, lambda j: 1)
