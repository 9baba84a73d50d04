"""Submitting planned batch jobs and syncing their states: the real local scheduler (the script
runs), the fake PBS/Cobalt/LSF in tests/fakes/bin, failures, back-off, and the crash between
submitting and recording (reconciled by job name, never resubmitted)."""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from launcher_support import wait_for

from balsam.core import schema
from balsam.core.batchstates import CANCEL_SENT, IN_FLIGHT
from balsam.platform import machines, schedulers
from balsam.service import submitter
from balsam.service.sync import cancel_requested, sync

QL = schema.QLAUNCH_TABLE
FAKES = Path(__file__).parent / "fakes" / "bin"
SITES = {"pbs": "polaris", "cobalt": "theta", "lsf": "summit"}
LOG = logging.getLogger("test-service")
RECORDER = """#!/bin/bash
# queue {{ queue }} project {{ project }}
out={{ db_path }}/ran.txt
echo "nodes={{ nodes }} minutes={{ time_minutes }} mode={{ job_mode }} {{ wf_filter_flag }}" > $out
"""


@pytest.fixture
def database(db):
    from balsam.db.database import Database

    handle = Database(db, "test-service")
    yield handle
    handle.close()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{FAKES}:{os.environ['PATH']}")
    monkeypatch.setenv("BALSAM_FAKE_SCHED_STATE", str(tmp_path / "fake-state.json"))
    for var in ("BALSAM_FAKE_SCHED_FAIL", "BALSAM_FAKE_SCHED_HANG", "BALSAM_FAKE_SCHED_QUEUES"):
        monkeypatch.delenv(var, raising=False)

    def use(name: str):
        monkeypatch.setenv("BALSAM_FAKE_SCHED", name)
        return schedulers.get(name)
    return use


def fake_jobs(tmp_path) -> dict:
    return json.loads((tmp_path / "fake-state.json").read_text())["jobs"]


def add_row(cursor, queue="local", nodes=1, minutes=10, mode="serial", project="",
            state="pending-submission", **extra) -> int:
    values = dict(scheduler_id="", project=project, queue=queue, nodes=nodes, wall_minutes=minutes,
                  job_mode=mode, wf_filter="", sched_flags="", command="", state=state,
                  prescheduled_only=False, from_balsam=True, raw_state="", message="", attempts=0)
    values.update(extra)
    cursor.execute(f"INSERT INTO {QL} ({', '.join(values)}) VALUES ({', '.join(['%s'] * len(values))})"
                   " RETURNING id", list(values.values()))
    return cursor.fetchone()[0]


def row(cursor, rid: int) -> dict:
    cursor.execute(f"SELECT * FROM {QL} WHERE id = %s", [rid])
    return dict(zip([d[0] for d in cursor.description], cursor.fetchone()))


def site_settings(name: str) -> dict:
    return {"machine": SITES[name], "scheduler": name, "project": "CSC123", "gpus_per_node": 0}


def test_local_submission_runs_the_rendered_script_and_sync_sees_it_end(database, cursor, tmp_path):
    dbdir = tmp_path / "dbdir"
    dbdir.mkdir()
    (dbdir / "job-template.sh").write_text(RECORDER)
    rid = add_row(cursor, nodes=1, minutes=30, wf_filter="wf one")
    sched = schedulers.get("local", str(dbdir / "qsubmit"))
    settings = {"machine": "local", "scheduler": "local", "project": ""}
    done = submitter.submit_pending(database, str(dbdir), settings, sched, LOG)
    script = dbdir / "qsubmit" / f"qlaunch{rid}.sh"
    got = row(cursor, rid)
    assert done == [(rid, got["scheduler_id"])] and got["scheduler_id"].isdigit()
    assert (got["state"], got["command"], got["attempts"]) == ("submitted", str(script), 1)
    assert os.access(script, os.X_OK)
    # a loaded machine may take seconds to start the script (the file is written at once)
    wait_for(lambda: (dbdir / "ran.txt").exists(), 60, "the job script to run")
    assert (dbdir / "ran.txt").read_text() == "nodes=1 minutes=30 mode=serial --wf-filter 'wf one'\n"
    synced: list = []

    def ended() -> bool:
        synced.append(sync(database, sched, submitter.current_user(), LOG))
        return row(cursor, rid)["state"] == "finished"
    wait_for(ended, 60, "the local job to end")
    result = synced[-1]
    assert result["ok"] and result["ended"] == 1 and result["foreign"] == []
    assert row(cursor, rid)["ended_at"] is not None
    assert submitter.submit_pending(database, str(dbdir), settings, sched, LOG) == []


