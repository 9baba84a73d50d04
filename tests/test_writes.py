"""The write layer (``balsam.core.writes``) and ``balsam wait``'s reads (``balsam.core.reads.waits``)
on a bare DB-API cursor, the way the CLI calls them (psycopg2, or psycopg 3 under
``BALSAM_DB_DRIVER=psycopg``)."""
from __future__ import annotations

import pytest

from balsam.core import schema
from balsam.core.reads import apps as app_reads
from balsam.core.reads import waits
from balsam.core.reads.jobs import job_detail
from balsam.core.writes import apps as app_writes
from balsam.core.writes import jobs as job_writes
from balsam.errors import BalsamError, NotFound

APP = {"name": "hello", "description": "", "executable": "echo", "preprocess": "",
       "envscript": "", "postprocess": ""}


def new_job(cur, **values) -> str:
    row = schema.new_job_row(dict({"name": "j", "workflow": "w", "application": "hello"}, **values))
    job_writes.insert_job(cur, row)
    return str(row["job_id"])


def test_create_app_returns_its_row_and_refuses_a_taken_name(cursor):
    app = app_writes.create_app(cursor, APP)
    assert list(app)[0] == "id" and app["name"] == "hello" and app["executable"] == "echo"
    with pytest.raises(BalsamError, match="an application named 'hello' already exists"):
        app_writes.create_app(cursor, dict(APP, executable="cat"))
    app_writes.ensure_app(cursor, dict(APP, executable="cat"))  # exists: left as it is
    assert app_reads.app_defaults(cursor, ["hello", "nope"])["hello"]["executable"] == "echo"


def test_rename_app_renames_it_in_its_jobs_and_keeps_names_unique(cursor):
    hid = app_writes.create_app(cursor, APP)["id"]
    app_writes.create_app(cursor, dict(APP, name="other"))
    job_id = new_job(cursor)
    with pytest.raises(BalsamError, match="'other' already exists"):
        app_writes.rename_app(cursor, hid, "hello", "other")
    assert app_writes.rename_app(cursor, hid, "hello", "greeter") == 1
    assert job_detail(cursor, job_id)["application"] == "greeter"
    assert app_reads.find_app(cursor, str(hid))["name"] == "greeter"
    assert app_reads.find_app(cursor, "greeter")["id"] == hid
    assert app_reads.app_uses(cursor, ["greeter", "other"]) == [("greeter", 1)]
    app_writes.delete_apps(cursor, [hid])
    with pytest.raises(NotFound):
        app_reads.find_app(cursor, "greeter")


def test_field_writers_refuse_what_has_its_own_writer(cursor):
    app_writes.create_app(cursor, APP)
    job_id = new_job(cursor)
    with pytest.raises(ValueError):
        job_writes.set_job_field(cursor, job_id, "state", "READY")  # lifecycle writes states
    with pytest.raises(ValueError):
        app_writes.set_app_field(cursor, 1, "name", "x")  # rename_app renames jobs too
    assert job_writes.set_job_field(cursor, job_id, "data", {"a": 1}) == '{"a": 1}'
    assert job_detail(cursor, job_id)["data"] == {"a": 1}


def test_lock_jobs_returns_the_ids_that_exist(cursor):
    app_writes.create_app(cursor, APP)
    job_id = new_job(cursor)
    missing = "00000000-0000-0000-0000-000000000000"
    assert job_writes.lock_jobs(cursor, [job_id, missing]) == {job_id}


def test_a_wait_selection_of_ids_counts_their_states(cursor):
    app_writes.create_app(cursor, APP)
    ids = [new_job(cursor, name=f"j{i}") for i in range(3)]
    new_job(cursor, name="not selected")
    sel = waits.select_jobs(cursor, ids[:1] + [i[:8] for i in ids[1:]], None, None, None)
    assert sorted(sel.ids) == sorted(ids) and sel.expected == 3
    assert waits.count_states(cursor, sel) == {"CREATED": 3}
    with pytest.raises(NotFound, match="1 job id\\(s\\) match no job"):
        cursor.execute(f"DROP TABLE IF EXISTS {waits.IDS_TABLE}")
        waits.select_jobs(cursor, ["00000000-0000-0000-0000-000000000000"], None, None, None)
