"""The newer API (balsam.api) over the classic tables: jobs created with either dialect are
visible and editable with the other; batch jobs become service rows; errors are clear and
write nothing."""
from __future__ import annotations

import os
import shutil

import pytest
from conftest import run_balsam

from balsam.api import App, BatchJob, Job, Site, sites
from balsam.api.jobs import JobStateRefused
from balsam.api.names import TranslationError
from balsam.core import schema
from balsam.errors import BalsamError, NotFound
from balsam.site import ParameterError

DEMO = '''from balsam.site import ApplicationDefinition


class Hello(ApplicationDefinition):
    """Says hello."""
    command_template = "echo hello {{ name }}"

    def preprocess(self):
        print("Preprocessing!")
        self.job.state = "PREPROCESSED"


class Sim(ApplicationDefinition):
    command_template = "sim {{ n }}"
    parameters = {"n": {"default": 4}}

    def handle_error(self):
        self.job.state = "RESTART_READY"
'''


def make_site(db: str, **files: str) -> str:
    apps = os.path.join(db, "apps")
    shutil.rmtree(apps, ignore_errors=True)
    os.makedirs(apps)
    for name, text in files.items():
        with open(os.path.join(apps, f"{name}.py"), "w") as fh:
            fh.write(text)
    sites.forget_apps()
    return db


@pytest.fixture
def site(db):
    yield make_site(db, demo=DEMO)
    shutil.rmtree(os.path.join(db, "apps"), ignore_errors=True)
    sites.forget_apps()


def job_rows(cur) -> list[dict]:
    cur.execute(f"SELECT * FROM {schema.JOB_TABLE} ORDER BY user_workdir")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def test_bulk_created_jobs_are_classic_rows_with_the_rendered_command(site, cursor):
    jobs = [Job(site_path=site, app_name="demo.Hello", workdir=f"test/{n}",
                parameters={"name": f"world {n} out of 10!"}) for n in range(3)]
    Job.objects.bulk_create(jobs)
    rows = job_rows(cursor)
    assert [r["application"] for r in rows] == ["demo.Hello"] * 3
    assert rows[1]["args"] == "echo hello 'world 1 out of 10!'"
    assert rows[1]["user_workdir"] == os.path.join(site, "data", "test", "1")
    assert rows[1]["parameters"] == {"name": "world 1 out of 10!"}
    assert jobs[1].workdir == "test/1" and jobs[1].site_id == site
    cursor.execute(f"SELECT executable, preprocess, postprocess, parameters, source_hash "
                   f"FROM {schema.APP_TABLE} WHERE name = 'demo.Hello'")
    executable, pre, post, params, source_hash = cursor.fetchone()
    assert executable == "" and pre.endswith("-m balsam.api.hooks preprocess") and post == ""
    assert params == '{"name": null}' and len(source_hash) == 64


def test_parameter_errors_come_when_the_job_is_created_and_write_nothing(site, cursor):
    with pytest.raises(ParameterError, match="missing required parameter.*name"):
        Job(site_path=site, app_name="demo.Hello", workdir="a")
    with pytest.raises(ParameterError, match="unknown parameter.*colour"):
        Job(site_path=site, app_name="demo.Hello", workdir="a",
            parameters={"name": "x", "colour": "red"})
    with pytest.raises(NotFound, match="no ApplicationDefinition subclass 'Nope'"):
        Job(site_path=site, app_name="demo.Nope", workdir="a")
    with pytest.raises(TranslationError, match="workdir '../x' must be a relative path"):
        Job(site_path=site, app_name="demo.Hello", workdir="../x", parameters={"name": "x"})
    with pytest.raises(TranslationError, match="unknown Job field.*wall_time_minutes"):
        Job(site_path=site, app_name="demo.Hello", workdir="a", parameters={"name": "x"},
            wall_time_minutes=3)
    assert job_rows(cursor) == []


