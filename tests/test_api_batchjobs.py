"""BatchJobs of the newer API beyond creation: ``filter_tags`` (the launcher claims only jobs
holding those tags: ``balsam launcher --tag``) and cancelling (``pending_deletion``: the service
cancels the batch job with the scheduler, whether it was submitted yet or not)."""
from __future__ import annotations

import logging
import os
import shutil

import pytest
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, settings, states, wait_for
from service_support import launches, local_jobs, services

from balsam.api import BatchJob, sites
from balsam.api.names import TranslationError
from balsam.core import leases, schema
from balsam.platform import machines, schedulers
from balsam.platform.schedulers import local
from balsam.service import submitter
from balsam.service.sync import cancel_requested, sync

QL = schema.QLAUNCH_TABLE
LOG = logging.getLogger("test-api-batchjobs")
TAGGED = [("both", {"k": "v", "x": "1"}), ("k", {"k": "v"}), ("other", {"k": "w"}), ("none", {})]


@pytest.fixture
def site(db):
    os.makedirs(os.path.join(db, "apps"), exist_ok=True)
    sites.forget_apps()
    yield db
    shutil.rmtree(os.path.join(db, "apps"), ignore_errors=True)
    sites.forget_apps()


@pytest.fixture
def database(db):
    from balsam.db.database import Database

    handle = Database(db, "test-api-batchjobs")
    yield handle
    handle.close()


def tagged_jobs(cursor, state: str = "PREPROCESSED") -> None:
    add_app(cursor, "true", "/bin/true")
    add_jobs(cursor, [{"name": name, "application": "true", "tags": tags, "state": state}
                      for name, tags in TAGGED])


# ---- filter_tags ------------------------------------------------------------------------------

def test_a_tag_filter_claims_only_jobs_holding_every_tag(cursor):
    tagged_jobs(cursor)
    sid = leases.open_session(cursor, hostname="h", pid=1, job_mode="serial", num_nodes=1,
                              lease_seconds=60)
    got = leases.claim(cursor, sid, 10, serial=True, max_nodes=1, tags={"k": "v"})
    assert sorted(r["name"] for r in got) == ["both", "k"]
    assert leases.claim(cursor, sid, 10, serial=True, max_nodes=1, tags={"k": "v"}) == []
    rest = leases.claim(cursor, sid, 10, serial=True, max_nodes=1, tags={"k": "w", "x": "1"})
    assert rest == []  # every tag must match
    assert sorted(r["name"] for r in leases.claim(cursor, sid, 10, serial=True, max_nodes=1)) \
        == ["none", "other"]


def test_filter_tags_are_stored_and_reach_the_launcher_command_line(site, cursor, tmp_path):
    bj = BatchJob.objects.create(site_path=site, num_nodes=1, wall_time_min=5, job_mode="serial",
                                 queue="local", filter_tags={"k": "v w", "x": "1"})
    assert bj.filter_tags == {"k": "v w", "x": "1"}
    assert BatchJob.objects.get(site_path=site, filter_tags={"k": "v w", "x": "1"}).id == bj.id
    (row,) = launches(cursor)
    assert row["filter_tags"] == {"k": "v w", "x": "1"}
    text = submitter.render_script(site, {"machine": "local", "scheduler": "local"},
                                   project="", queue="local", nodes=1, minutes=5,
                                   job_mode="serial", filter_tags=row["filter_tags"])
    assert "launcher --consume-all --tag 'k=v w' --tag x=1 --job-mode serial" in text
    for bad, message in (({"k": 1}, "must be text"), ({"a=b": "c"}, "without '='"),
                         (["k"], "must be a dict")):
        with pytest.raises(TranslationError, match=message):
            BatchJob.objects.create(site_path=site, queue="local", filter_tags=bad)
    with pytest.raises(machines.MachineError, match="filter tag key"):
        machines.template_values(machines.load("local"), project="", queue="local", nodes=1,
                                 time_minutes=5, job_mode="serial", db_path="/d", balsam_bin="/b",
                                 python="/p", filter_tags={"": "v"})
    assert len(launches(cursor)) == 1  # nothing written for the refused ones


