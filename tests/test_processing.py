"""The pure-state processing pass: jobs needing no script move in one write per kind of move."""
from __future__ import annotations

import pytest

from balsam.core import leases
from balsam.processing import transitions


@pytest.fixture
def apps(db):
    from balsam.core.models import ApplicationDefinition

    ApplicationDefinition.objects.create(name="plain", executable="true")
    ApplicationDefinition.objects.create(name="pre", executable="true", preprocess="/bin/true")
    ApplicationDefinition.objects.create(name="post", executable="true", postprocess="/bin/true")
    return db


def job(name, app="plain", state="CREATED", parents=(), **fields):
    from balsam.core.models import BalsamJob

    j = BalsamJob(name=name, application=app, state=state, parents=[p.pk for p in parents],
                  **fields)
    j.save()
    return j


def states(*jobs):
    from balsam.core.models import BalsamJob

    return [BalsamJob.objects.get(pk=j.pk).state for j in jobs]


def events(j):
    from balsam.core.models import JobEvent

    return [(e.from_state, e.to_state, e.message) for e in JobEvent.objects.filter(job_id=j.pk)
            .order_by("id")]


def test_a_job_with_nothing_to_do_becomes_runnable_in_one_recorded_move(apps, cursor):
    a = job("a")
    counts = transitions.advance(cursor)
    assert counts["ready"] == 1
    assert events(a) == [("CREATED", "PREPROCESSED", "nothing to stage or preprocess: ready to run")]


def test_jobs_needing_stage_in_or_a_preprocess_script_stop_where_a_script_step_begins(apps,
                                                                                     cursor):
    staged = job("staged", stage_in_url="/tmp", app="pre")
    scripted = job("scripted", app="pre")
    transitions.advance(cursor)
    transitions.advance(cursor)
    assert states(staged, scripted) == ["READY", "STAGED_IN"]
    assert events(scripted) == [("CREATED", "STAGED_IN", "nothing to stage in: to be preprocessed")]


def test_children_wait_then_run_when_every_parent_finished(apps, cursor):
    from balsam.core import lifecycle

    p1, p2 = job("p1"), job("p2")
    child = job("child", parents=[p1, p2])
    linked = job("linked", parents=[p1], input_files="*.dat")
    transitions.advance(cursor)
    assert states(p1, p2, child, linked) == ["PREPROCESSED", "PREPROCESSED", "AWAITING_PARENTS",
                                             "AWAITING_PARENTS"]
    lifecycle.transition(cursor, [p1.pk], "RUNNING")
    lifecycle.transition(cursor, [p1.pk], "RUN_DONE")
    transitions.advance(cursor)
    assert states(p1, child, linked) == ["JOB_FINISHED", "AWAITING_PARENTS", "AWAITING_PARENTS"]
    for state in ("RUNNING", "RUN_DONE"):
        lifecycle.transition(cursor, [p2.pk], state)
    transitions.advance(cursor)
    transitions.advance(cursor)
    # input files to link in from a parent need the stage-in step (a transition worker's)
    assert states(p2, child, linked) == ["JOB_FINISHED", "PREPROCESSED", "READY"]


def test_a_failed_or_killed_parent_fails_its_children_with_its_name(apps, cursor):
    from balsam.core import lifecycle

    parent, ok = job("boom"), job("fine")
    child = job("child", parents=[parent, ok])
    lifecycle.transition(cursor, [parent.pk], "FAILED", "broken")
    transitions.advance(cursor)
    assert states(child) == ["FAILED"]
    message = events(child)[-1][2]
    assert message == f"parent job failed or was killed: boom {str(parent.pk)[:8]} (FAILED)"


def test_wait_for_parents_off_ignores_parents_and_a_missing_app_fails(apps, cursor):
    parent = job("p")
    free = job("free", parents=[parent], wait_for_parents=False)
    from balsam.core.models import ApplicationDefinition

    gone = ApplicationDefinition.objects.create(name="nosuchapp", executable="echo")
    orphan = job("orphan", app="nosuchapp")  # its app is removed after the job was added
    gone.delete()
    transitions.advance(cursor)
    assert states(free, orphan) == ["PREPROCESSED", "FAILED"]
    assert events(orphan)[-1][2] == "application 'nosuchapp' does not exist"