def test_a_classic_job_is_a_newer_job_and_edits_cross_both_ways(site, cursor):
    from balsam.core.models import ApplicationDefinition, BalsamJob

    ApplicationDefinition(name="classic", executable="/bin/true").save()
    classic = BalsamJob(name="c1", workflow="wf", application="classic", wall_time_minutes=5)
    classic.save()
    job = Job.objects.get(id=classic.pk)
    assert (job.app_name, job.wall_time_min, job.workdir) == ("classic", 5,
                                                              f"wf/c1_{str(classic.pk)[:8]}")
    job.data = {"from": "newer"}
    job.state = "RESET"  # newer name for a reset: classic CREATED
    job.save()
    classic.refresh_from_db()
    assert classic.data == {"from": "newer"} and classic.state == "CREATED"
    newer = Job.objects.create(site_path=site, app_name="demo.Sim", workdir="sim/1",
                               tags={"exp": "a"}, num_nodes=2, wall_time_min=9)
    row = BalsamJob.objects.get(pk=newer.id)
    assert (row.num_nodes, row.wall_time_minutes, row.args, row.post_error_handler) == (
        2, 9, "sim 4", True)
    row.update_state("FAILED", "from the classic side")
    newer.refresh_from_db()
    assert newer.state == "FAILED"
    with pytest.raises(TranslationError, match="BOGUS"):
        newer.state = "BOGUS"
    with pytest.raises(TranslationError, match="'app_name' cannot be set"):
        newer.app_name = "demo.Hello"
    newer.wall_time_min = 0
    with pytest.raises(TranslationError, match="wall_time_minutes must be >= 1"):
        newer.save()
    newer.refresh_from_db()
    newer.state = "RUNNING"
    with pytest.raises(JobStateRefused, match="RUNNING"):
        newer.save()


def test_the_manager_filters_by_tags_counts_updates_and_deletes(site):
    for n, exp in enumerate(["a", "a", "b"]):
        Job.objects.create(site_path=site, app_name="demo.Sim", workdir=f"s/{n}",
                           tags={"exp": exp, "n": str(n)}, parameters={"n": n})
    assert Job.objects.count(tags={"exp": "a"}) == 2
    assert [j.parameters["n"] for j in Job.objects.filter(tags={"exp": "a"})] == [0, 1]
    assert Job.objects.get(workdir="s/2").tags == {"exp": "b", "n": "2"}
    assert Job.objects.count(workdir__startswith="s/") == 3
    assert Job.objects.count(workdir__in=["s/0", "s/2"]) == 2
    assert Job.objects.filter(tags={"exp": "a"})[1].workdir == "s/1"
    assert Job.objects.filter(tags={"exp": "a"}).update(state="FAILED") == 2
    with pytest.raises(TranslationError, match="cannot update parameters"):
        Job.objects.filter(tags={"exp": "a"}).update(parameters={"n": 1})
    assert Job.objects.count(state="FAILED") == 2
    assert Job.objects.filter(state="FAILED").delete() == 2
    assert Job.objects.count() == 1
    with pytest.raises(TranslationError, match="cannot filter Jobs by 'colour'"):
        Job.objects.filter(colour="red")
    with pytest.raises(BalsamError, match="no job matches"):
        Job.objects.get(workdir="nope")


def test_parent_ids_are_classic_edges(site, cursor):
    parent = Job.objects.create(site_path=site, app_name="demo.Sim", workdir="p")
    children = [Job(site_path=site, app_name="demo.Sim", workdir=f"c/{n}",
                    parent_ids=[parent.id]) for n in range(2)]
    Job.objects.bulk_create(children)
    cursor.execute(f"SELECT parent_id, child_id FROM {schema.DEP_TABLE} ORDER BY id")
    assert cursor.fetchall() == [(parent.id, c.id) for c in children]
    assert Job.objects.get(workdir="c/1").parent_ids == [str(parent.id)]
    assert Job.objects.count(parent_ids=[parent.id]) == 2


def test_newer_jobs_show_in_the_classic_cli(site):
    Job.objects.create(site_path=site, app_name="demo.Sim", workdir="s/1")
    out = run_balsam("ls", "--verbose")
    assert out.returncode == 0, out.stderr
    assert "demo.Sim" in out.stdout and "sim 4" in out.stdout