@pytest.mark.parametrize("name", ["pbs", "cobalt", "lsf"])
def test_fake_cluster_submission_and_sync_through_queued_running_and_end(
        name, database, cursor, tmp_path, fake):
    sched = fake(name)
    queue = machines.load(SITES[name]).default_queue
    rid = add_row(cursor, queue=queue, nodes=3, minutes=45, mode="mpi", project="CSC123")
    done = submitter.submit_pending(database, str(tmp_path), site_settings(name), sched, LOG)
    sched_id = "1000.fakepbs" if name == "pbs" else "1000"
    assert done == [(rid, sched_id)]
    job = fake_jobs(tmp_path)["1000"]
    assert job["name"] == f"qlaunch{rid}"
    user = job["owner"]
    assert sync(database, sched, user, LOG)["updated"] == 1
    assert row(cursor, rid)["state"] == "queued"
    sync(database, sched, user, LOG)
    got = row(cursor, rid)
    assert got["state"] == "running" and 44 <= got["minutes_left"] <= 45
    sched.cancel(sched_id)
    result = sync(database, sched, user, LOG)
    got = row(cursor, rid)
    assert result["ended"] == 1 and got["ended_at"] is not None
    assert got["state"] == {"pbs": "cancelled", "cobalt": "finished", "lsf": "failed"}[name]


def test_a_failing_submission_backs_off_then_fails_for_good_and_is_kept(database, cursor, tmp_path,
                                                                         fake, monkeypatch):
    sched = fake("pbs")
    monkeypatch.setenv("BALSAM_FAKE_SCHED_QUEUES", "prod")
    rid = add_row(cursor, queue="debug", nodes=2, minutes=20, mode="mpi", project="CSC123")
    now = datetime.now(timezone.utc)
    args = (database, str(tmp_path), site_settings("pbs"), sched, LOG)
    assert submitter.submit_pending(*args, now=now) == []
    got = row(cursor, rid)
    assert (got["state"], got["attempts"]) == ("pending-submission", 1)
    assert "Unknown queue debug" in got["message"] and "\n" not in got["message"]
    submitter.submit_pending(*args, now=now + timedelta(seconds=10))  # not due yet
    assert row(cursor, rid)["attempts"] == 1
    submitter.submit_pending(*args, now=now + timedelta(seconds=31))
    assert row(cursor, rid)["attempts"] == 2
    submitter.submit_pending(*args, now=now + timedelta(seconds=200))
    got = row(cursor, rid)
    assert (got["state"], got["attempts"]) == ("submit-failed", 3) and got["ended_at"]
    submitter.submit_pending(*args, now=now + timedelta(days=1))
    assert row(cursor, rid)["attempts"] == 3
    assert not os.path.exists(tmp_path / "fake-state.json") or fake_jobs(tmp_path) == {}


def test_an_unrenderable_job_fails_at_once_and_an_existing_script_is_never_overwritten(
        database, cursor, tmp_path, fake):
    sched = fake("pbs")
    no_project = add_row(cursor, queue="debug", mode="mpi", project="")
    taken = add_row(cursor, queue="debug", mode="mpi", project="CSC123")
    os.makedirs(tmp_path / "qsubmit")
    (tmp_path / "qsubmit" / f"qlaunch{taken}.sh").write_text("keep me\n")
    assert submitter.submit_pending(database, str(tmp_path), site_settings("pbs"), sched, LOG) == []
    assert row(cursor, no_project)["state"] == "submit-failed"
    assert "a project (allocation) is needed" in row(cursor, no_project)["message"]
    assert row(cursor, taken)["state"] == "submit-failed"
    assert "refusing to overwrite" in row(cursor, taken)["message"]
    assert (tmp_path / "qsubmit" / f"qlaunch{taken}.sh").read_text() == "keep me\n"


