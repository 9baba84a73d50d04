"""Batch-job row states are written only through :mod:`balsam.core.batchrows`, which refuses a
move :data:`balsam.core.batchstates.ROW_TRANSITIONS` does not allow (the service's normal flow,
run for real, is in tests/test_service*.py and tests/test_api_batchjobs.py)."""
from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from test_service_submit import add_row, row

from balsam.core import batchrows
from balsam.core import batchstates as b
from balsam.core.batchstates import BatchStateError
from balsam.platform.schedulers import BatchJobStatus
from balsam.service.sync import apply_status

REPO = Path(__file__).resolve().parents[1]


def test_check_move_follows_the_table() -> None:
    b.check_move(b.PENDING, b.SUBMITTING)
    b.check_move(b.SUBMITTING, "queued")
    b.check_move("queued", "queued")  # a rewrite of the same state (minutes_left) is no move
    b.check_move(b.PENDING_DELETION, b.CANCELLED)
    for src, dst in [(b.PENDING, b.SUBMITTED), (b.SUBMIT_FAILED, b.PENDING),
                     ("finished", "running"), (b.PENDING_DELETION, "queued"),
                     (b.SUBMIT_FAILED, b.SUBMIT_FAILED)]:
        with pytest.raises(BatchStateError, match=f"may not move from {src} to {dst}$"):
            b.check_move(src, dst)
    with pytest.raises(BatchStateError, match="unknown batch-job state 'Queued'"):
        b.check_move(b.SUBMITTED, "Queued")
    assert b.sources(b.PENDING_DELETION) == b.ROW_STATES - b.FINAL_ROW_STATES - {b.PENDING_DELETION}


def test_an_illegal_move_is_refused_and_nothing_is_written(cursor) -> None:
    rid = add_row(cursor, state=b.SUBMIT_FAILED, message="no such queue")
    with pytest.raises(BatchStateError) as err:
        batchrows.move(cursor, rid, b.PENDING, message="retry")
    assert str(err.value) == f"batch job {rid}: a batch job may not move from submit-failed to " \
                             "pending-submission"
    assert (row(cursor, rid)["state"], row(cursor, rid)["message"]) == (b.SUBMIT_FAILED,
                                                                        "no such queue")
    with pytest.raises(BatchStateError, match=f"^no batch job {rid + 1}$"):
        batchrows.move(cursor, rid + 1, b.SUBMITTING)


def test_the_normal_flow_moves_and_writes_the_columns(cursor) -> None:
    rid = add_row(cursor)
    now = datetime.now(timezone.utc)
    assert batchrows.move(cursor, rid, b.SUBMITTING, attempts=1, submitted_at=now) == b.SUBMITTING
    batchrows.move(cursor, rid, b.SUBMITTED, scheduler_id="77", command="/x.sh")
    batchrows.move(cursor, rid, "running", current=b.SUBMITTED, raw_state="R", minutes_left=9.5)
    got = row(cursor, rid)
    assert (got["state"], got["attempts"], got["scheduler_id"], got["command"], got["raw_state"],
            got["minutes_left"]) == ("running", 1, "77", "/x.sh", "R", 9.5)
    with pytest.raises(ValueError, match="not a batch-job column to write: state_since"):
        batchrows.move(cursor, rid, "running", state_since=now)


def test_a_stale_current_state_is_refused(cursor) -> None:
    rid = add_row(cursor, state=b.SUBMITTED, scheduler_id="5")
    with pytest.raises(BatchStateError, match=f"batch job {rid} is no longer queued"):
        batchrows.move(cursor, rid, "running", current="queued")
    assert row(cursor, rid)["state"] == b.SUBMITTED


def test_keep_cancel_keeps_a_cancel_request_and_writes_the_rest(cursor) -> None:
    rid = add_row(cursor, state=b.PENDING_DELETION)
    assert batchrows.move(cursor, rid, b.SUBMITTED, keep_cancel=True, scheduler_id="42") == \
        b.PENDING_DELETION
    assert (row(cursor, rid)["state"], row(cursor, rid)["scheduler_id"]) == (b.PENDING_DELETION, "42")


def test_move_allowed_moves_only_the_rows_the_table_lets_move(cursor) -> None:
    states = [b.PENDING, b.SUBMITTING, "queued", "finished", b.SUBMIT_FAILED, b.PENDING_DELETION]
    ids = [add_row(cursor, state=s) for s in states]
    assert batchrows.move_allowed(cursor, ids, b.PENDING_DELETION) == 3
    assert [row(cursor, i)["state"] for i in ids] == [b.PENDING_DELETION] * 3 + states[3:]
    with pytest.raises(BatchStateError, match="unknown batch-job state 'gone'"):
        batchrows.move_allowed(cursor, ids, "gone")


def test_the_sync_logs_a_refused_row_and_syncs_the_others(cursor, caplog) -> None:
    # a row in a state no table knows (written by hand) is left as it is, with one error line
    bad = add_row(cursor, state="Held", scheduler_id="1")
    good = add_row(cursor, state=b.SUBMITTED, scheduler_id="2")
    listed = {"1": BatchJobStatus("1", "running", "R"), "2": BatchJobStatus("2", "running", "R")}
    with caplog.at_level(logging.ERROR):
        result = apply_status(cursor, None, listed, datetime.now(timezone.utc),
                              logging.getLogger("test-batchrows"))
    assert result["updated"] == 1
    assert (row(cursor, bad)["state"], row(cursor, good)["state"]) == ("Held", "running")
    assert [r.getMessage() for r in caplog.records] == [
        f"batch job {bad}: batch-job row in unknown state 'Held'; row left as it is"]


def test_no_batch_state_written_outside_batchrows() -> None:
    # Every SQL or ORM write of core_queuedlaunch.state is in balsam/core/batchrows.py.
    write = re.compile(r"UPDATE \{(QL|QLAUNCH|schema\.QLAUNCH_TABLE)\} SET state\b|"
                       r"QueuedLaunch\.objects[^\n]*\n?[^\n]*\.update\(")
    found = [p.relative_to(REPO).as_posix() for p in sorted((REPO / "balsam").rglob("*.py"))
             if write.search(p.read_text())]
    assert found == ["balsam/core/batchrows.py"]


def test_no_batch_state_literals_outside_batchstates() -> None:
    # The declared names, never their spellings ("submitted" is also a key of the local
    # scheduler's own job records).
    from test_routing import string_constants

    spelled = {b.PENDING, b.SUBMITTING, b.SUBMITTED, b.SUBMIT_FAILED, b.PENDING_DELETION,
               b.CANCEL_SENT}
    allowed = {"balsam/core/batchstates.py": spelled,
               "balsam/platform/schedulers/local.py": {"submitted"}}
    found = []
    for path in sorted((REPO / "balsam").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith("balsam/core/migrations/"):
            continue
        found += [f"{rel}:{line}: {text!r}" for line, text in string_constants(path.read_text())
                  if text in spelled - allowed.get(rel, set())]
    assert not found, "\n".join(found)