@pytest.mark.slow
def test_a_tagged_launcher_runs_only_the_matching_jobs_and_exits(db, cursor):
    tagged_jobs(cursor)
    with settings(db, local_nodes=1, launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "serial", "--tag", "k=v")
        assert launcher.wait(90) == 0, launcher.output()
    assert states(cursor) == {"both": "JOB_FINISHED", "k": "JOB_FINISHED",
                              "other": "PREPROCESSED", "none": "PREPROCESSED"}
    cursor.execute(f"SELECT label FROM {schema.SESSION_TABLE} WHERE job_mode = 'serial'")
    assert cursor.fetchall() == [("serial --consume-all --tag k=v",)]


# ---- cancelling -------------------------------------------------------------------------------

def test_cancel_requests_are_refused_for_other_fields_and_ended_rows_are_deleted(site, cursor):
    live = BatchJob.objects.create(site_path=site, queue="local")
    ended = BatchJob.objects.create(site_path=site, queue="local")
    cursor.execute(f"UPDATE {QL} SET state = 'finished' WHERE id = %s", [ended.id])
    with pytest.raises(TranslationError, match="only state = 'pending_deletion'"):
        live.num_nodes = 4
    with pytest.raises(TranslationError, match="can only be updated with state"):
        BatchJob.objects.filter(site_path=site).update(state="running")
    assert BatchJob.objects.filter(site_path=site).update(state="pending_deletion") == 1
    assert BatchJob.objects.get(site_path=site, id=live.id).state == "pending_deletion"
    assert BatchJob.objects.count(site_path=site, state="pending_deletion") == 1
    ended.refresh_from_db()
    ended.delete()  # an ended batch job's row goes
    assert [r["id"] for r in launches(cursor)] == [live.id]
    live.delete()  # already pending deletion: the row stays as the record
    assert [(r["id"], r["state"]) for r in launches(cursor)] == [(live.id, "pending-deletion")]


def test_a_cancel_made_during_submission_survives_and_reaches_the_scheduler(
        site, cursor, database):
    sched = schedulers.get("local", os.path.join(site, "qsubmit"))
    bj = BatchJob.objects.create(site_path=site, queue="local", wall_time_min=5)

    class CancelledMeanwhile:
        """The local scheduler; the user asks for the cancel while it submits."""

        def submit(self, *args, **kwargs):
            bj.state = "pending_deletion"
            bj.save()
            return sched.submit(*args, **kwargs)

    try:
        done = submitter.submit_pending(database, site, {"machine": "local", "scheduler": "local"},
                                        CancelledMeanwhile(), LOG)
        (row,) = launches(cursor)
        assert done == [(bj.id, row["scheduler_id"])] and row["state"] == "pending-deletion"
        assert cancel_requested(database, sched, LOG) == 1
        assert cancel_requested(database, sched, LOG) == 0  # sent once
        assert launches(cursor)[0]["raw_state"] == "CANCEL_SENT"

        def ended():
            # As the service does: the user's own jobs, so the job is listed `finishing` until
            # its process group is gone (a busy machine may take seconds to end it; SIGKILL
            # follows KILL_GRACE seconds after the SIGTERM). Another user's listing omits it,
            # and a still-finishing job missing from the listing is recorded `finished`.
            sync(database, sched, submitter.current_user(), LOG)
            state = launches(cursor)[0]["state"]
            assert state in ("pending-deletion", "cancelled"), state
            return state == "cancelled"
        wait_for(ended, local.KILL_GRACE + 60, "the cancelled batch job to end")
        bj.refresh_from_db()
        assert bj.state == "finished"
    finally:
        from service_support import kill_local_jobs

        kill_local_jobs(site)