def test_a_crash_between_submit_and_record_is_reconciled_by_name_not_resubmitted(
        database, cursor, tmp_path, fake):
    sched = fake("pbs")
    old = datetime.now(timezone.utc) - timedelta(seconds=submitter.ORPHAN_SECONDS + 5)
    queued = add_row(cursor, queue="debug", mode="mpi", project="CSC123", state="submitting",
                     attempts=1, submitted_at=old)
    lost = add_row(cursor, queue="debug", mode="mpi", project="CSC123", state="submitting",
                   attempts=1, submitted_at=old)
    young = add_row(cursor, queue="debug", mode="mpi", project="CSC123", state="submitting",
                    attempts=1, submitted_at=datetime.now(timezone.utc))
    # The submission that "crashed": the scheduler accepted it, nobody recorded the id.
    text = submitter.render_script(str(tmp_path), site_settings("pbs"), project="CSC123",
                                   queue="debug", nodes=1, minutes=10, job_mode="mpi")
    (tmp_path / "s.sh").write_text(text)
    sched_id = sched.submit(str(tmp_path / "s.sh"), str(tmp_path), f"qlaunch{queued}", "o.out")
    assert submitter.submit_pending(database, str(tmp_path), site_settings("pbs"), sched, LOG) == []
    got = row(cursor, queued)
    assert (got["state"], got["scheduler_id"]) == ("queued", sched_id)
    assert row(cursor, lost)["state"] == "submit-failed"
    assert "not resubmitted" in row(cursor, lost)["message"]
    assert row(cursor, young)["state"] == "submitting"
    assert list(fake_jobs(tmp_path)) == ["1000"]  # nothing submitted twice



def test_a_submission_cancelled_in_flight_then_interrupted_is_reconciled_then_cancelled(
        database, cursor, tmp_path, fake):
    sched = fake("pbs")
    old = datetime.now(timezone.utc) - timedelta(seconds=submitter.ORPHAN_SECONDS + 5)
    in_flight = dict(queue="debug", mode="mpi", project="CSC123", state="pending-deletion",
                     raw_state=IN_FLIGHT, attempts=1)
    accepted, lost = add_row(cursor, **in_flight, submitted_at=old), add_row(cursor, **in_flight,
                                                                              submitted_at=old)
    young = add_row(cursor, **in_flight, submitted_at=datetime.now(timezone.utc))
    text = submitter.render_script(str(tmp_path), site_settings("pbs"), project="CSC123",
                                   queue="debug", nodes=1, minutes=10, job_mode="mpi")
    (tmp_path / "s.sh").write_text(text)
    sched_id = sched.submit(str(tmp_path / "s.sh"), str(tmp_path), f"qlaunch{accepted}", "o.out")
    assert cancel_requested(database, sched, LOG) == 0  # in flight: no id to cancel yet
    assert submitter.submit_pending(database, str(tmp_path), site_settings("pbs"), sched, LOG) == []
    assert [(row(cursor, r)["state"], row(cursor, r)["scheduler_id"]) for r in (accepted, lost)] \
        == [("pending-deletion", sched_id), ("pending-deletion", "")]  # the cancels stay
    assert row(cursor, young)["raw_state"] == IN_FLIGHT  # may be in flight still
    assert cancel_requested(database, sched, LOG) == 2
    assert (row(cursor, accepted)["state"], row(cursor, accepted)["raw_state"]) \
        == ("pending-deletion", CANCEL_SENT)
    assert [j["state"] for j in fake_jobs(tmp_path).values()] == ["ended"]  # qdel reached it
    assert row(cursor, lost)["state"] == "cancelled"
    assert row(cursor, young)["state"] == "pending-deletion"


def test_sync_ends_vanished_jobs_reports_foreign_ones_and_survives_a_failing_status(
        database, cursor, tmp_path, fake, monkeypatch):
    sched = fake("cobalt")
    text = submitter.render_script(str(tmp_path), site_settings("cobalt"), project="CSC123",
                                   queue="debug-cache-quad", nodes=1, minutes=10, job_mode="mpi")
    (tmp_path / "s.sh").write_text(text)
    other = sched.submit(str(tmp_path / "s.sh"), str(tmp_path), "not-ours", "o.out")
    user = fake_jobs(tmp_path)[other]["owner"]
    gone = add_row(cursor, queue="debug", mode="mpi", state="running", scheduler_id="777",
                   submitted_at=datetime.now(timezone.utc) - timedelta(minutes=5))
    result = sync(database, sched, user, LOG)
    assert result["ok"] and [j.scheduler_id for j in result["foreign"]] == [other]
    got = row(cursor, gone)
    assert got["state"] == "finished" and got["ended_at"] is not None
    monkeypatch.setenv("BALSAM_FAKE_SCHED_FAIL", "qstat")
    result = sync(database, sched, user, LOG)
    assert not result["ok"] and "cannot connect to server" in result["error"]
