"""The transfer worker is woken only for jobs left in READY or POSTPROCESSED (its own channel,
migration 0015), spends one cheap check (balsam.processing.transfers.items.may_have_work), not a
pass, when there is no transfer work, and still sends items as soon as there are."""
from __future__ import annotations

import logging
import os
import threading
import time

from launcher_support import add_jobs
from test_transfers import area, job_states, ready_jobs, transfer_settings  # noqa: F401

from balsam.core import schema
from balsam.db.database import Database
from balsam.processing.transfers import items as titems
from balsam.processing.transfers.step import TransferWorker


def may_have_work(db: str) -> bool:
    conn = Database(db, "test-transfers-idle")
    try:
        return conn.run(titems.may_have_work)
    finally:
        conn.close()


def test_may_have_work_is_false_without_transfers_and_true_for_each_kind_of_work(
        db, cursor, area):  # noqa: F811
    ready_jobs(cursor, [{"name": f"plain{i}"} for i in range(3)])
    assert not may_have_work(db)  # jobs without transfers: nothing a pass could do
    src = os.path.join(area, "a.txt")
    with open(src, "w") as fh:
        fh.write("a")
    [job] = ready_jobs(cursor, [{"name": "in", "stage_in_url": src}])
    assert job_states(cursor, [job]) == {job: "READY"}
    assert may_have_work(db)  # a READY job with a stage-in URL: its items are to be made
    cursor.execute(f"UPDATE {schema.JOB_TABLE} SET state = 'RUNNING' WHERE job_id = %s", [job])
    assert not may_have_work(db)
    cursor.execute(f"""INSERT INTO {schema.TRANSFER_ITEM_TABLE}
                       (job_id, direction, source, destination, protocol, endpoint, slot,
                        state, attempts, error, size, files, created_at)
                       VALUES (%s, 'in', %s, '/x', 'local', '', '', 'pending', 0, '', 0, 0, now())
                       RETURNING id""", [job, src])
    item = cursor.fetchone()[0]
    assert may_have_work(db)  # a pending item (of a job that moved on: to fail as not sent)
    cursor.execute(f"""INSERT INTO {schema.TRANSFER_BATCH_TABLE}
                       (protocol, endpoint, direction, owner, state, task_id, item_count, bytes,
                        message, started_at)
                       VALUES ('local', '', 'in', 'h:1', 'active', '', 1, 0, '', now())""")
    cursor.execute(f"UPDATE {schema.TRANSFER_ITEM_TABLE} SET state = 'failed' WHERE id = %s",
                   [item])
    assert may_have_work(db)  # a batch being sent: to record, poll or recover
    cursor.execute(f"UPDATE {schema.TRANSFER_BATCH_TABLE} SET state = 'done'")
    assert not may_have_work(db)


def test_the_worker_sleeps_through_changes_without_transfers_and_wakes_for_a_stage_in(
        db, cursor, area):  # noqa: F811
    stop = threading.Event()
    with transfer_settings(db, poll_seconds=30):  # only a notification can wake it in time
        worker = TransferWorker(db, stop=stop, log=logging.getLogger("test"),
                                idle_wait_seconds=30)
        worker.start()
        try:
            deadline = time.monotonic() + 10
            while worker.db.transactions < 6 and time.monotonic() < deadline:
                time.sleep(0.05)  # its first (full) pass: six transactions
            time.sleep(0.2)
            before = worker.db.transactions
            ids = add_jobs(cursor, [{"name": f"plain{i}"} for i in range(3)])
            for state in ("PREPROCESSED", "RUNNING", "RUN_DONE", "JOB_FINISHED"):
                cursor.execute(f"UPDATE {schema.JOB_TABLE} SET state = %s "
                               "WHERE job_id = ANY(%s::uuid[])", [state, ids])
            time.sleep(0.5)
            assert worker.db.transactions == before  # not woken: not even a check
            src = os.path.join(area, "b.txt")
            with open(src, "w") as fh:
                fh.write("b")
            [job] = ready_jobs(cursor, [{"name": "in", "stage_in_url": src}])
            deadline = time.monotonic() + 10
            while job_states(cursor, [job])[job] == "READY" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert job_states(cursor, [job]) == {job: "PREPROCESSED"}  # woken by READY
            checks = worker.db.transactions - before
            assert 6 <= checks <= 20  # a check, a pass or two (no pass per change)
        finally:
            stop.set()
            cursor.execute("NOTIFY balsam_transfers")  # its wait would last 30 s
            worker.join(10)
    assert not worker.is_alive()