def test_a_batch_job_is_a_pending_service_row_with_classic_names(site, cursor):
    bj = BatchJob.objects.create(site_id=site, num_nodes=1, wall_time_min=10, job_mode="serial",
                                 project="datascience", queue="local",
                                 optional_params={"--reservation": "r1"})
    cursor.execute(f"SELECT nodes, wall_minutes, job_mode, project, queue, sched_flags, state, "
                   f"from_balsam FROM {schema.QLAUNCH_TABLE}")
    assert cursor.fetchall() == [(1, 10, "serial", "datascience", "local", "--reservation r1",
                                  "pending-submission", True)]
    assert bj.state == "pending_submission" and bj.num_nodes == 1 and bj.scheduler_id == ""
    cursor.execute(f"UPDATE {schema.QLAUNCH_TABLE} SET state = 'running', scheduler_id = '42'")
    bj.refresh_from_db()
    assert (bj.state, bj.scheduler_id) == ("running", "42")
    assert BatchJob.objects.count(site_path=site, state="running") == 1


def test_bad_batch_jobs_are_refused_before_anything_is_written(site, cursor):
    for fields, message in (({"queue": "debug-cache-quad"}, "queue 'debug-cache-quad' is not"),
                            ({"queue": "local", "job_mode": "mixed"}, "job_mode must be"),
                            ({"queue": "local", "num_nodes": 0}, "num_nodes must be"),
                            ({"queue": "local", "filter_tags": {"a": 1}}, "filter_tags"),
                            ({"queue": "local", "nodes": 2}, "unknown BatchJob field")):
        with pytest.raises(TranslationError, match=message):
            BatchJob.objects.create(site_path=site, **fields)
    cursor.execute(f"SELECT count(*) FROM {schema.QLAUNCH_TABLE}")
    assert cursor.fetchone()[0] == 0


def test_apps_are_registered_and_a_broken_file_is_reported(site):
    make_site(site, demo=DEMO, broken="class X(:\n")
    found = App.objects.sync(site)
    assert sorted(found.apps) == ["demo.Hello", "demo.Sim"]
    assert list(found.errors.values()) == [
        f"{site}/apps/broken.py line 1: syntax error: invalid syntax"]
    assert App.objects.get(name="demo.Sim").parameters == {"n": 4}
    assert App.objects.get(name="demo.Hello").description == "Says hello."
    assert Site(site).site_id == site


def test_a_site_app_may_not_take_a_classic_apps_name(db):
    from balsam.core.models import ApplicationDefinition

    make_site(db, demo=DEMO)
    ApplicationDefinition(name="demo.Hello", executable="/bin/echo").save()
    with pytest.raises(BalsamError, match="taken by a classic app"):
        Job(site_path=db, app_name="demo.Hello", workdir="x", parameters={"name": "n"})


def test_newer_jobs_show_in_top_and_on_the_dashboard(site):
    from web_support import TOKEN, Client, web_server

    job = Job.objects.create(site_path=site, app_name="demo.Sim", workdir="s/1")
    os.makedirs(os.path.join(site, "data", "s", "1"))
    with open(os.path.join(site, "data", "s", "1", "job.out"), "w") as fh:
        fh.write("sim says hi\n")
    top = run_balsam("top", "--once")
    assert top.returncode == 0 and "CREATED" in top.stdout, top.stdout + top.stderr
    with web_server(site, "--token", TOKEN) as base:
        client = Client(base)
        client.login()
        status, body, _ = client.request(f"/jobs/{job.id}/")
    assert status == 200 and "demo.Sim" in body and "sim says hi" in body


def test_jobs_of_two_sites_in_one_process_each_go_to_their_own_database(site, restart_db,
                                                                        cursor):
    from balsam.db.connect import connect

    other = make_site(restart_db, demo=DEMO)
    try:
        here = Job(site_path=site, app_name="demo.Sim", workdir="mine")
        there = Job.objects.create(site_path=other, app_name="demo.Sim", workdir="theirs")
        here.save()  # created before the other site was used: still goes to its own
        assert (here.site_id, there.site_id) == (site, other)
        cursor.execute(f"SELECT user_workdir FROM {schema.JOB_TABLE}")
        assert cursor.fetchall() == [(os.path.join(site, "data", "mine"),)]
        conn = connect(other, autocommit=True)
        with conn, conn.cursor() as cur:
            cur.execute(f"SELECT user_workdir FROM {schema.JOB_TABLE}")
            assert cur.fetchall() == [(os.path.join(other, "data", "theirs"),)]
        conn.close()
    finally:
        shutil.rmtree(os.path.join(other, "apps"), ignore_errors=True)
        Site(site)
