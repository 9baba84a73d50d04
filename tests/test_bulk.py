"""bulk_create through COPY: rows stored exactly as save() stores them, all-or-nothing on any bad
value (even one found after most rows were streamed), and memory bounded by the chunk size."""
from __future__ import annotations

import datetime
import os
import tracemalloc
import uuid

import pytest

from balsam.core import bulk, copyfmt, schema
from balsam.core.states import State


@pytest.fixture
def models(db):
    """The models module, with an empty test DB active holding the apps the jobs here name."""
    from balsam.core import models as m

    for name in ("a", "sim"):
        m.ApplicationDefinition.objects.create(name=name, executable="echo")
    return m


def stored(cursor, job_id) -> dict:
    cursor.execute(f"SELECT * FROM {schema.JOB_TABLE} WHERE job_id = %s", [str(job_id)])
    names = [d[0] for d in cursor.description]
    return dict(zip(names, cursor.fetchone()))


def counts(cursor) -> tuple[int, int, int]:
    found = []
    for table in (schema.JOB_TABLE, schema.EVENT_TABLE, schema.DEP_TABLE):
        cursor.execute(f"SELECT count(*) FROM {table}")
        found.append(cursor.fetchone()[0])
    return tuple(found)


class ChunkSpy:
    """Records the COPY pieces the bulk path encodes (rows per piece)."""

    def __init__(self, monkeypatch) -> None:
        self.rows: list[int] = []
        real = copyfmt.encode_dicts

        def spy(*args, **kwargs) -> bytes:
            text = real(*args, **kwargs)
            self.rows.append(text.count(b"\n"))
            return text

        monkeypatch.setattr(copyfmt, "encode_dicts", spy)


# Every settable field, none at its default, text full of COPY's special characters.
TRICKY = {
    "workflow": "wf\twith tab", "name": "näme\nnewline", "description": 'back\\slash "q" ☃ \\N',
    "lock": "", "input_files": "*.in a\rb", "stage_in_url": "file:///in put",
    "stage_out_files": "out*", "stage_out_url": "globus://x/y", "wall_time_minutes": 2**31 - 1,
    "num_nodes": 128, "coschedule_num_nodes": 0, "ranks_per_node": 64, "cpu_affinity": "depth",
    "threads_per_rank": 4, "threads_per_core": 2, "node_packing_count": 16,
    "environ_vars": "A=1:B=x=y", "mpi_flags": "--bind-to core", "application": "sim",
    "args": "--in 'a b' \\t", "user_workdir": "/tmp/wd", "wait_for_parents": False,
    "post_error_handler": True, "post_timeout_handler": True, "auto_timeout_retry": False,
    "state": "CREATED", "data": {"nested": {"list": [1, "two", None, True, 2.5]}, "tab": "\t",
                                 "uni": "é😀", "empty": {}},
}
# The same job as strings and other types that save() converts.
LOOSE = dict(TRICKY, wall_time_minutes=" 30 ", num_nodes="3", wait_for_parents="no",
             post_error_handler="yes", auto_timeout_retry=0, data='{"a": [1, 2]}',
             state=State.READY, name=12345)


@pytest.mark.parametrize("values", [TRICKY, dict(TRICKY, state="PREPROCESSED"), LOOSE],
                         ids=["tricky", "created-in-another-state", "values-to-convert"])
def test_bulk_created_job_is_stored_field_by_field_as_a_saved_one(models, cursor, values) -> None:
    saved = models.BalsamJob(**values)
    saved.save()
    made = models.BalsamJob(**values)
    models.BalsamJob.objects.bulk_create([made])
    a, b = stored(cursor, saved.pk), stored(cursor, made.pk)
    assert set(a) == set(b) == {"job_id", "created_at", "tick", "queued_launch_id",
                                *schema.JOB_LEASE_COLUMNS, *schema.JOB_STATE_COLUMNS,
                                *schema.JOB_DEFAULTS}
    assert a["session_id"] is None and b["session_id"] is None
    assert a["state_since"] is None and b["state_since"] is None
    for column in schema.JOB_DEFAULTS:
        assert (a[column], type(a[column])) == (b[column], type(b[column])), column
    assert a["queued_launch_id"] is b["queued_launch_id"] is None
    assert b["created_at"] == made.created_at and b["tick"] == made.tick  # to the microsecond
    assert b["created_at"].tzinfo is not None
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - b["created_at"]).total_seconds()) < 60
    # the objects hold the converted values too, and both read back alike through the ORM
    for column in schema.JOB_DEFAULTS:
        assert getattr(made, column) == getattr(saved, column) == a[column], column
    reloaded = [models.BalsamJob.objects.get(pk=j.pk).to_dict() for j in (saved, made)]
    for d in reloaded:
        d.pop("job_id"), d.pop("created_at")
    assert reloaded[0] == reloaded[1]
    # the CREATED -> state event, if any, is recorded alike
    cursor.execute(f"SELECT job_id, from_state, to_state, message FROM {schema.EVENT_TABLE} "
                   "ORDER BY id")
    events = {str(j): rest for j, *rest in cursor.fetchall()}
    assert events.get(str(saved.pk)) == events.get(str(made.pk))
    if a["state"] != "CREATED":
        assert events[str(made.pk)] == ["CREATED", a["state"], "created in this state"]


