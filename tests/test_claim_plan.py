"""The claim is planned once per connection: a prepared statement run with its generic plan
(issue 16), with the same rows as before -- a fractional time limit is never rounded."""
from __future__ import annotations

import pytest

from balsam.core import leases
from balsam.db.connect import connect


@pytest.fixture
def app(db):
    from balsam.core.models import ApplicationDefinition

    return ApplicationDefinition.objects.create(name="app", executable="true")


def make_jobs(n, **fields):
    from balsam.core.models import BalsamJob

    values = {"workflow": "wf", "application": "app", "state": "PREPROCESSED", **fields}
    return BalsamJob.objects.bulk_create([BalsamJob(name=f"j{i}", **values) for i in range(n)])


def claim_plans(cur):
    cur.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE name LIKE 'balsam_claim_%'")
    return cur.fetchall()


def test_claims_use_one_generic_plan_and_reset_the_mode_at_commit(app, db):
    make_jobs(12)
    conn = connect(db)  # psycopg2: the driver whose statements are prepared by name
    try:
        cur = conn.cursor()
        sid = leases.open_session(cur, hostname="h", pid=1, job_mode="serial", num_nodes=1,
                                  lease_seconds=60)
        got = []
        for _ in range(6):
            got += [r["job_id"] for r in leases.claim(cur, sid, 2, serial=True, max_nodes=1)]
            conn.commit()
        assert len(got) == len(set(got)) == 12
        assert claim_plans(cur) == [(6, 0)]  # every claim ran the one generic plan
        cur.execute("SHOW plan_cache_mode")  # SET LOCAL: the claim's transaction only
        assert cur.fetchone()[0] == "auto"
        assert leases.claim(cur, sid, 2, serial=True, max_nodes=1) == []
    finally:
        conn.close()


def test_a_fractional_time_limit_is_compared_unrounded(app, db):
    fits = {str(j.pk) for j in make_jobs(2, wall_time_minutes=12)}
    make_jobs(2, wall_time_minutes=13)
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = leases.open_session(cur, hostname="h", pid=1, job_mode="serial", num_nodes=1,
                                  lease_seconds=60)
        got = set()
        for _ in range(3):  # the first call prepares, the others execute the prepared plan
            got |= {r["job_id"] for r in leases.claim(cur, sid, 1, serial=True, max_nodes=1,
                                                      max_wall_minutes=12.5)}
            conn.commit()
        assert got == fits
    finally:
        conn.close()


def test_cycles_use_one_generic_plan(app, db):
    from balsam.core.states import State

    make_jobs(6)
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = leases.open_session(cur, hostname="h", pid=1, job_mode="mpi", num_nodes=1,
                                  lease_seconds=60)
        held, started, cycles = [], [], 0
        while cycles == 0 or held or started:  # start what was claimed, end what was started
            moves = ([(j, State.RUN_DONE, "") for j in started]
                     + [(j, State.RUNNING, "") for j in held])
            moved, rows = leases.cycle(cur, sid, moves, 2, serial=False, max_nodes=1)
            conn.commit()
            assert len(moved) == len(moves)
            started, held = held, [r["job_id"] for r in rows]
            cycles += 1
        cur.execute("SELECT state, count(*) FROM core_balsamjob GROUP BY 1")
        assert cur.fetchall() == [("RUN_DONE", 6)]
        cur.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                    "WHERE name LIKE 'balsam_cycle_%'")
        assert cur.fetchall() == [(cycles, 0)]
    finally:
        conn.close()
