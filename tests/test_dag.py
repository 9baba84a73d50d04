"""The classic Python API ``balsam.launcher.dag`` against a real PostgreSQL: lazy module
attributes, adding and cloning jobs, dependencies, kill, workflow templates, apps, and many
processes adding jobs at once."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from balsam.errors import BalsamError, NotFound


@pytest.fixture
def models(db):
    from balsam.core import models as m

    return m


@pytest.fixture
def dag(models, monkeypatch):
    """The dag module with an empty DB, outside a job (no BALSAM_* job variables)."""
    for name in ("BALSAM_JOB_ID", "BALSAM_JOB_TIMEOUT", "BALSAM_JOB_ERROR", "BALSAM_LAUNCHER_NODES"):
        monkeypatch.delenv(name, raising=False)
    from balsam.launcher import dag as d

    d.add_app("sim", "/bin/echo")
    return d


@pytest.fixture
def in_job(dag, models, monkeypatch):
    """Run the test inside a job: a saved job with a parent and a queued launch, named by
    BALSAM_JOB_ID; returns it."""
    launch = models.QueuedLaunch.objects.create(scheduler_id=77)
    grand = dag.add_job("grand", "wf", "sim")
    job = dag.add_job("current", "wf", "sim", args="--in x", num_nodes=2, environ_vars="A=1",
                      data={"k": [1, 2]}, user_workdir="/tmp/somewhere", parents=[grand],
                      queued_launch=launch, post_error_handler=True)
    models.BalsamJob.objects.filter(pk=job.pk).update(lock="held by launcher 3")
    job.update_state("RUN_DONE", "ran")
    monkeypatch.setenv("BALSAM_JOB_ID", str(job.pk))
    return job


def row_count(models, **filters):
    return models.BalsamJob.objects.filter(**filters).count()


# ---- importing and module attributes --------------------------------------------------------------

def test_importing_dag_loads_no_django_and_outside_a_job_the_attributes_are_empty(tmp_path):
    script = textwrap.dedent("""
        import os, sys
        for k in [k for k in os.environ if k.startswith("BALSAM_")]:
            del os.environ[k]
        from balsam.launcher import dag, futures
        assert "django" not in sys.modules and "balsam.core.models" not in sys.modules
        print(repr(dag.JOB_ID), dag.current_job, dag.parents, dag.children, dag.TIMEOUT,
              dag.ERROR, repr(dag.LAUNCHER_NODES))
        print("django" in sys.modules)
        print(dag.BalsamJob.__name__, dag.history_line.__name__, "django" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["'' None None None False False 1", "False",
                                        "BalsamJob history_line True"]


def test_inside_a_job_the_attributes_describe_it(dag, models, in_job, monkeypatch):
    monkeypatch.setenv("BALSAM_JOB_TIMEOUT", "TRUE")
    monkeypatch.setenv("BALSAM_JOB_ERROR", "false")
    monkeypatch.setenv("BALSAM_LAUNCHER_NODES", "4")
    assert dag.JOB_ID == in_job.pk
    current = dag.current_job
    assert isinstance(current, models.BalsamJob) and current.pk == in_job.pk
    assert dag.current_job is current  # one object: edit it and save it
    assert [j.name for j in dag.parents] == ["grand"]
    child = dag.add_job("kid", "wf", "sim", parents=[current])
    assert [j.pk for j in dag.children] == [child.pk]  # a fresh queryset on every access
    assert (dag.TIMEOUT, dag.ERROR, dag.LAUNCHER_NODES) == (True, False, 4)
    current.args = "--edited"
    current.save(update_fields=["args"])
    assert models.BalsamJob.objects.get(pk=in_job.pk).args == "--edited"
    names: dict = {}
    exec("from balsam.launcher.dag import *", names)  # the classic star import works
    assert names["current_job"] is current and names["JOB_ID"] == in_job.pk and names["TIMEOUT"]
    assert callable(names["add_job"]) and names["LAUNCHER_NODES"] == 4


def test_a_job_id_that_no_longer_exists_or_is_malformed_is_a_clear_error(dag, monkeypatch):
    gone = uuid.uuid4()
    monkeypatch.setenv("BALSAM_JOB_ID", str(gone))
    with pytest.raises(NotFound, match=f"BALSAM_JOB_ID names job {gone}, which is not in the"):
        dag.current_job  # noqa: B018
    monkeypatch.setenv("BALSAM_JOB_ID", "nope")
    with pytest.raises(BalsamError, match="BALSAM_JOB_ID='nope' is not a job id"):
        dag.JOB_ID  # noqa: B018
    monkeypatch.setenv("BALSAM_LAUNCHER_NODES", "two")
    with pytest.raises(BalsamError, match="BALSAM_LAUNCHER_NODES='two' is not a whole number"):
        dag.LAUNCHER_NODES  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        dag.nothing  # noqa: B018


# ---- add_job -------------------------------------------------------------------------------------

def test_add_job_saves_a_job_with_the_model_defaults(dag, models):
    job = dag.add_job("a", "wf", "sim", args="-n 3", environ_vars={"X": 1, "Y": "b=c"})
    saved = models.BalsamJob.objects.get(pk=job.pk)
    assert (saved.name, saved.workflow, saved.application, saved.args) == ("a", "wf", "sim", "-n 3")
    assert saved.cpu_affinity == "none" and saved.state == "CREATED"
    assert saved.environ_vars == "X=1:Y=b=c"
    assert saved.queued_launch_id is None and saved.data == {}
    text = dag.add_job("b", "wf", "sim", environ_vars="P=1:Q=2", wall_time_minutes="5", data={"x": 1})
    saved = models.BalsamJob.objects.get(pk=text.pk)
    assert (saved.environ_vars, saved.wall_time_minutes, saved.data) == ("P=1:Q=2", 5, {"x": 1})


def test_add_job_refuses_unknown_fields_bad_values_and_missing_apps_and_writes_nothing(dag, models):
    with pytest.raises(ValueError, match="unknown job field.*: colour, sizee"):
        dag.add_job("a", "wf", "sim", sizee=3, colour="red")
    with pytest.raises(ValueError, match="num_nodes must be >= 1"):
        dag.add_job("a", "wf", "sim", num_nodes=0)
    with pytest.raises(ValueError, match="environ_vars entry"):
        dag.add_job("a", "wf", "sim", environ_vars={"A": "x:y"})
    with pytest.raises(ValueError, match="not of the form VAR=value"):
        dag.add_job("a", "wf", "sim", environ_vars="A=1:oops")
    with pytest.raises(ValueError, match="cannot be created RUNNING"):
        dag.add_job("a", "wf", "sim", state="RUNNING")
    with pytest.raises(models.NoApplication, match="application 'nosuch' does not exist"):
        dag.add_job("a", "wf", "nosuch")
    with pytest.raises(models.InvalidParentsError, match="does not exist"):
        dag.add_job("a", "wf", "sim", parents=[uuid.uuid4()])
    assert row_count(models) == 0


def test_add_job_with_parents_and_without_saving(dag, models):
    p1 = dag.add_job("p1", "wf", "sim")
    p2 = dag.add_job("p2", "wf", "sim")
    child = dag.add_job("c", "wf", "sim", parents=[p1, str(p2.pk)])
    assert sorted(models.BalsamJob.objects.get(pk=child.pk).get_parents()
                  .values_list("name", flat=True)) == ["p1", "p2"]
    unsaved = dag.add_job("u", "wf", "sim", save=False, parents=[p1])
    assert unsaved.get_parents_by_id() == [str(p1.pk)] and row_count(models, name="u") == 0
    unsaved.save()
    assert models.BalsamJob.objects.get(name="u").get_parents_by_id() == [str(p1.pk)]


def test_add_job_inside_a_job_inherits_its_queued_launch(dag, models, in_job):
    job = dag.add_job("x", "wf", "sim")
    assert models.BalsamJob.objects.get(pk=job.pk).queued_launch_id == in_job.queued_launch_id
    other = dag.add_job("y", "wf", "sim", queued_launch=None)
    assert models.BalsamJob.objects.get(pk=other.pk).queued_launch_id is None


# ---- dependencies and kill -----------------------------------------------------------------------

def test_add_dependency_accepts_jobs_ids_text_and_one_row_querysets(dag, models):
    a, b, c, d = (dag.add_job(n, "wf", "sim") for n in "abcd")
    dag.add_dependency(a, b)
    dag.add_dependency(b.pk, str(c.pk))
    dag.add_dependency(models.BalsamJob.objects.filter(name="c"), d)
    assert models.BalsamJob.objects.get(pk=d.pk).get_parents_by_id() == [str(c.pk)]
    assert [j.name for j in a.get_children()] == ["b"]
    assert [j.name for j in c.get_parents()] == ["b"]
    with pytest.raises(ValueError, match="exactly one job, not several"):
        dag.add_dependency(models.BalsamJob.objects.all(), d)
    with pytest.raises(ValueError, match="exactly one job, not none"):
        dag.add_dependency(models.BalsamJob.objects.filter(name="zz"), d)


def test_add_dependency_rejects_cycles_duplicates_self_edges_and_started_children(dag, models):
    a, b, c = (dag.add_job(n, "wf", "sim") for n in "abc")
    dag.add_dependency(a, b)
    dag.add_dependency(b, c)
    with pytest.raises(models.InvalidParentsError, match="would create a cycle"):
        dag.add_dependency(c, a)
    with pytest.raises(models.InvalidParentsError, match="already depends"):
        dag.add_dependency(a, b)
    with pytest.raises(models.InvalidParentsError, match="cannot depend on itself"):
        dag.add_dependency(a, a)
    c.update_state("READY")
    with pytest.raises(models.InvalidParentsError, match="already READY"):
        dag.add_dependency(a, c)
    assert models.JobDependency.objects.count() == 2


def test_kill_is_recursive_by_default_and_updates_the_job_object(dag, models):
    root = dag.add_job("root", "wf", "sim")
    kid = dag.add_job("kid", "wf", "sim", parents=[root])
    grandkid = dag.add_job("grandkid", "wf", "sim", parents=[kid])
    other = dag.add_job("other", "wf", "sim")
    killed = dag.kill(root)
    assert sorted(killed) == sorted(str(j.pk) for j in (root, kid, grandkid))
    assert root.state == "USER_KILLED"
    states = dict(models.BalsamJob.objects.values_list("name", "state"))
    assert states == {"root": "USER_KILLED", "kid": "USER_KILLED", "grandkid": "USER_KILLED",
                      "other": "CREATED"}
    alone = dag.add_job("alone", "wf", "sim", parents=[other])
    assert dag.kill(str(other.pk), recursive=False) == [str(other.pk)]
    assert models.BalsamJob.objects.get(pk=alone.pk).state == "CREATED"
    with pytest.raises(NotFound):
        dag.kill(uuid.uuid4())


# ---- clone and spawn_child -----------------------------------------------------------------------

def test_clone_is_an_unsaved_copy_with_its_parents(dag, models, in_job):
    copy = dag.clone(in_job, name="copy", args="--other")
    assert copy.pk != in_job.pk and row_count(models, name="copy") == 0
    assert (copy.name, copy.args, copy.num_nodes, copy.environ_vars, copy.data) == \
        ("copy", "--other", 2, "A=1", {"k": [1, 2]})
    assert (copy.state, copy.lock, copy.user_workdir) == ("CREATED", "", "")
    assert copy.post_error_handler is True and copy.queued_launch_id == in_job.queued_launch_id
    assert copy.get_parents_by_id() == in_job.get_parents_by_id()
    copy.data["k"].append(3)
    assert in_job.data == {"k": [1, 2]}  # a deep copy
    with pytest.raises(ValueError, match="unknown job field.*: clone"):
        dag.clone(in_job, clone=True)


def test_spawn_child_saves_a_copy_of_the_current_job_below_it(dag, models, in_job):
    child = dag.spawn_child(name="spawned", args="--part 2", data={"part": 2})
    saved = models.BalsamJob.objects.get(pk=child.pk)
    assert (saved.name, saved.workflow, saved.args, saved.num_nodes, saved.state) == \
        ("spawned", "wf", "--part 2", 2, "CREATED")
    assert saved.data == {"part": 2, "spawned_by": str(in_job.pk)}
    assert saved.queued_launch_id == in_job.queued_launch_id and saved.lock == ""
    assert saved.user_workdir == ""
    grand = models.BalsamJob.objects.get(name="grand")
    assert saved.get_parents_by_id() == [str(grand.pk), str(in_job.pk)]
    inherited = dag.spawn_child(name="plain", workflow="elsewhere")
    assert models.BalsamJob.objects.get(pk=inherited.pk).data == {"k": [1, 2],
                                                                  "spawned_by": str(in_job.pk)}
    assert inherited.workflow == "elsewhere"
    with pytest.raises(ValueError, match="unknown job field.*: bogus"):
        dag.spawn_child(name="bad", bogus=1)
    with pytest.raises(models.NoApplication):
        dag.spawn_child(name="bad", application="nosuch")
    assert row_count(models, name="bad") == 0


def test_spawn_child_records_spawned_by_in_the_childs_history_as_classic(dag, models, in_job):
    from django.db import connection

    from balsam.core.reads import jobs as reads

    child = dag.spawn_child(name="kid")
    saved = models.BalsamJob.objects.get(pk=child.pk)
    note = f"spawned by [current | {str(in_job.pk)[:8]}]"
    assert saved.state_history.lstrip(" \n").split("] ", 1)[1] == note
    assert saved.state_history.split("\n")[1].split(" ")[2] == "CREATED]"
    assert saved.get_recent_state_str().endswith(f"CREATED] {note}")
    assert saved.data["spawned_by"] == str(in_job.pk)
    with connection.cursor() as cur:  # `balsam ls --history` renders the same text
        row = {"job_id": saved.pk, "created_at": saved.created_at}
        assert reads.histories(cur, [row]) == {str(saved.pk): saved.state_history}
    assert "spawned by" not in in_job.state_history


def test_submit_records_and_submits_a_batch_job_as_submit_launch_does(dag, models, db):
    from balsam.platform import schedulers

    launch = dag.submit(project="P", queue="debug", nodes=1, wall_minutes=5, job_mode="serial")
    try:
        assert isinstance(launch, models.QueuedLaunch) and launch.state == "submitted"
        assert (launch.project, launch.queue, launch.nodes, launch.wall_minutes,
                launch.job_mode) == ("P", "debug", 1, 5, "serial")
    finally:
        schedulers.get("local", os.path.join(db, "qsubmit")).cancel(launch.scheduler_id)
    with pytest.raises(BalsamError, match="needs a queue"):
        dag.submit()
    with pytest.raises(BalsamError, match="matches no job"):
        dag.submit(queue="debug", wf_filter="no-such-workflow")
    assert models.QueuedLaunch.objects.count() == 1


def test_spawn_child_outside_a_job_is_an_error(dag):
    with pytest.raises(BalsamError, match="only inside a Balsam job"):
        dag.spawn_child(name="x")


# ---- workflow templates ---------------------------------------------------------------------------

def test_wf_from_template_copies_jobs_and_edges_by_name(dag, models):
    outside = dag.add_job("outside", "other", "sim")
    a = dag.add_job("a", "tmpl", "sim", args="--a", parents=[outside])
    b = dag.add_job("b", "tmpl", "sim", parents=[a])
    dag.add_job("c", "tmpl", "sim", parents=[a, b])
    a.update_state("JOB_FINISHED")
    new = dag.wf_from_template("tmpl", "run2", b={"args": "--seed 2"})
    jobs = {j.name: j for j in new}
    assert sorted(jobs) == ["a", "b", "c"]
    assert all(j.state == "CREATED" and j.workflow == "run2" for j in jobs.values())
    assert (jobs["a"].args, jobs["b"].args) == ("--a", "--seed 2")
    assert jobs["a"].get_parents_by_id() == [str(outside.pk)]
    assert jobs["b"].get_parents_by_id() == [str(jobs["a"].pk)]
    assert jobs["c"].get_parents_by_id() == [str(jobs["a"].pk), str(jobs["b"].pk)]
    assert row_count(models, workflow="tmpl") == 3  # the template is untouched


def test_wf_from_template_refusals_write_nothing(dag, models):
    with pytest.raises(ValueError, match="workflow 'empty' has no jobs to copy"):
        dag.wf_from_template("empty", "x")
    dag.add_job("a", "tmpl", "sim")
    dag.add_job("a", "dup", "sim")
    dag.add_job("a", "dup", "sim")
    dag.add_job("z", "taken", "sim")
    with pytest.raises(ValueError, match="workflow 'taken' already has jobs"):
        dag.wf_from_template("tmpl", "taken")
    with pytest.raises(ValueError, match="job names repeat in workflow 'dup': a"):
        dag.wf_from_template("dup", "x")
    with pytest.raises(ValueError, match="no job named q in workflow 'tmpl'"):
        dag.wf_from_template("tmpl", "x", q={"args": "1"})
    with pytest.raises(ValueError, match="unknown job field"):
        dag.wf_from_template("tmpl", "x", a={"colour": "red"})
    with pytest.raises(ValueError, match="dict of field values other than workflow"):
        dag.wf_from_template("tmpl", "x", a={"workflow": "y"})
    assert row_count(models, workflow="x") == 0


# ---- apps and databases ----------------------------------------------------------------------------

def test_add_app_creates_then_updates_and_checks_executables(dag, models, tmp_path):
    app = dag.add_app("tool", "/bin/true --x", description="first")
    again = dag.add_app("tool", "/bin/false", postprocess="/bin/post")
    assert again.pk == app.pk
    saved = models.ApplicationDefinition.objects.get(name="tool")
    assert (saved.executable, saved.description, saved.postprocess) == ("/bin/false", "", "/bin/post")
    assert [a.name for a in dag.get_apps()] == ["sim", "tool"]
    with pytest.raises(ValueError, match="'/no/such/exe' is not an executable file"):
        dag.add_app("bad", "/no/such/exe --flag", checkexe=True)
    dag.add_app("good", "true --flag", checkexe=True)
    with pytest.raises(ValueError, match="needs a name and an executable"):
        dag.add_app("empty", " ")
    assert not models.ApplicationDefinition.objects.filter(name__in=["bad", "empty"]).exists()


def test_database_helpers_report_the_active_and_known_databases(dag, db, capsys):
    from balsam.db import index

    index.register(db)
    assert dag.get_active_database() == db
    assert os.path.realpath(db) in dag.get_database_paths()
    out = capsys.readouterr().out
    assert f"Active Balsam DB: {db}\n" in out and "Found " in out
    assert dag.get_database_paths(verbose=False) == index.read()
    assert capsys.readouterr().out == ""


# ---- many writers at once ------------------------------------------------------------------------

RANK_SCRIPT = """
import os, sys, time
from balsam.launcher import dag
rank, go = int(sys.argv[1]), sys.argv[2]
root = dag.current_job  # resolved before the start signal: all ranks then write together
open(f"{go}-ready-{rank}", "w").close()
end = time.monotonic() + 600  # bounded: a test cut short never creates the go file
while not os.path.exists(go) and time.monotonic() < end:
    time.sleep(0.01)
previous = None
for i in range(50):
    parents = [root] + ([previous] if previous is not None else [])
    previous = dag.add_job(f"r{rank}-{i}", "fan", "sim", parents=parents, data={"rank": rank})
print("ok", rank)
"""


@pytest.mark.slow
def test_sixteen_processes_adding_fifty_jobs_each_with_parents_all_succeed(dag, models, tmp_path):
    launch = models.QueuedLaunch.objects.create(scheduler_id=5)
    root = dag.add_job("root", "fan", "sim", queued_launch=launch)
    go = tmp_path / "go"
    env = dict(os.environ, BALSAM_JOB_ID=str(root.pk))
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(rank), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for rank in range(16)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go-ready-*"))) < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    results = [p.communicate(timeout=240) for p in procs]
    for rank, (proc, (out, err)) in enumerate(zip(procs, results)):
        assert proc.returncode == 0 and out.strip() == f"ok {rank}", err
    assert row_count(models, workflow="fan") == 1 + 16 * 50
    assert row_count(models, workflow="fan", queued_launch_id=launch.pk) == 1 + 16 * 50
    assert models.JobDependency.objects.filter(parent_id=root.pk).count() == 16 * 50
    assert models.JobDependency.objects.count() == 16 * 50 + 16 * 49
    last = models.BalsamJob.objects.get(name="r7-49")
    assert sorted(last.get_parents().values_list("name", flat=True)) == ["r7-48", "root"]