@pytest.mark.slow
def test_a_bad_value_in_row_50001_of_100000_writes_nothing(models, cursor, monkeypatch) -> None:
    spy = ChunkSpy(monkeypatch)
    jobs = [models.BalsamJob(name=f"j{i}", workflow="big", application="a") for i in range(100_000)]
    jobs[50_000].num_nodes = "many"
    with pytest.raises(schema.FieldError, match="num_nodes must be a whole number, not 'many'"):
        models.BalsamJob.objects.bulk_create(jobs)
    # the error surfaced mid-stream: earlier chunks had been sent, and were rolled back
    assert sum(spy.rows) == 50_000 // bulk.CHUNK_ROWS * bulk.CHUNK_ROWS > 0
    assert counts(cursor) == (0, 0, 0)
    assert all(j._state.adding for j in (jobs[0], jobs[49_999], jobs[-1]))
    jobs[50_000].num_nodes = 2  # fixed, the same objects go in whole
    models.BalsamJob.objects.bulk_create(jobs)
    assert counts(cursor) == (100_000, 0, 0)


@pytest.mark.parametrize("field, bad, error, message", [
    ("num_nodes", 0, schema.FieldError, "num_nodes must be >= 1, not 0"),
    ("coschedule_num_nodes", -1, schema.FieldError, "coschedule_num_nodes must be >= 0"),
    ("ranks_per_node", 2**31, schema.FieldError, "ranks_per_node is too large"),
    ("wait_for_parents", "maybe", schema.FieldError, "wait_for_parents must be true or false"),
    ("state", "BOGUS", ValueError, "invalid state 'BOGUS'"),
    ("name", "nul\x00", schema.FieldError, "name may not contain a NUL character"),
    ("args", None, schema.FieldError, "args may not be empty"),
    ("data", "[1, 2]", schema.FieldError, "data must be a JSON object, not list"),
    ("data", {"x": object()}, TypeError, "not JSON serializable"),
    # the creation rules, checked chunk by chunk in the stream too
    ("state", "RUNNING", schema.FieldError, "may not be created in state RUNNING"),
    ("name", "", schema.FieldError, "a new job needs a name"),
])
def test_any_invalid_value_late_in_a_batch_writes_nothing(models, cursor, monkeypatch, field, bad,
                                                          error, message) -> None:
    monkeypatch.setattr(bulk, "CHUNK_ROWS", 100)
    spy = ChunkSpy(monkeypatch)
    parent = models.BalsamJob(name="parent")
    parent.save()
    jobs = [models.BalsamJob(name=f"j{i}", state="READY") for i in range(1_000)]
    setattr(jobs[750], field, bad)
    with pytest.raises(error, match=message):
        models.BalsamJob.objects.bulk_create(jobs)
    assert sum(spy.rows) == 700
    assert counts(cursor) == (1, 0, 0)


def test_a_database_error_mid_copy_writes_nothing(models, cursor, monkeypatch) -> None:
    from django.db import IntegrityError

    monkeypatch.setattr(bulk, "CHUNK_ROWS", 100)
    first = models.BalsamJob(name="first")
    first.save()
    jobs = [models.BalsamJob(name=f"j{i}") for i in range(1_000)]
    jobs[900].job_id = first.job_id  # a duplicate primary key only the server can see
    with pytest.raises(IntegrityError, match="duplicate key"):
        models.BalsamJob.objects.bulk_create(jobs)
    assert counts(cursor) == (1, 0, 0)


def rows_for(n: int) -> list[dict]:
    return [schema.new_job_row({"name": f"m{i}", "workflow": "mem", "args": "x" * 40})
            for i in range(n)]


def peak_copy_memory(db: str, rows: list[dict]) -> int:
    """Peak bytes allocated by Python while ``copy_jobs`` streams ``rows`` (rolled back)."""
    from balsam.db.connect import connect

    conn = connect(db)
    try:
        with conn.cursor() as cur:
            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                start = tracemalloc.get_traced_memory()[0]
                assert bulk.copy_jobs(cur, rows) == len(rows)
                peak = tracemalloc.get_traced_memory()[1] - start
            finally:
                tracemalloc.stop()
            cur.execute(f"SELECT count(*) FROM {schema.JOB_TABLE}")
            assert cur.fetchone()[0] == len(rows)
    finally:
        conn.rollback()
        conn.close()
    return peak


