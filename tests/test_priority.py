"""Job priority: launchers claim higher priorities first (serial and MPI modes) straight from the
claim's partial indexes -- also at 1,000,000 jobs -- and the planner gives them queue slots first."""
from __future__ import annotations

import itertools
import json
import random
import time
import uuid

import pytest

from balsam.core import bulk, copyfmt, leases, schema
from balsam.db import driver
from balsam.service import planner

JOB = schema.JOB_TABLE
SEED_ROWS = 1_000_000


def add(cursor, specs):
    """Insert runnable jobs from (name, priority, num_nodes, node_packing_count) specs."""
    rows = [schema.new_job_row(dict(name=n, application="app", state="PREPROCESSED",
                                    priority=p, num_nodes=nodes, node_packing_count=pack))
            for n, p, nodes, pack in specs]
    bulk.copy_jobs(cursor, rows)


def claim_names(cursor, limit, serial):
    sid = leases.open_session(cursor, hostname="h", pid=1, job_mode="serial" if serial else "mpi",
                              num_nodes=8, lease_seconds=60)
    return [r["name"] for r in leases.claim(cursor, sid, limit, serial=serial, max_nodes=8)]


def test_mpi_launchers_claim_higher_priority_first_then_widest(db, cursor):
    add(cursor, [("wide-low", 0, 8, 1), ("narrow-high", 5, 1, 1), ("mid-high", 5, 4, 1),
                 ("negative", -2, 8, 1), ("mid-low", 0, 4, 1)])
    assert claim_names(cursor, 2, serial=False) == ["mid-high", "narrow-high"]
    assert claim_names(cursor, 10, serial=False) == ["wide-low", "mid-low", "negative"]


def test_serial_launchers_claim_higher_priority_first_then_least_packed(db, cursor):
    add(cursor, [("packed-low", 0, 1, 8), ("alone-low", 0, 1, 1), ("packed-high", 3, 1, 8),
                 ("mpi-high", 9, 2, 1)])
    assert claim_names(cursor, 1, serial=True) == ["packed-high"]
    assert claim_names(cursor, 10, serial=True) == ["alone-low", "packed-low"]


def test_the_planner_gives_the_free_queue_slot_to_the_higher_priority_jobs(db, cursor):
    add(cursor, [("big-low", 0, 8, 1)] + [(f"high{i}", 1, 4, 1) for i in range(2)])
    cursor.execute(f"UPDATE {JOB} SET wall_time_minutes = CASE WHEN priority = 0 THEN 100 "
                   "ELSE 60 END")
    queue = dict(min_nodes=1, max_nodes=8, min_minutes=10, max_minutes=120, max_queued=1,
                 max_running=0, max_total_nodes=8)
    created = planner.plan(cursor, {"project": "", "queues": {"q": queue}})
    cursor.execute(f"SELECT id, nodes, wall_minutes FROM {schema.QLAUNCH_TABLE}")
    # One slot: the two 4-node, 60-minute high-priority jobs side by side (the 100-minute
    # low-priority job alone would have been packed first by height).
    assert cursor.fetchall() == [(created[0], 8, 62)] and len(created) == 1


class _Captured(Exception):
    pass


class _Recorder:
    """A cursor stand-in that records the first statement and stops the caller."""

    def __init__(self) -> None:
        self.sql, self.params = "", []

    def execute(self, sql, params=()):
        self.sql, self.params = sql, list(params)
        raise _Captured


def _claim_sql(serial: bool, tags=None):
    rec = _Recorder()
    with pytest.raises(_Captured):
        leases.claim(rec, 1, 64, serial=serial, max_nodes=8, tags=tags, gpus_per_node=0)
    return rec.sql, rec.params


def _seed(cursor, n: int) -> None:
    """``n`` jobs by COPY: 90% finished, the rest runnable with random priorities, half of them
    single-node single-rank (serial) jobs; a third of all tagged ``k=v``."""
    template = schema.new_job_row({"name": "seed", "application": "app"})
    line = copyfmt.encode_dicts([template], bulk.COLUMNS, 0, 1).rstrip(b"\n").split(b"\t")
    at = {c: i for i, c in enumerate(bulk.COLUMNS)}
    rng = random.Random(13)

    def chunks():
        fields = list(line)
        out = []
        for i in range(n):
            runnable = i % 10 == 0
            fields[at["job_id"]] = str(uuid.UUID(int=rng.getrandbits(128))).encode()
            fields[at["state"]] = b"PREPROCESSED" if runnable else b"JOB_FINISHED"
            fields[at["priority"]] = str(rng.randrange(10)).encode()
            fields[at["num_nodes"]] = b"1" if i % 20 == 0 else str(rng.randrange(1, 9)).encode()
            fields[at["tags"]] = b'{"k": "v"}' if i % 3 == 0 else b"{}"  # a third tagged
            out.append(b"\t".join(fields))
            if len(out) == 20000:
                yield b"\n".join(out) + b"\n"
                out = []
        if out:
            yield b"\n".join(out) + b"\n"

    driver.copy_in(cursor, f"COPY {JOB} ({', '.join(bulk.COLUMNS)}) FROM STDIN", chunks())
    cursor.execute(f"ANALYZE {JOB}")


def _plan_nodes(plan: dict) -> list[dict]:
    nodes, todo = [], [plan]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", []))
    return nodes


@pytest.mark.slow
def test_claims_read_their_partial_index_in_priority_order_at_a_million_jobs(db, cursor):
    began = time.monotonic()
    _seed(cursor, SEED_ROWS)
    seeded = time.monotonic() - began
    cursor.execute(f"SELECT count(*) FROM {JOB}")
    assert cursor.fetchone()[0] == SEED_ROWS
    for (serial, index), tags in itertools.product(
            ((False, "job_claim_mpi_pri"), (True, "job_claim_serial_pri")), (None, {"k": "v"})):
        sql, params = _claim_sql(serial, tags)  # a tag filter (BatchJob filter_tags) too
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        raw = cursor.fetchone()[0]
        nodes = _plan_nodes((raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"])
        scans = [n for n in nodes if n.get("Index Name") == index]
        assert scans and scans[0]["Node Type"] == "Index Scan", nodes
        # no sort, and the job table is never scanned whole (a small table, e.g. the sessions
        # one, may be: the planner reads a few pages rather than an index)
        # (a sort inside a per-row subplan, e.g. of a claimed job's few parents, is not one)
        assert not [n for n in nodes if (n["Node Type"] == "Sort"
                                         and n.get("Parent Relationship") != "SubPlan")
                    or (n["Node Type"] == "Seq Scan" and n.get("Relation Name") == JOB)], nodes
    start = time.monotonic()
    sid = leases.open_session(cursor, hostname="h", pid=1, job_mode="mpi", num_nodes=8,
                              lease_seconds=60)
    claimed = leases.claim(cursor, sid, 64, serial=False, max_nodes=8)
    took = time.monotonic() - start
    assert [r["priority"] for r in claimed] == [9] * 64
    # (no timed assertion: the plans above are what keeps a claim fast; the time is printed)
    print(f"\nseeded {SEED_ROWS} jobs by COPY in {seeded:.1f} s; a 64-job claim took "
          f"{took * 1000:.1f} ms")
