"""Retries whose back-offs end at staggered moments do not make the loops pass continuously
(issue 16, session 21, review of s21-idlewake).

A processing pass says when the first job it left backing off may be retried
(``transitions.PassResult.retry_in``) and the serial master and the MPI loop pass then. With many
jobs whose back-offs end a few milliseconds apart (jobs that timed out one after another), each
pass moved one or two of them and the next came a few tens of milliseconds later: the idle
serial master ran a pass 50 ms after one that moved jobs (a rule for cascades, which retries
are not), the busy one at ``retry_in``, bypassing ``ADVANCE_BUSY_SECONDS``; the MPI loop every
0.1 s (``PROCESSING_MIN_INTERVAL``). Each pass reads every backing-off job with its failure
count. A pass for a retry now comes at most once per ``idle_wait_seconds`` (the spacing a
notification gets), so a retry is at most that late. The transfer worker likewise looked once
per item whose back-off ended; now at most once per ``RETRY_LOOK_SECONDS``.
"""
from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
from conftest import make_public_tmpdir
from launcher_procs import launchers
from launcher_support import add_app, add_jobs, settings, wait_for
from test_idle_wake import LOOKS_AWAY, MPI, SERIAL, _connected

from balsam.core import lifecycle, schema
from balsam.core.states import State
from balsam.processing.transfers.step import RETRY_LOOK_SECONDS

JOB, EVENT, ITEM = schema.JOB_TABLE, schema.EVENT_TABLE, schema.TRANSFER_ITEM_TABLE
JOBS = 160
FIRST_DUE, SPACING = 2.0, 0.05  # the first retry due 2 s after the jobs are committed, then 20/s
BACKOFF = 60.0
IDLE_WAIT = 1.0


def _staggered(cursor: Any) -> list[str]:
    """``JOBS`` timed-out jobs whose retries fall due ``SPACING`` apart (committed at once). They
    ask for more nodes than the launcher has: retried (RESTART_READY), they are never run, so
    the only transactions that move them are processing passes."""
    cursor.execute("BEGIN")
    jobs = add_jobs(cursor, [{"name": f"t{i}", "application": "quick", "state": "RUNNING",
                              "num_nodes": 64} for i in range(JOBS)])
    assert len(lifecycle.transition(cursor, jobs, State.RUN_TIMEOUT, "timed out (test)")) == JOBS
    cursor.execute(f"""UPDATE {JOB} j SET state_since = clock_timestamp()
                           - make_interval(secs => %s) + make_interval(secs => %s * s.i)
                       FROM unnest(%s::uuid[]) WITH ORDINALITY AS s(id, i)
                       WHERE j.job_id = s.id""",
                   [BACKOFF - FIRST_DUE + SPACING, SPACING, jobs])
    cursor.execute("COMMIT")
    return jobs


def _retried(cursor: Any) -> tuple[int, int, float]:
    """(jobs retried, distinct transactions that retried them, the latest retry's lateness:
    seconds after its back-off ran out)."""
    cursor.execute(f"""SELECT count(*), count(DISTINCT e.xmin::text),
                              max(EXTRACT(EPOCH FROM e.timestamp - e.entered_at))
                       FROM {EVENT} e WHERE e.to_state = 'RESTART_READY'""")
    count, passes, waited = cursor.fetchone()
    return int(count), int(passes), (float(waited) - BACKOFF) if waited is not None else 0.0


def _running(cursor: Any, job_id: str) -> bool:
    cursor.execute(f"SELECT state FROM {JOB} WHERE job_id = %s", [job_id])
    return cursor.fetchone()[0] == "RUNNING"


@pytest.mark.slow
@pytest.mark.parametrize("args,busy", [(SERIAL, False), (SERIAL, True), (MPI, False)],
                         ids=["serial", "serial-busy", "mpi"])
