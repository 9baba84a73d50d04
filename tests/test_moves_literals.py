"""The launcher's moves statement takes its arrays as one array literal each
(:func:`balsam.core.launcher_moves.array_literal`): whatever a message holds -- quotes,
backslashes, braces, commas, new lines, ``NULL``, spaces at either end, any Unicode -- reaches
the job's history exactly as it was (real PostgreSQL)."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from launcher_support import add_app, add_jobs, events

from balsam.core import launcher_moves, leases
from balsam.core.states import State
from balsam.db.database import Database
from balsam.launcher.status import StatusBuffer
from balsam.processing import transitions

AWKWARD = ['', ' ', 'NULL', 'null', '"', '\\', '\\"', '{}', '{a,b}', 'a,b', '""', "'", "''",
           ' lead and trail ', 'exit code 1:\nTraceback (most recent call last):\n  "x\\y"',
           'tab\there', 'ünïcödé ✓ 日本', '\\\\server\\share', '{"a": [1, 2]}', ')', '$1']


def test_every_awkward_string_round_trips_through_the_server(cursor):
    for values in ([], [''], AWKWARD, list(reversed(AWKWARD))):
        cursor.execute("SELECT %s::text[]", [launcher_moves.array_literal(values)])
        assert cursor.fetchone()[0] == values


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                        max_size=12), max_size=6))
def test_any_text_round_trips_through_the_server(cursor, values):
    cursor.execute("SELECT %s::text[]", [launcher_moves.array_literal(values)])
    assert cursor.fetchone()[0] == values


def test_recorded_messages_are_the_ones_given(db, cursor):
    add_app(cursor, "app", "true")
    ids = add_jobs(cursor, [{"name": f"m{i}", "application": "app", "state": "PREPROCESSED"}
                            for i in range(len(AWKWARD))])
    database = Database(db)
    try:
        sid = database.run(leases.open_session, hostname="h", pid=1, job_mode="serial",
                           num_nodes=1, lease_seconds=60)
        claimed = sorted(r["job_id"] for r in database.run(leases.claim, sid, 100, serial=True,
                                                           max_nodes=1))
        assert claimed == sorted(ids)
        start = 'started by "the launcher" {session} \\ 1, 2'
        status = StatusBuffer(database, sid, start_message=start,
                              follow=transitions.FINISH_ON_RECORD)
        status.started(claimed)
        for job_id, message in zip(claimed, AWKWARD):
            status.error(job_id, message)
        written = status.flush()
        assert written is not None and written.ended == len(claimed)
        for job_id, message in zip(claimed, AWKWARD):
            moves = [(e[2], e[3]) for e in events(cursor, job_id)][1:]
            assert moves == [(State.RUNNING.value, start), (State.RUN_ERROR.value, message)]
    finally:
        database.close()