def test_memory_of_a_huge_batch_is_bounded_by_the_chunk_not_the_row_count(db, monkeypatch) -> None:
    """A million-row batch never becomes one giant COPY text: shown here at 20,000 rows with the
    chunk shrunk to 200 rows, where the whole text would be 100 times one chunk."""
    rows = rows_for(20_000)
    whole = len(copyfmt.encode_dicts(rows, bulk.COLUMNS))
    spy = ChunkSpy(monkeypatch)
    monkeypatch.setattr(bulk, "CHUNK_ROWS", 200)
    small = peak_copy_memory(db, rows)
    assert spy.rows == [200] * 100
    assert small < whole / 10, (small, whole)
    monkeypatch.setattr(bulk, "CHUNK_ROWS", 20_000)
    assert peak_copy_memory(db, rows) > whole > 5 * small  # one chunk: the whole text at once


def test_make_dummies_rows_are_validated_too(db, cursor) -> None:
    rows = rows_for(3)
    rows[2]["num_nodes"] = "4"  # converted, as save() would
    from balsam.db.connect import connect

    conn = connect(db)
    with conn, conn.cursor() as cur:
        bulk.copy_jobs(cur, rows)
    conn.close()
    cursor.execute(f"SELECT name, num_nodes FROM {schema.JOB_TABLE} ORDER BY name")
    assert cursor.fetchall() == [("m0", 1), ("m1", 1), ("m2", 4)]
    assert rows[2]["num_nodes"] == 4


def test_bulk_create_accepts_any_iterable_and_leaves_saved_objects(models, cursor) -> None:
    made = models.BalsamJob.objects.bulk_create(models.BalsamJob(name=f"g{i}") for i in range(5))
    assert [j.name for j in made] == [f"g{i}" for i in range(5)]
    assert not any(j._state.adding for j in made)
    made[2].args = "changed"
    made[2].save()  # an UPDATE of the stored row, not a second INSERT
    assert counts(cursor) == (5, 0, 0)
    assert stored(cursor, made[2].pk)["args"] == "changed"


def test_a_new_job_is_one_gc_tracked_object_until_saved_and_keeps_django_state(models,
                                                                             cursor) -> None:
    import gc
    import pickle

    jobs = [models.BalsamJob(name=f"t{i}", application="a") for i in range(4)]
    assert not any(gc.is_tracked(j.__dict__) or "_state" in j.__dict__ for j in jobs)
    assert jobs[0]._state.adding and jobs[0]._state.db is None  # made on first use
    copied = pickle.loads(pickle.dumps(jobs[1]))  # Django's __getstate__ needs a ModelState
    assert copied.name == "t1" and copied.pk == jobs[1].pk and copied._state.adding
    models.BalsamJob.objects.bulk_create(jobs)
    assert all(gc.is_tracked(j.__dict__) for j in jobs)  # saved: tracked again
    for j in jobs:  # with a ModelState made before the insert (0) or after it (1, 2, 3)
        assert not j._state.adding and j._state.db == "default"
    loaded = pickle.loads(pickle.dumps(jobs[3]))
    assert not loaded._state.adding and loaded._state.db == "default"
    fresh = models.BalsamJob(name="again")
    with pytest.raises(ValueError, match="already saved"):  # no ModelState made before
        models.BalsamJob.objects.bulk_create([fresh, models.BalsamJob(name="x")] + jobs[1:2])
    with pytest.raises(ValueError, match="already saved"):
        models.BalsamJob.objects.bulk_create([models.BalsamJob.objects.get(pk=jobs[0].pk)])
    assert counts(cursor) == (4, 0, 0)
    single = models.BalsamJob(name="single", application="a")
    single.save()
    assert gc.is_tracked(single.__dict__) and not single._state.adding
    assert counts(cursor) == (5, 0, 0)


def test_a_reference_cycle_through_a_new_job_is_collected(models) -> None:
    import gc
    import weakref

    job = models.BalsamJob(name="cyclic")
    job.me = [job]  # the list re-tracks the job's dict
    job_ref = weakref.ref(job)
    del job
    gc.collect()
    assert job_ref() is None


def test_new_job_ids_are_unique_random_version4_uuids() -> None:
    ids = [bulk.uuid4() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(type(u) is uuid.UUID and u.version == 4 for u in ids[:100])
    assert len({u.int >> 100 for u in ids}) > 10_000  # the high bits vary: not a counter


def test_a_forked_child_never_hands_out_the_parents_pooled_ids() -> None:
    bulk.uuid4()  # the pool is full of ids the parent will hand out next
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write_end, b"".join(bulk.uuid4().bytes for _ in range(50)))
        os._exit(0)
    os.close(write_end)
    data = b""
    while len(data) < 800:
        chunk = os.read(read_end, 800)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    child = {data[i:i + 16] for i in range(0, len(data), 16)}
    assert len(child) == 50
    assert not child & {bulk.uuid4().bytes for _ in range(50)}


def test_bulk_create_refuses_django_options_that_would_skip_checks(db):
    from balsam.core.models import BalsamJob

    with pytest.raises(TypeError, match="does not support ignore_conflicts"):
        BalsamJob.objects.bulk_create([BalsamJob(name="a")], ignore_conflicts=True)
    assert BalsamJob.objects.count() == 0