@pytest.mark.slow
def test_the_service_cancels_a_running_and_an_unsubmitted_batch_job(site, cursor):
    add_app(cursor, "sleep", "/bin/sleep")
    before = set(local_jobs(site))
    (job_id,) = add_jobs(cursor, [{"name": "nap", "application": "sleep", "args": "60",
                                   "state": "PREPROCESSED"}])
    unsubmitted = BatchJob.objects.create(site_path=site, queue="local", wall_time_min=5)
    unsubmitted.delete()  # before the service ever saw it
    running = BatchJob.objects.create(site_path=site, queue="local", wall_time_min=5,
                                      job_mode="serial")
    # One queue slot that the planner may not use: only the user's batch jobs are submitted.
    queue = {"min_nodes": 1, "max_nodes": 1, "min_minutes": 1, "max_minutes": 60,
             "max_queued": 0, "max_running": 0, "max_total_nodes": 1}
    with settings(site, service={"cycle_seconds": 0.3}, queues={"local": queue},
                  launcher=QUICK), services(site) as start:
        svc = start()
        svc.wait_started()
        wait_for(lambda: states(cursor)["nap"] == "RUNNING", 60, "the job to run")
        assert BatchJob.objects.filter(site_path=site, id=running.id).update(
            state="pending_deletion") == 1
        rows = wait_for(lambda: [r for r in launches(cursor) if r["state"] == "cancelled"
                                 and r["id"] == running.id], 30, "the cancel to end the job")
        log = svc.log()
    first = {r["id"]: r for r in launches(cursor)}[unsubmitted.id]
    assert (first["state"], first["scheduler_id"]) == ("cancelled", "")
    assert "cancelled by the user before submission" in first["message"]
    assert rows[0]["message"] == "cancelled by the user" and rows[0]["ended_at"] is not None
    assert set(local_jobs(site)) - before == {rows[0]["scheduler_id"]}  # the other: never
    assert f"batch job {running.id} ({rows[0]['scheduler_id']}): cancelled by the user" in log
    cursor.execute(f"SELECT to_state FROM {schema.EVENT_TABLE} WHERE job_id = %s ORDER BY id",
                   [job_id])
    assert [r[0] for r in cursor.fetchall()][:3] == ["PREPROCESSED", "RUNNING", "RUN_TIMEOUT"]


def test_a_cancel_handled_while_another_process_submits_waits_for_the_scheduler_id(
        site, cursor, database, db):
    """The service's cancel step must not take a row whose submission is in flight (in
    ``balsam submit-launch``) for one never submitted: the job would run, its cancel lost."""
    from balsam.db.database import Database

    sched = schedulers.get("local", os.path.join(site, "qsubmit"))
    bj = BatchJob.objects.create(site_path=site, queue="local", wall_time_min=5)
    service = Database(db, "test-api-batchjobs-service")
    seen = {}

    class CancelledAndHandledMeanwhile:
        """The local scheduler; while it submits, the user cancels and the service runs."""

        def submit(self, *args, **kwargs):
            bj.state = "pending_deletion"
            bj.save()
            seen["handled"] = cancel_requested(service, sched, LOG)
            seen["row"] = launches(cursor)[0]
            return sched.submit(*args, **kwargs)

    try:
        done = submitter.submit_pending(database, site, {"machine": "local", "scheduler": "local"},
                                        CancelledAndHandledMeanwhile(), LOG)
        assert seen["handled"] == 0 and seen["row"]["state"] == "pending-deletion"
        (row,) = launches(cursor)
        assert done == [(bj.id, row["scheduler_id"])] and row["state"] == "pending-deletion"
        assert cancel_requested(service, sched, LOG) == 1
        assert launches(cursor)[0]["raw_state"] == "CANCEL_SENT"
    finally:
        service.close()
        from service_support import kill_local_jobs

        kill_local_jobs(site)
