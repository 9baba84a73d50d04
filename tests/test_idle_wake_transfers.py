"""Transfer work that no job-row change announces reaches idle workers when it becomes due
(issue 16, session 21; the launcher side is in ``test_idle_wake.py``).

The workers' own looks are pushed out of reach (``LOOKS_AWAY``: the first 20 s after one that
found nothing, backing off to 600 s); each wait is bounded well under that: stage-in items done
for a job that still links its parents' files (a transition worker's step), a transfer item's
retry back-off over, and a job announced while the transfer worker's connection was down.
"""
from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Optional

import pytest
from conftest import make_public_tmpdir
from launcher_procs import launchers
from launcher_support import add_app, add_jobs, settings, wait_for
from test_idle_wake import LOOKS_AWAY, SERIAL, _connected, _db_now, _started_at

from balsam.core import schema
from balsam.db import dbsettings
from balsam.processing.transfers import completion

JOB, ITEM = schema.JOB_TABLE, schema.TRANSFER_ITEM_TABLE


@pytest.fixture
def area():
    path = make_public_tmpdir("balsam-wake-")
    yield path
    subprocess.run(["rm", "-rf", path], check=False)


def _transfer_settings(db: str, **values: Any) -> dict[str, Any]:
    merged = dict(dbsettings.load(db)["transfers"])
    merged.update(values)
    return merged


def test_the_pass_says_when_an_item_backing_off_may_be_sent(cursor, area):
    add_app(cursor, "quick", "/bin/true")
    assert completion.retry_in(cursor, None) is None
    (job,) = add_jobs(cursor, [{"name": "r", "application": "quick", "state": "READY",
                                "stage_in_url": f"{area}/in.dat"}])
    cursor.execute(f"INSERT INTO {ITEM} (job_id, direction, source, destination, protocol, "
                   "endpoint, slot, state, attempts, error, size, files, created_at, "
                   "not_before) VALUES (%s, 'in', 's', 'd', 'local', '', '', 'pending', 1, "
                   "'e', 0, 0, now(), now() + interval '30 seconds')", [job])
    wait = completion.retry_in(cursor, None)
    assert wait is not None and 29.0 < wait <= 30.1
    assert completion.retry_in(cursor, "other-workflow") is None


@pytest.mark.slow
def test_stage_in_done_for_a_job_that_links_parent_files_wakes_the_workers(db, cursor, area):
    """Its items done, the job is left READY for a transition worker (to link ``input_files``):
    the items' rows are no job rows, so the worker found it at its own next look (20.1 s here on
    main; 0.25 s now)."""
    add_app(cursor, "quick", "/bin/true")
    with open(os.path.join(area, "in.dat"), "w") as fh:
        fh.write("in")
    os.makedirs(os.path.join(area, "parent"))
    with open(os.path.join(area, "parent", "out.txt"), "w") as fh:
        fh.write("parent's")
    with settings(db, launcher=LOOKS_AWAY), launchers() as start:
        start(*SERIAL)
        _connected(cursor, "serial")
        time.sleep(3.0)  # idle (a window, not a wait)
        cursor.execute("BEGIN")  # the dependency is there when the job is announced
        parent, child = add_jobs(cursor, [
            {"name": "parent", "application": "quick", "state": "JOB_FINISHED",
             "user_workdir": os.path.join(area, "parent")},
            {"name": "child", "application": "quick", "state": "READY",
             "stage_in_url": f"{area}/in.dat", "input_files": "out.txt",
             "user_workdir": os.path.join(area, "child")}])
        cursor.execute(f"INSERT INTO {schema.DEP_TABLE} (parent_id, child_id) VALUES (%s, %s)",
                       [parent, child])
        cursor.execute("COMMIT")
        announced = _db_now(cursor)
        started = wait_for(lambda: _started_at(cursor, child), 8,
                           "the RUNNING of a job staged in that links its parent's files")
    assert started - announced < 5.0
    assert os.path.islink(os.path.join(area, "child", "out.txt"))
    assert os.path.exists(os.path.join(area, "child", "in.dat"))


def _failed_once(cursor: Any, job_id: str) -> Optional[float]:
    """The epoch when the job's stage-in item may be tried again, once its first try failed."""
    cursor.execute(f"SELECT EXTRACT(EPOCH FROM not_before) FROM {ITEM} WHERE job_id = %s "
                   "AND state = 'pending' AND attempts = 1 AND error <> ''", [job_id])
    row = cursor.fetchone()
    return None if row is None else float(row[0])


@pytest.mark.slow
def test_a_transfer_retry_is_sent_when_its_back_off_runs_out(db, cursor, area):
    """The first try fails (the working directory's path is taken by a file); once its back-off
    ran out the item was sent again only at the transfer worker's next look (16.1 s after it was
    due here on main; 0.09 s now)."""
    add_app(cursor, "quick", "/bin/true")
    with open(os.path.join(area, "in.dat"), "w") as fh:
        fh.write("in")
    blocker = os.path.join(area, "work")
    with open(blocker, "w") as fh:
        fh.write("in the way")
    backoff = 4.0
    with settings(db, launcher=LOOKS_AWAY,
                  transfers=_transfer_settings(db, retry_backoff_seconds=backoff)), \
            launchers() as start:
        start(*SERIAL)
        _connected(cursor, "serial")
        (job,) = add_jobs(cursor, [{"name": "r", "application": "quick", "state": "READY",
                                    "stage_in_url": f"{area}/in.dat", "user_workdir": blocker}])
        due = wait_for(lambda: _failed_once(cursor, job), 10, "the first try's failure")
        os.remove(blocker)
        started = wait_for(lambda: _started_at(cursor, job), max(0.0, due - _db_now(cursor)) + 4,
                           "the RUNNING of a job whose stage-in was retried")
    assert started - due < 3.0, f"started {started - due:.2f} s after the retry was due"


@pytest.mark.slow
def test_a_job_announced_while_the_transfer_workers_connection_was_down_is_staged(db, cursor,
                                                                                  area):
    """A job to stage in, committed (announced) right after the transfer worker's connection
    drops: the notification is lost, so the worker looks on reconnecting; it reconnected only at
    its next own look before (17.0 s here on main; 0.06 s now)."""
    add_app(cursor, "quick", "/bin/true")
    with open(os.path.join(area, "in.dat"), "w") as fh:
        fh.write("in")
    with settings(db, launcher=LOOKS_AWAY), launchers() as start:
        start(*SERIAL)
        _connected(cursor, "serial")
        time.sleep(3.0)  # idle (a window, not a wait)
        cursor.execute("BEGIN")  # the job is committed (notified) right after the drop
        (job,) = add_jobs(cursor, [{"name": "s", "application": "quick", "state": "READY",
                                    "stage_in_url": f"{area}/in.dat",
                                    "user_workdir": os.path.join(area, "s")}])
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                       "WHERE application_name = 'balsam-transfers'")
        assert cursor.fetchone()[0]
        cursor.execute("COMMIT")
        announced = _db_now(cursor)
        started = wait_for(lambda: _started_at(cursor, job), 8,
                           "the RUNNING of a job announced while the transfer worker was cut off")
    assert started - announced < 5.0
