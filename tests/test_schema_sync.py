"""The Django-free description of the tables (balsam.core.schema, bulk) agrees with the Django
models, the models agree with the shipped migration, and the database has what both describe."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from balsam.core import bulk, schema
from balsam.core.states import STATES

SYSTEM_FIELDS = {"job_id", "created_at", "tick", "queued_launch", "session", "state_since"}


@pytest.fixture(scope="module")
def models():
    from balsam.core import models as m

    return m


def _python_type(field) -> type:
    from django.db import models as dj

    for kind, py in ((dj.BooleanField, bool), (dj.IntegerField, int), (dj.TextField, str),
                     (dj.JSONField, dict)):
        if isinstance(field, kind):
            return py
    raise AssertionError(f"unexpected field type {type(field).__name__} for {field.name}")


def test_job_defaults_equal_the_model_fields_and_defaults(models):
    fields = [f for f in models.BalsamJob._meta.concrete_fields if f.name not in SYSTEM_FIELDS]
    assert [f.attname for f in fields] == list(schema.JOB_DEFAULTS)
    for f in fields:
        default = schema.JOB_DEFAULTS[f.attname]
        assert f.get_default() == default, f.attname
        assert type(default) is _python_type(f), f.attname
        assert not f.null, f.attname


def test_system_columns_are_the_model_fields_left_over(models):
    names = {f.attname for f in models.BalsamJob._meta.concrete_fields}
    assert names - set(schema.JOB_DEFAULTS) == set(schema.JOB_SYSTEM_COLUMNS) | set(
        schema.JOB_LEASE_COLUMNS) | set(schema.JOB_STATE_COLUMNS)
    assert models.BalsamJob._meta.pk.attname == "job_id"


def test_field_kind_sets_match_the_model(models):
    by_type: dict = {bool: set(), int: set(), str: set(), dict: set()}
    for f in models.BalsamJob._meta.concrete_fields:
        if f.attname in schema.JOB_DEFAULTS:
            by_type[_python_type(f)].add(f.attname)
    assert schema.BOOL_FIELDS == by_type[bool]
    assert schema.INT_FIELDS == by_type[int]
    assert schema.TEXT_FIELDS == by_type[str]
    assert schema.POSITIVE_FIELDS == schema.INT_FIELDS - {"coschedule_num_nodes", "max_retries",
                                                          "priority", "gpus_per_rank"}
    assert set(schema.INT_LOWER_BOUNDS) <= schema.INT_FIELDS - schema.POSITIVE_FIELDS
    assert schema._STATE_NAMES == set(STATES)


def test_app_defaults_equal_the_app_model(models):
    fields = [f for f in models.ApplicationDefinition._meta.concrete_fields if not f.primary_key]
    assert [f.attname for f in fields] == list(schema.APP_DEFAULTS)
    for f in fields:
        assert f.get_default() == schema.APP_DEFAULTS[f.attname], f.attname
        assert _python_type(f) is str


def test_table_names_are_the_models_tables(models):
    assert models.BalsamJob._meta.db_table == schema.JOB_TABLE
    assert models.ApplicationDefinition._meta.db_table == schema.APP_TABLE
    assert models.QueuedLaunch._meta.db_table == schema.QLAUNCH_TABLE
    assert models.JobEvent._meta.db_table == schema.EVENT_TABLE
    assert models.JobDependency._meta.db_table == schema.DEP_TABLE


def _columns(cursor, table):
    cursor.execute("SELECT column_name FROM information_schema.columns "
                   "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                   [table])
    return [r[0] for r in cursor.fetchall()]


def test_bulk_columns_are_the_job_table_columns_but_the_lease_and_state_time(cursor):
    columns = _columns(cursor, schema.JOB_TABLE)
    unset = set(schema.JOB_LEASE_COLUMNS) | set(schema.JOB_STATE_COLUMNS)
    assert len(bulk.COLUMNS) == len(set(bulk.COLUMNS))
    assert set(bulk.COLUMNS) | unset == set(columns)
    assert not set(bulk.COLUMNS) & unset
    assert set(schema.JOB_SYSTEM_COLUMNS) | set(schema.JOB_DEFAULTS) | unset == set(columns)


def test_every_model_table_has_the_model_columns(cursor, models):
    for model in (models.BalsamJob, models.ApplicationDefinition, models.QueuedLaunch,
                  models.JobEvent, models.JobDependency, models.LauncherSession, models.JobWake,
                  models.TransferItem, models.TransferBatch):
        assert set(_columns(cursor, model._meta.db_table)) == {
            f.column for f in model._meta.concrete_fields}, model.__name__


def test_the_database_itself_cascades_and_nulls_foreign_keys(cursor):
    cursor.execute("""
        SELECT con.conrelid::regclass::text, a.attname, con.confdeltype
        FROM pg_constraint con
        JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = ANY(con.conkey)
        WHERE con.contype = 'f' AND con.connamespace = 'public'::regnamespace""")
    actions = {(table, column): kind for table, column, kind in cursor.fetchall()}
    assert actions == {
        ("core_jobdependency", "parent_id"): "c",
        ("core_jobdependency", "child_id"): "c",
        # core_jobevent.job_id: no key; the job table's triggers delete a job's events with
        # it (migration 0018, tests/test_event_cascade.py)
        ("core_balsamjob", "queued_launch_id"): "n",
        ("core_balsamjob", "session_id"): "n",
        ("core_jobwake", "job_id"): "c",
        ("core_jobpayload", "job_id"): "c",  # function tasks' arguments and outcomes
        ("core_jobtransferslot", "job_id"): "c",  # site API jobs' filled transfer slots
        ("core_transferitem", "job_id"): "c",
        ("core_transferitem", "batch_id"): "n",
    }


def test_the_shipped_migration_matches_the_models(db):
    code = ("from balsam.db.django_setup import ensure_django; ensure_django(); "
            "from django.core.management import call_command; "
            "call_command('makemigrations', 'core', check=True, dry_run=True, verbosity=1)")
    env = dict(os.environ, BALSAM_DB_PATH=db)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No changes detected in app 'core'" in proc.stdout


def test_every_shipped_migration_is_applied(cursor):
    cursor.execute("SELECT name FROM django_migrations WHERE app = 'core' ORDER BY id")
    applied = [r[0] for r in cursor.fetchall()]
    import balsam.core.migrations as pkg

    shipped = sorted(n[:-3] for n in os.listdir(os.path.dirname(pkg.__file__))
                     if n[0].isdigit() and n.endswith(".py"))
    assert applied == shipped and shipped[0] == "0001_initial"
