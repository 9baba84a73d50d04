"""The ORM on either PostgreSQL driver (psycopg2, psycopg 3), chosen by ``BALSAM_DB_DRIVER``.

Django alone would take psycopg 3 whenever it is installed; these tests run the ORM paths that
broke then (COPY in ``bulk_create``, ``dag.add_job`` with parents) in fresh processes under each
driver, and COPY on bare cursors of both drivers.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional

import pytest

from balsam.core import bulk, schema
from balsam.db.connect import connect, connection_params

psycopg = pytest.importorskip("psycopg", reason="needs psycopg 3 (test extra)")

ORM_SCRIPT = """
from balsam.core.models import BalsamJob, ApplicationDefinition
from balsam.launcher import dag
from django.db import connection
ApplicationDefinition.objects.get_or_create(name="a", defaults={"executable": "true"})
BalsamJob.objects.bulk_create([BalsamJob(name=f"j{i}", workflow="drv", application="a")
                               for i in range(30)])
parent = dag.add_job(name="p", workflow="drv", application="a")
child = dag.add_job(name="c", workflow="drv", application="a", parents=[parent])
dag.add_dependency(BalsamJob.objects.get(name="j0"), child)
print(connection.Database.__name__, BalsamJob.objects.filter(workflow="drv").count(),
      sorted(j.name for j in child.get_parents()))
"""


def run_python(code: str, db: Optional[str], driver: Optional[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "BALSAM_DB_DRIVER"}
    if db is not None:
        env["BALSAM_DB_PATH"] = db
    if driver is not None:
        env["BALSAM_DB_DRIVER"] = driver
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.parametrize("driver, module", [("psycopg2", "psycopg2"), ("psycopg", "psycopg"),
                                            ("psycopg3", "psycopg")])
def test_the_orm_bulk_creates_and_links_jobs_on_the_driver_named(db, driver, module):
    proc = run_python(ORM_SCRIPT, db, driver)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(maxsplit=2) == [module, "32", "['j0', 'p']\n"]


def test_without_the_variable_the_orm_uses_psycopg2_although_psycopg_3_is_installed(db):
    proc = run_python("import balsam.core.models\nfrom django.db import connection\n"
                      "print(connection.Database.__name__)", db, None)
    assert (proc.returncode, proc.stdout.strip()) == (0, "psycopg2"), proc.stderr


def test_importing_the_models_loads_no_driver():
    proc = run_python("import sys, balsam.core.models\n"
                      "print('django.db.backends.postgresql.base' in sys.modules)", None, "bogus")
    assert (proc.returncode, proc.stdout.strip()) == (0, "False"), proc.stderr


@pytest.mark.parametrize("value, says", [
    ("bogus", "BALSAM_DB_DRIVER='bogus' is not a PostgreSQL driver Balsam knows: use one of "
              "psycopg2, psycopg"),
    ("psycopg", "BALSAM_DB_DRIVER=psycopg but psycopg 3 is not installed"),
])
def test_an_unusable_driver_is_one_balsam_error_at_the_first_query(db, value, says):
    hide = "import sys; sys.modules['psycopg'] = None\n" if value == "psycopg" else ""
    code = hide + ("from balsam.core.models import BalsamJob\nfrom balsam.errors import BalsamError\n"
                   "try:\n    BalsamJob.objects.count()\n"
                   "except BalsamError as exc:\n    print(type(exc).__name__, exc)\n")
    proc = run_python(code, db, value)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("DriverError " + says)


def test_the_driver_cannot_change_once_the_orm_has_loaded_one(db):
    code = ("import os\nfrom balsam.core.models import BalsamJob\nBalsamJob.objects.count()\n"
            "os.environ['BALSAM_DB_DRIVER'] = 'psycopg'\n"
            "from balsam.db import driver\nfrom balsam.errors import BalsamError\n"
            "try:\n    driver.load_django_backend()\n"
            "except BalsamError as exc:\n    print(exc)\n")
    proc = run_python(code, db, "psycopg2")
    assert proc.returncode == 0, proc.stderr
    assert "already loaded with psycopg2" in proc.stdout


def bare_connection(db: str, driver: str):
    if driver == "psycopg2":
        return connect(db)
    return psycopg.connect(**connection_params(db), cursor_factory=psycopg.ClientCursor)


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_copy_on_a_bare_cursor_of_either_driver(db, driver):
    good = [schema.new_job_row({"name": f"g{i}", "workflow": "bare", "application": "a"}) for i in range(3)]
    bad = [schema.new_job_row({"name": f"b{i}", "workflow": "bare", "application": "a"}) for i in range(5000)]
    bad[4500]["num_nodes"] = "many"  # in the third chunk, after two were sent
    conn = bare_connection(db, driver)
    try:
        with conn.cursor() as cur:
            assert bulk.copy_jobs(cur, good) == 3
        conn.commit()
        with conn.cursor() as cur, pytest.raises(schema.FieldError, match="num_nodes"):
            bulk.copy_jobs(cur, bad)
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute(f"SELECT name FROM {schema.JOB_TABLE} WHERE workflow = 'bare' ORDER BY name")
            assert [r[0] for r in cur.fetchall()] == ["g0", "g1", "g2"]
    finally:
        conn.close()


def test_a_driver_bound_by_an_earlier_django_import_is_not_silently_mixed(db):
    code = ("import django.db.backends.postgresql.psycopg_any  # binds psycopg 3, as Django does\n"
            "from balsam.core.models import BalsamJob\nfrom balsam.errors import BalsamError\n"
            "try:\n    BalsamJob.objects.count()\n"
            "except BalsamError as exc:\n    print(exc)\n")
    proc = run_python(code, db, "psycopg2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("BALSAM_DB_DRIVER=psycopg2 but Django's PostgreSQL backend was "
                                  "already loaded with psycopg:")
