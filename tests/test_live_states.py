"""A batch job that ends while no service runs: ``balsam ls queues``, ``balsam top`` and the
dashboard ask the scheduler (the fake PBS; the real local scheduler) instead of showing the
recorded ``running`` forever; when the scheduler fails they show the recorded states marked
stale with the reason and the age of the service's last sync, which the service records."""
from __future__ import annotations

import logging
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from launcher_support import settings, wait_for
from service_support import services

from balsam.core import schema
from balsam.platform import schedulers
from balsam.service import live
from balsam.service.submitter import current_user
from balsam.service.sync import sync
from tests.conftest import run_balsam
from tests.web_support import TOKEN, Client, web_server

QL = schema.QLAUNCH_TABLE
FAKES = Path(__file__).parent / "fakes" / "bin"
LOG = logging.getLogger("test-live")
QUEUES = {"workq": {"min_nodes": 1, "max_nodes": 4, "min_minutes": 1, "max_minutes": 60,
                    "max_queued": 1, "max_running": 1, "max_total_nodes": 4}}


@pytest.fixture
def ended_pbs_job(db, cursor, tmp_path, monkeypatch):
    """A PBS batch job recorded ``running`` by a sync two hours ago, then cancelled while no
    service ran; yields (env of the fake PBS, row id)."""
    env = {"PATH": f"{FAKES}:{os.environ['PATH']}", "BALSAM_FAKE_SCHED": "pbs",
           "BALSAM_FAKE_SCHED_STATE": str(tmp_path / "state.json")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("BALSAM_FAKE_SCHED_FAIL", raising=False)
    with settings(db, scheduler="pbs", machine="generic-pbs", queues=QUEUES):
        proc = run_balsam("submit-launch", "-n", "1", "-t", "30", "-q", "workq", "--job-mode", "mpi")
        assert proc.returncode == 0, proc.stderr
        from balsam.db.database import Database

        pbs = schedulers.get("pbs")
        database = Database(db, "test-live")
        try:
            sync(database, pbs, current_user(), LOG)
            sync(database, pbs, current_user(), LOG)
        finally:
            database.close()
        cursor.execute(f"SELECT id, state, scheduler_id FROM {QL}")
        (rid, state, sched_id), = cursor.fetchall()
        assert state == "running"
        live.record_sync(db, datetime.now(timezone.utc) - timedelta(hours=2))
        pbs.cancel(sched_id)  # ... while no service runs
        yield env, rid
    if os.path.exists(os.path.join(db, live.SYNC_FILE)):
        os.unlink(os.path.join(db, live.SYNC_FILE))


def recorded(cursor, rid: int) -> str:
    cursor.execute(f"SELECT state FROM {QL} WHERE id = %s", [rid])
    return cursor.fetchone()[0]


def row_of(out: str, rid: int) -> list[str]:
    line = next(ln for ln in out.splitlines() if ln.startswith(f"{rid} "))
    return [cell.strip() for cell in line.split("|")]


@pytest.mark.slow
def test_ls_queues_shows_the_live_state_of_a_job_that_ended_while_no_service_ran(
        ended_pbs_job, cursor):
    env, rid = ended_pbs_job
    proc = run_balsam("ls", "queues")
    assert proc.returncode == 0, proc.stderr
    assert row_of(proc.stdout, rid)[6:8] == ["ended", "live (recorded running)"]
    assert "Note:" not in proc.stdout
    assert recorded(cursor, rid) == "running"  # a view writes nothing


@pytest.mark.slow
def test_when_the_scheduler_fails_ls_queues_marks_recorded_states_stale_with_the_reason(
        ended_pbs_job, db):
    env, rid = ended_pbs_job
    proc = run_balsam("ls", "queues", env={"BALSAM_FAKE_SCHED_FAIL": "qstat"})
    assert proc.returncode == 0, proc.stderr
    assert row_of(proc.stdout, rid)[6:8] == ["running", "stale: last sync 2h00m ago"]
    note = proc.stdout.splitlines()[-1]
    assert re.fullmatch(r"Note: the scheduler's status command failed \(`qstat.*\); states as "
                        r"last recorded, last sync 2h00m ago", note), note
    os.unlink(os.path.join(db, live.SYNC_FILE))
    proc = run_balsam("ls", "queues", env={"BALSAM_FAKE_SCHED_FAIL": "qstat"})
    assert row_of(proc.stdout, rid)[6:8] == ["running", "stale: never synced"]


def test_top_shows_the_live_state_or_marks_the_recorded_one_stale(ended_pbs_job):
    env, rid = ended_pbs_job
    out = run_balsam("top", "--once").stdout
    assert re.search(rf"^\s+{rid} 1000\.fakepbs\s+workq\s+1\s+30 ended\s+db: running$", out, re.M), out
    out = run_balsam("top", "--once", env={"BALSAM_FAKE_SCHED_FAIL": "qstat"}).stdout
    assert re.search(rf"^\s+{rid} 1000\.fakepbs\s+workq\s+1\s+30 running\s+stale$", out, re.M), out
    assert re.search(r"^note: the scheduler's status command failed \(`qstat", out, re.M), out


@pytest.mark.slow
def test_the_dashboard_shows_the_live_state_of_the_batch_job(ended_pbs_job, db):
    env, rid = ended_pbs_job
    with web_server(db, "--token", TOKEN, env=env) as base:
        client = Client(base)
        client.login()
        status, body, _ = client.request("/")
    assert status == 200
    assert '<td>ended</td><td class="as-of">live (recorded running)</td>' in body
    assert 'id="batch-note"' not in body
    with web_server(db, "--token", TOKEN, env=dict(env, BALSAM_FAKE_SCHED_FAIL="qstat")) as base:
        client = Client(base)
        client.login()
        status, body, _ = client.request("/")
    assert '<td>running</td><td class="as-of">stale: last sync 2h00m ago</td>' in body
    assert re.search(r'<p class="note" id="batch-note">Note: the scheduler&#x27;s status command '
                     r'failed \(`qstat', body), body[-2000:]


def test_a_local_batch_job_that_ended_while_no_service_ran_is_shown_ended(db, cursor):
    proc = run_balsam("submit-launch", "-n", "1", "-t", "5", "-q", "local", "--job-mode", "mpi")
    assert proc.returncode == 0, proc.stderr
    cursor.execute(f"SELECT id, scheduler_id FROM {QL}")
    (rid, sched_id), = cursor.fetchall()
    cursor.execute(f"UPDATE {QL} SET state = 'running' WHERE id = %s", [rid])
    local = schedulers.get("local", os.path.join(db, "qsubmit"))
    assert row_of(run_balsam("ls", "queues").stdout, rid)[6:8] in (
        ["running", "live"], ["ended", "live (recorded running)"])
    local.cancel(sched_id)
    wait_for(lambda: sched_id not in local.status(current_user()) or
             local.status(current_user())[sched_id].is_final, 30, "the local job to end")
    assert row_of(run_balsam("ls", "queues").stdout, rid)[6:8] == ["ended", "live (recorded running)"]


def test_the_service_records_the_time_of_each_sync(db):
    path = os.path.join(db, live.SYNC_FILE)
    if os.path.exists(path):
        os.unlink(path)
    assert live.last_sync(db) is None
    began = datetime.now(timezone.utc)
    with settings(db, service={"cycle_seconds": 0.5, "transition_threads": 0}), \
            services(db) as start:
        svc = start()
        svc.wait_started()
        svc.wait_cycles(2)
    synced = live.last_sync(db)
    assert synced is not None and began <= synced <= datetime.now(timezone.utc)


def test_a_scheduler_that_cannot_be_asked_gives_recorded_states_marked_stale(tmp_path):
    (tmp_path / "qsubmit").write_text("")  # the local scheduler cannot keep its records here
    answer = live.ask(str(tmp_path), "local", set())
    assert answer.listed is None and "File exists" in answer.error
    rows = [{"scheduler_id": "7", "state": "running", "submitted_at": None},
            {"scheduler_id": "", "state": "pending-submission", "submitted_at": None}]
    live.annotate(rows, answer)
    assert [(r["state"], r["as_of"], r["live"]) for r in rows] == [
        ("running", "stale: never synced", False), ("pending-submission", "", None)]
    assert answer.note.endswith("states as last recorded, never synced")