def test_staggered_retries_are_passed_at_most_once_per_idle_wait(db, cursor, args, busy):
    """Idle, and (serial) busy with a task that runs throughout (its master passes at most
    every ``ADVANCE_BUSY_SECONDS``, 1 s, while tasks run)."""
    add_app(cursor, "quick", "/bin/true")
    add_app(cursor, "nap", "/bin/sleep 60")
    launcher = {"idle_wait_seconds": IDLE_WAIT, "idle_poll_max_seconds": 600,
                "retry_backoff_seconds": BACKOFF}
    with settings(db, launcher=launcher), launchers() as start:
        start(*args)
        _connected(cursor, args[-1])
        if busy:
            (nap,) = add_jobs(cursor, [{"name": "nap", "application": "nap",
                                        "state": "PREPROCESSED"}])
            wait_for(lambda: _running(cursor, nap), 20, "the long task's RUNNING")
        _staggered(cursor)
        span = FIRST_DUE + JOBS * SPACING
        wait_for(lambda: _retried(cursor)[0] == JOBS, span + 3 * IDLE_WAIT + 10,
                 "every staggered retry")
    count, passes, late = _retried(cursor)
    # 8 s of retries due: about one pass per idle_wait_seconds, not one every few tens of ms
    assert passes <= (JOBS * SPACING) / IDLE_WAIT + 4, f"{passes} passes retried {count} jobs"
    assert late < IDLE_WAIT + 1.5, f"a retry came {late:.2f} s after its back-off ran out"


# ---- transfer items' retries -------------------------------------------------------------------
ITEMS, ITEM_SPACING = 30, 0.3
"""Apart enough that the passes a sent batch brings at once (recording it, moving its job) have
ended before the next item falls due: each is found by a look of its own."""


@pytest.fixture
def area():
    path = make_public_tmpdir("balsam-pace-")
    yield path
    subprocess.run(["rm", "-rf", path], check=False)


def _items_backing_off(cursor: Any, area: str) -> None:
    """``ITEMS`` READY jobs, each with a stage-in item whose first try failed and whose retry
    falls due ``ITEM_SPACING`` after the previous one's (the first ``FIRST_DUE`` s from now),
    committed at once."""
    cursor.execute("BEGIN")
    source = os.path.join(area, "in.dat")
    jobs = add_jobs(cursor, [{"name": f"s{i}", "application": "quick", "state": "READY",
                              "stage_in_url": source, "user_workdir": os.path.join(area, f"s{i}")}
                             for i in range(ITEMS)])
    cursor.execute(f"""
        INSERT INTO {ITEM} (job_id, direction, source, destination, protocol, endpoint, slot,
                            state, attempts, error, size, files, created_at, not_before)
        SELECT s.id, 'in', %s, %s || '/s' || (s.i - 1), 'local', '', '', 'pending', 1,
               'failed once (test)', 0, 0, clock_timestamp(),
               clock_timestamp() + make_interval(secs => %s + %s * (s.i - 1))
        FROM unnest(%s::uuid[]) WITH ORDINALITY AS s(id, i)""",
                   [source, area, FIRST_DUE, ITEM_SPACING, jobs])
    cursor.execute("COMMIT")


def _batches(cursor: Any) -> tuple[int, int, float]:
    """(items done, transfer batches that sent them, the latest one's lateness: seconds from
    its ``not_before`` to its end)."""
    cursor.execute(f"""SELECT count(*), count(DISTINCT batch_id),
                              max(EXTRACT(EPOCH FROM finished_at - not_before))
                       FROM {ITEM} WHERE state = 'done'""")
    done, batches, late = cursor.fetchone()
    return int(done), int(batches), float(late or 0.0)


@pytest.mark.slow
def test_staggered_transfer_retries_are_looked_for_at_most_once_a_second(db, cursor, area):
    """The transfer worker looked (a pass: four transactions or more) each time an item's
    back-off ran out: a batch per item (30 for 30 items falling due over 9 s); now a look per
    ``RETRY_LOOK_SECONDS`` at most sends those due by then together."""
    add_app(cursor, "quick", "/bin/true")
    with open(os.path.join(area, "in.dat"), "w") as fh:
        fh.write("in")
    with settings(db, launcher=LOOKS_AWAY), launchers() as start:
        start(*SERIAL)
        _connected(cursor, "serial")
        _items_backing_off(cursor, area)
        wait_for(lambda: _batches(cursor)[0] == ITEMS, FIRST_DUE + ITEMS * ITEM_SPACING + 15,
                 "every staggered stage-in item sent")
    done, batches, late = _batches(cursor)
    assert batches <= ITEMS * ITEM_SPACING / RETRY_LOOK_SECONDS + 4, f"{batches} batches sent {done}"
    assert late < RETRY_LOOK_SECONDS + 1.5, f"an item was sent {late:.2f} s after it was due"
