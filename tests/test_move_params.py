"""A launcher's batched moves send each of their per-job lists as one array literal
(balsam.core.sql.array_literal) instead of psycopg2's ARRAY[...] of one literal per job: every
message must still arrive exactly as written (real PostgreSQL), whatever characters it holds."""
from __future__ import annotations

from launcher_support import add_app, add_jobs

from balsam.core import launcher_moves, leases, schema
from balsam.core.sql import array_literal
from balsam.core.states import State
from balsam.db.connect import connect
from balsam.processing import transitions

AWKWARD = ["", "NULL", "null", "started", "a,b", "{x}", '"quoted"', "back\\slash", "\\\"",
           "new\nline", " spaced ", "ü ∑ 日本", "it's", "tab\there", "a b,c{d}\"e\\f"]


def test_array_literal_reads_back_as_the_same_strings(cursor):
    ids = ["0b8f0a52-6b2a-4c1e-9a47-2d4f4f0e8a11", "RUN_DONE", "JOB_FINISHED"]
    for values in (AWKWARD, ids, [], [""], ["NULL"], ["x"]):
        cursor.execute("SELECT %s::text[]", [array_literal(values)])
        assert cursor.fetchone()[0] == values, values
    cursor.execute("SELECT %s::uuid[]", [array_literal(ids[:1])])
    assert [str(u) for u in cursor.fetchone()[0]] == ids[:1]


def test_moves_record_every_message_exactly(db, cursor):
    add_app(cursor, "app", "true")
    ids = add_jobs(cursor, [{"name": f"m{i}", "application": "app", "state": "PREPROCESSED"}
                            for i in range(len(AWKWARD))])
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = leases.open_session(cur, hostname="h", pid=1, job_mode="serial", num_nodes=1,
                                  lease_seconds=60)
        assert len(leases.claim(cur, sid, len(ids), serial=True, max_nodes=1)) == len(ids)
        starts = {j: f"start {m}" for j, m in zip(ids, AWKWARD)}
        ends = dict(zip(ids, AWKWARD))
        moved = launcher_moves.move(cur, [(j, State.RUNNING, starts[j]) for j in ids], sid)
        assert len(moved) == len(ids)
        moved = launcher_moves.move(cur, [(j, State.RUN_ERROR, ends[j]) for j in ids], sid,
                                    transitions.FINISH_ON_RECORD)
        assert sorted(m[0] for m in moved) == sorted(ids)
        conn.commit()
        cur.execute(f"SELECT job_id::text, to_state, message FROM {schema.EVENT_TABLE} "
                    "WHERE to_state IN ('RUNNING', 'RUN_ERROR')")
        seen = {(j, s): m for j, s, m in cur.fetchall()}
        assert seen == {**{(j, "RUNNING"): starts[j] for j in ids},
                        **{(j, "RUN_ERROR"): ends[j] for j in ids}}
    finally:
        conn.close()


def test_a_cycle_records_messages_exactly_and_claims(db, cursor):
    add_app(cursor, "app", "true")
    ids = add_jobs(cursor, [{"name": f"c{i}", "application": "app", "state": "PREPROCESSED"}
                            for i in range(2 * len(AWKWARD))])
    conn = connect(db)
    try:
        cur = conn.cursor()
        sid = leases.open_session(cur, hostname="h", pid=1, job_mode="serial", num_nodes=1,
                                  lease_seconds=60)
        held = [r["job_id"] for r in leases.claim(cur, sid, len(AWKWARD), serial=True,
                                                  max_nodes=1)]
        msg = dict(zip(held, AWKWARD))
        moved, claimed = leases.cycle(cur, sid, [(j, State.RUNNING, msg[j]) for j in held],
                                      len(AWKWARD), serial=True, max_nodes=1)
        conn.commit()
        assert sorted(m[0] for m in moved) == sorted(held)
        assert sorted(r["job_id"] for r in claimed) == sorted(set(ids) - set(held))
        cur.execute(f"SELECT job_id::text, message FROM {schema.EVENT_TABLE} "
                    "WHERE to_state = 'RUNNING'")
        assert dict(cur.fetchall()) == msg
    finally:
        conn.close()