def test_after_a_run_plain_jobs_finish_fail_or_retry(apps, cursor):
    done = job("done", state="RUN_DONE")
    err = job("err", state="RUN_ERROR")
    retry = job("retry", state="RUN_TIMEOUT")
    noretry = job("noretry", state="RUN_TIMEOUT", auto_timeout_retry=False)
    handled = job("handled", app="post", state="RUN_ERROR", post_error_handler=True)
    post = job("post", app="post", state="RUN_DONE")
    unhandled = job("unhandled", app="post", state="RUN_ERROR")
    counts = transitions.advance(cursor)
    assert states(done, err, retry, noretry, handled, post, unhandled) == [
        "JOB_FINISHED", "FAILED", "RESTART_READY", "FAILED", "RUN_ERROR", "RUN_DONE", "FAILED"]
    assert (counts["finished"], counts["retry"], counts["failed_runs"]) == (1, 1, 3)
    assert events(noretry)[-1][2] == "timed out; automatic retry is disabled"


def test_the_workflow_filter_limits_the_pass(apps, cursor):
    mine, other = job("mine", workflow="alpha"), job("other", workflow="beta")
    transitions.advance(cursor, wf_filter="lph")
    assert states(mine, other) == ["PREPROCESSED", "CREATED"]


def test_outstanding_counts_work_a_launcher_could_still_do(apps, cursor):
    job("waiting")                                   # will become runnable
    job("big", state="PREPROCESSED", num_nodes=8)    # does not fit 4 nodes
    job("scripted", app="pre")                       # needs its preprocess script run
    job("over", state="JOB_FINISHED")
    count = transitions.outstanding
    assert count(cursor, None, None, serial=False, max_nodes=4) == 2
    assert count(cursor, None, None, serial=False, max_nodes=4, processing=False) == 0
    sid = leases.open_session(cursor, hostname="h", pid=1, job_mode="mpi", num_nodes=4,
                              lease_seconds=60)
    other = leases.open_session(cursor, hostname="h", pid=2, job_mode="mpi", num_nodes=4,
                                lease_seconds=60)
    transitions.advance(cursor)
    assert count(cursor, sid, None, serial=False, max_nodes=4) == 2
    assert count(cursor, sid, None, serial=False, max_nodes=4, processing=False) == 1
    leases.claim(cursor, other, 10, serial=False, max_nodes=4)
    assert count(cursor, sid, None, serial=False, max_nodes=4, processing=False) == 0
    assert count(cursor, other, None, serial=False, max_nodes=4, processing=False) == 1


def test_concurrent_passes_never_move_a_job_twice(apps, db):
    import threading

    from balsam.core.models import BalsamJob, JobEvent
    from balsam.db.connect import connect

    BalsamJob.objects.bulk_create([BalsamJob(name=f"j{i}", application="plain")
                                   for i in range(2000)])

    def worker() -> None:
        conn = connect(db)
        try:
            with conn.cursor() as cur:
                transitions.advance(cur)
            conn.commit()
        finally:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert BalsamJob.objects.filter(state="PREPROCESSED").count() == 2000
    assert JobEvent.objects.filter(to_state="PREPROCESSED").count() == 2000


def test_a_filtered_pass_leaves_other_workflows_woken_jobs_queued(apps, cursor):
    from balsam.core import lifecycle, schema

    pa, pb = job("pa", workflow="alpha"), job("pb", workflow="beta")
    ca, cb = (job("ca", workflow="alpha", parents=[pa]), job("cb", workflow="beta", parents=[pb]))
    transitions.advance(cursor)
    assert states(ca, cb) == ["AWAITING_PARENTS", "AWAITING_PARENTS"]
    for state in ("RUNNING", "RUN_DONE", "JOB_FINISHED"):
        lifecycle.transition(cursor, [pa.pk, pb.pk], state)
    cursor.execute(f"SELECT count(*) FROM {schema.WAKE_TABLE}")
    assert cursor.fetchone()[0] == 2  # both children queued by the finishing write
    transitions.advance(cursor, wf_filter="alpha")
    assert states(ca, cb) == ["PREPROCESSED", "AWAITING_PARENTS"]
    cursor.execute(f"SELECT job_id FROM {schema.WAKE_TABLE}")
    assert [str(r[0]) for r in cursor.fetchall()] == [str(cb.pk)]
    transitions.advance(cursor)
    assert states(cb) == ["PREPROCESSED"]
