"""The Django models against a real PostgreSQL: classic fields and methods, saving rules, state
events and history, dependencies, deletion and bulk creation."""
from __future__ import annotations

import datetime
import json
import os
import uuid

import pytest

from balsam.core.history import parse_history


@pytest.fixture
def models(db):
    """The models module, with an empty test DB active (BALSAM_DB_PATH set by the db fixture)."""
    from balsam.core import models as m

    return m


@pytest.fixture
def app(models):
    return models.ApplicationDefinition.objects.create(
        name="sim", executable="/bin/sim --fast", preprocess="/bin/pre arg",
        postprocess="/bin/post", envscript="", description="a simulator")


def make_job(models, **kwargs):
    kwargs.setdefault("name", "job")
    kwargs.setdefault("workflow", "wf")
    job = models.BalsamJob(**kwargs)
    job.save()
    return job


def events(models, job):
    return list(models.JobEvent.objects.filter(job_id=job.pk).order_by("id")
                .values_list("from_state", "to_state", "message"))


def db_state(models, job):
    return models.BalsamJob.objects.values_list("state", flat=True).get(pk=job.pk)


# ---- fields ---------------------------------------------------------------------------------

CLASSIC_DEFAULTS = {
    "workflow": "", "name": "", "description": "", "lock": "", "input_files": "",
    "stage_in_url": "", "stage_out_files": "", "stage_out_url": "", "wall_time_minutes": 1,
    "num_nodes": 1, "coschedule_num_nodes": 0, "ranks_per_node": 1, "cpu_affinity": "none",
    "threads_per_rank": 1, "threads_per_core": 1, "node_packing_count": 1, "environ_vars": "",
    "mpi_flags": "", "application": "", "args": "", "user_workdir": "", "wait_for_parents": True,
    "post_error_handler": False, "post_timeout_handler": False, "auto_timeout_retry": True,
    "state": "CREATED", "data": {},
}


def test_every_classic_field_exists_with_its_default_before_and_after_saving(models):
    fresh = models.BalsamJob()
    for field, default in CLASSIC_DEFAULTS.items():
        assert getattr(fresh, field) == default, field
    assert isinstance(fresh.job_id, uuid.UUID)
    assert fresh.pk == fresh.job_id
    assert fresh.queued_launch is None
    assert fresh.parents == "[]"
    assert isinstance(fresh.tick, datetime.datetime) and fresh.tick.tzinfo is not None
    assert parse_history(fresh.state_history) == [(fresh.created_at, "CREATED")]
    fresh.name = "fresh"  # a new job needs a name to be saved
    fresh.save()
    loaded = models.BalsamJob.objects.get(pk=fresh.pk)
    for field, default in dict(CLASSIC_DEFAULTS, name="fresh").items():
        assert getattr(loaded, field) == default, field
    assert loaded.parents == "[]"
    assert loaded.queued_launch_id is None
    assert loaded.created_at == fresh.created_at


def test_two_new_jobs_get_distinct_ids_and_their_own_data_dicts(models):
    a, b = models.BalsamJob(), models.BalsamJob()
    assert a.job_id != b.job_id
    a.data["x"] = 1
    assert b.data == {}


def test_application_definition_fields_and_defaults(models):
    app = models.ApplicationDefinition.objects.create(name="a")
    loaded = models.ApplicationDefinition.objects.get(pk=app.pk)
    assert (loaded.description, loaded.executable, loaded.preprocess, loaded.envscript,
            loaded.postprocess) == ("", "", "", "", "")
    assert loaded.cute_id == f"[a | {app.pk}]"
    assert f"Application {app.pk}:" in repr(loaded)


def test_application_names_are_unique(models):
    from django.db import IntegrityError, transaction

    models.ApplicationDefinition.objects.create(name="a", executable="x")
    with pytest.raises(IntegrityError), transaction.atomic():
        models.ApplicationDefinition.objects.create(name="a", executable="y")
    assert models.ApplicationDefinition.objects.count() == 1


def test_queued_launch_defaults(models):
    ql = models.QueuedLaunch.objects.create()
    loaded = models.QueuedLaunch.objects.get(pk=ql.pk)
    assert (loaded.scheduler_id, loaded.project, loaded.queue, loaded.nodes, loaded.wall_minutes,
            loaded.job_mode, loaded.wf_filter, loaded.sched_flags, loaded.command, loaded.state,
            loaded.prescheduled_only, loaded.from_balsam) == (
        "", "", "", 0, 0, "", "", "", "", "pending-submission", True, True)
    assert f"QueuedLaunch {ql.pk}:" in repr(loaded)


def test_deleting_a_queued_launch_nulls_it_on_jobs_in_the_orm_and_in_plain_sql(models, cursor):
    ql1, ql2 = models.QueuedLaunch.objects.create(), models.QueuedLaunch.objects.create()
    j1 = make_job(models, name="a", queued_launch=ql1)
    j2 = make_job(models, name="b", queued_launch=ql2)
    assert models.BalsamJob.objects.get(pk=j1.pk).queued_launch == ql1
    ql1.delete()
    assert models.BalsamJob.objects.get(pk=j1.pk).queued_launch_id is None
    cursor.execute("DELETE FROM core_queuedlaunch WHERE id = %s", [ql2.pk])  # the database itself
    assert models.BalsamJob.objects.get(pk=j2.pk).queued_launch_id is None
    assert models.BalsamJob.objects.count() == 2
    assert events(models, j1) == events(models, j2) == []


def test_data_round_trips_as_json_and_supports_json_lookups(models):
    payload = {"x": 1.5, "tags": ["a", "b"], "nested": {"ok": True, "none": None}, "s": "é"}
    job = make_job(models, name="d", data=payload)
    make_job(models, name="e", data={"x": 2, "nested": {"ok": False}})
    loaded = models.BalsamJob.objects.get(pk=job.pk)
    assert loaded.data == payload
    assert list(models.BalsamJob.objects.filter(data__x=1.5).values_list("name", flat=True)) == ["d"]
    assert list(models.BalsamJob.objects.filter(data__nested__ok=False)
                .values_list("name", flat=True)) == ["e"]
    assert list(models.BalsamJob.objects.filter(data__tags__contains=["b"])
                .values_list("name", flat=True)) == ["d"]
    assert models.BalsamJob.objects.filter(data__has_key="tags").count() == 1
    loaded.data["added"] = [1, 2]
    loaded.save()
    assert models.BalsamJob.objects.get(pk=job.pk).data["added"] == [1, 2]


def test_data_given_as_json_text_is_stored_as_an_object(models):
    job = make_job(models, data='{"k": "v"}')
    assert models.BalsamJob.objects.get(pk=job.pk).data == {"k": "v"}


def test_cute_id_num_ranks_and_required_num_cores(models):
    job = models.BalsamJob(name="abc", num_nodes=3, ranks_per_node=4, threads_per_rank=6,
                           threads_per_core=2)
    short = str(job.pk)[:8]
    assert job.cute_id == f"[abc | {short}]"
    assert models.BalsamJob(job_id=job.pk).cute_id == f"[{short}]"
    assert job.num_ranks == 12
    assert job.required_num_cores == 12  # 4 ranks x 6 threads / 2 threads per core
    assert models.BalsamJob(ranks_per_node=1, threads_per_rank=1, threads_per_core=4).required_num_cores == 1
    with pytest.raises(AttributeError):
        job.required_num_cores = 3


def test_working_directory_follows_the_classic_layout(models, db):
    job = models.BalsamJob(name="my job", workflow="wf1")
    assert job.working_directory == os.path.join(db, "data", "wf1", f"my_job_{str(job.pk)[:8]}")
    no_wf = models.BalsamJob(name="solo")
    assert no_wf.working_directory == os.path.join(db, "data", f"solo_{str(no_wf.pk)[:8]}")
    own = models.BalsamJob(name="x", workflow="wf", user_workdir="/tmp/somewhere/else")
    assert own.working_directory == "/tmp/somewhere/else"


def test_working_directory_cannot_escape_the_data_directory(models, db):
    job = models.BalsamJob(name="../../etc", workflow="..")
    path = os.path.normpath(job.working_directory)
    assert path.startswith(os.path.join(db, "data") + os.sep)


def test_app_cmd_envscript_preprocess_and_postprocess_come_from_the_application(models, app, tmp_path):
    job = models.BalsamJob(application="sim", args="~/in.dat -n 3")
    home = os.path.expanduser("~")
    assert job.app_cmd == f"/bin/sim --fast {home}/in.dat -n 3"
    assert job.preprocess == "/bin/pre arg"
    assert job.postprocess == "/bin/post"
    assert job.envscript is None
    script = tmp_path / "env.sh"
    app.envscript = str(script)
    app.save()
    assert job.envscript is None  # named but missing
    script.write_text("export X=1\n")
    assert job.envscript == str(script)


def test_get_application_raises_no_application(models, app):
    from balsam.errors import BalsamError

    assert models.BalsamJob(application="sim").get_application() == app
    with pytest.raises(models.NoApplication, match="names no application"):
        models.BalsamJob().get_application()
    with pytest.raises(models.NoApplication, match="application 'nope' does not exist"):
        models.BalsamJob(application="nope").app_cmd  # noqa: B018
    assert issubclass(models.NoApplication, BalsamError)


def test_get_envs(models, db):
    parent = make_job(models, name="p")
    job = make_job(models, name="c", environ_vars="A=1:Q=x/?q=a=b: B = two ",
                   threads_per_rank=1, parents=[parent])
    envs = job.get_envs()
    assert envs == {
        "A": "1", "Q": "x/?q=a=b", "B": " two ",
        "BALSAM_JOB_ID": str(job.pk),
        "BALSAM_PARENT_IDS": json.dumps([str(parent.pk)]),
        "BALSAM_DB_PATH": db,
    }
    assert json.loads(envs["BALSAM_PARENT_IDS"]) == [str(parent.pk)]
    job.threads_per_rank = 4
    envs = job.get_envs(timeout=True, error=True)
    assert envs["OMP_NUM_THREADS"] == "4"
    assert envs["BALSAM_JOB_TIMEOUT"] == "TRUE" and envs["BALSAM_JOB_ERROR"] == "TRUE"
    assert "BALSAM_JOB_TIMEOUT" not in job.get_envs(error=True)
    assert "BALSAM_JOB_ERROR" not in job.get_envs(timeout=True)
    assert models.BalsamJob.parse_envstring("K=v=w:L=") == {"K": "v=w", "L": ""}


def test_environ_vars_that_cannot_be_parsed_are_refused_on_save(models):
    with pytest.raises(ValueError, match="not of the form VAR=value"):
        make_job(models, environ_vars="A=1:justaword")
    assert models.BalsamJob.objects.count() == 0


# ---- states, events and history --------------------------------------------------------------

def test_update_state_records_an_event_in_the_same_transaction(models):
    from django.db import transaction

    job = make_job(models)
    before = datetime.datetime.now(datetime.timezone.utc)
    job.update_state("READY", "checked parents")
    after = datetime.datetime.now(datetime.timezone.utc)
    assert job.state == "READY" and db_state(models, job) == "READY"
    ev = models.JobEvent.objects.get(job_id=job.pk)
    assert (ev.from_state, ev.to_state, ev.message) == ("CREATED", "READY", "checked parents")
    assert before <= ev.timestamp <= after
    with pytest.raises(RuntimeError), transaction.atomic():
        job.update_state("STAGED_IN", "rolled back")
        raise RuntimeError("abort")
    assert db_state(models, job.__class__.objects.get(pk=job.pk)) == "READY"
    assert events(models, job) == [("CREATED", "READY", "checked parents")]


def test_state_history_renders_the_classic_text(models):
    job = make_job(models)
    job.update_state("READY")
    job.update_state("FAILED", "it broke\nsecond line")
    job.update_state("RESTART_READY", "user retry")
    text = models.BalsamJob.objects.get(pk=job.pk).state_history
    parsed = parse_history(text)
    assert [state for _, state in parsed] == ["CREATED", "READY", "FAILED", "RESTART_READY"]
    times = [when for when, _ in parsed]
    assert times == sorted(times)
    assert times[0] == job.created_at
    stamps = [models.history.get_time_string(t) for t in times]
    # Classic layout: each "\n[time STATE] " head is right-justified to 46 characters, so the
    # padding ends up at the end of the previous line.
    assert text == (" " * 8 + f"\n[{stamps[0]} CREATED] "
                    + " " * 10 + f"\n[{stamps[1]} READY] "
                    + " " * 9 + f"\n[{stamps[2]} FAILED] it broke\nsecond line"
                    + " " * 2 + f"\n[{stamps[3]} RESTART_READY] user retry")


def test_get_state_times_runtime_seconds_and_recent_state(models):
    job = make_job(models, name="r")
    assert job.runtime_seconds is None
    for state in ("READY", "STAGED_IN", "PREPROCESSED"):
        job.update_state(state)
    from django.db import connection

    from balsam.core import lifecycle

    with connection.cursor() as cur:
        assert lifecycle.transition_one(cur, job.pk, "RUNNING") == "PREPROCESSED"
        assert lifecycle.transition_one(cur, job.pk, "RUN_DONE", "exit 0") == "RUNNING"
    times = job.get_state_times()
    assert list(times) == ["CREATED", "READY", "STAGED_IN", "PREPROCESSED", "RUNNING", "RUN_DONE"]
    assert times["CREATED"] == job.created_at
    assert job.runtime_seconds == (times["RUN_DONE"] - times["RUNNING"]).total_seconds() > 0
    recent = job.get_recent_state_str()
    assert recent.startswith("[") and recent.endswith(" RUN_DONE] exit 0")
    job.update_state("RESTART_READY")
    assert job.get_state_times()["RESTART_READY"] > times["RUN_DONE"]
    assert job.get_recent_state_str().endswith("RESTART_READY] ")


def test_recent_state_str_of_a_message_containing_brackets(models):
    job = make_job(models)
    job.update_state("FAILED", "tail:\n[rank 0] boom")
    assert job.get_recent_state_str().endswith("FAILED] tail:\n[rank 0] boom")


def test_update_state_refuses_unknown_states_and_running(models):
    job = make_job(models)
    with pytest.raises(models.InvalidStateError, match="invalid state 'DONE'.*expected one of CREATED"):
        job.update_state("DONE")
    with pytest.raises(models.InvalidStateError, match="cannot move from CREATED to RUNNING"):
        job.update_state("RUNNING")
    assert db_state(models, job) == "CREATED" and job.state == "CREATED"
    assert events(models, job) == []


def test_update_state_release_clears_the_lock(models):
    job = make_job(models, lock="host:123")
    job.update_state("READY", release=True)
    loaded = models.BalsamJob.objects.get(pk=job.pk)
    assert loaded.lock == "" and job.lock == ""
    job2 = make_job(models, lock="host:9")
    job2.update_state("READY")
    assert models.BalsamJob.objects.get(pk=job2.pk).lock == "host:9"


def test_user_killed_is_never_resurrected_without_force(models):
    job = make_job(models)
    other = make_job(models, name="other")
    job.update_state("USER_KILLED", "stop")
    with pytest.raises(models.InvalidStateError, match="killed by a user"):
        job.update_state("RESTART_READY")
    assert models.BalsamJob.batch_update_state([job.pk, other.pk], "READY", "bulk") == 1
    assert db_state(models, job) == "USER_KILLED" and db_state(models, other) == "READY"
    assert models.BalsamJob.batch_update_state(models.BalsamJob.objects.all(), "FAILED") == 1
    assert db_state(models, job) == "USER_KILLED"
    job.update_state("CREATED", "resurrected on purpose", force=True)
    assert db_state(models, job) == "CREATED"
    assert events(models, job)[-1] == ("USER_KILLED", "CREATED", "resurrected on purpose")


def test_batch_update_state_records_one_event_per_job(models):
    jobs = [make_job(models, name=f"j{i}") for i in range(5)]
    qs = models.BalsamJob.objects.filter(name__in=["j0", "j1", "j2"])
    assert models.BalsamJob.batch_update_state(qs, "READY", "go") == 3
    assert sorted(models.JobEvent.objects.values_list("job__name", "to_state", "message")) == [
        ("j0", "READY", "go"), ("j1", "READY", "go"), ("j2", "READY", "go")]
    assert db_state(models, jobs[4]) == "CREATED"
    with pytest.raises(models.InvalidStateError):
        models.BalsamJob.batch_update_state([jobs[0].pk], "NOPE")


def test_saving_a_stale_object_never_overwrites_a_newer_state(models):
    job = make_job(models, args="old")
    first = models.BalsamJob.objects.get(pk=job.pk)
    second = models.BalsamJob.objects.get(pk=job.pk)
    first.update_state("READY", "moved")
    second.args = "new"
    second.save()
    loaded = models.BalsamJob.objects.get(pk=job.pk)
    assert (loaded.state, loaded.args) == ("READY", "new")
    assert events(models, job) == [("CREATED", "READY", "moved")]


def test_setting_state_then_save_goes_through_the_state_writer(models):
    job = make_job(models)
    job.state = "READY"
    job.args = "x"
    job.save()
    assert events(models, job) == [("CREATED", "READY", "state set with save()")]
    loaded = models.BalsamJob.objects.get(pk=job.pk)
    assert (loaded.state, loaded.args) == ("READY", "x")
    job.save()  # unchanged state: no second event
    assert len(events(models, job)) == 1


def test_an_invalid_state_set_with_save_raises_and_writes_nothing(models):
    job = make_job(models, args="before")
    job.state = "RUNNING"
    job.args = "after"
    with pytest.raises(models.InvalidStateError, match="cannot move from CREATED to RUNNING"):
        job.save()
    loaded = models.BalsamJob.objects.get(pk=job.pk)
    assert (loaded.state, loaded.args) == ("CREATED", "before")
    assert events(models, job) == []
    job.state = "BOGUS"
    with pytest.raises(models.InvalidStateError, match="invalid state 'BOGUS'"):
        job.save()
    assert models.BalsamJob.objects.get(pk=job.pk).args == "before"


def test_a_killed_job_is_not_resurrected_by_save(models):
    job = make_job(models)
    stale = models.BalsamJob.objects.get(pk=job.pk)
    job.update_state("USER_KILLED")
    stale.state = "READY"
    with pytest.raises(models.InvalidStateError, match="killed by a user"):
        stale.save()
    assert db_state(models, job) == "USER_KILLED"


def test_refresh_from_db_then_save_does_not_replay_a_state_change(models):
    job = make_job(models)
    other = models.BalsamJob.objects.get(pk=job.pk)
    other.update_state("READY")
    job.refresh_from_db()
    assert job.state == "READY"
    job.args = "after refresh"
    job.save()
    assert events(models, job) == [("CREATED", "READY", "")]
    assert models.BalsamJob.objects.get(pk=job.pk).args == "after refresh"


def test_saving_a_partially_loaded_job_saves_only_what_was_loaded(models):
    job = make_job(models, name="n", args="a")
    partial = models.BalsamJob.objects.only("args").get(pk=job.pk)
    partial.args = "b"
    partial.save()
    loaded = models.BalsamJob.objects.get(pk=job.pk)
    assert (loaded.name, loaded.args, loaded.state) == ("n", "b", "CREATED")
    partial = models.BalsamJob.objects.only("args").get(pk=job.pk)
    partial.state = "READY"
    partial.save()
    assert events(models, job) == [("CREATED", "READY", "state set with save()")]


def test_queryset_update_of_state_goes_through_the_state_writer(models):
    a, b = make_job(models, name="a"), make_job(models, name="b")
    b.update_state("USER_KILLED")
    count = models.BalsamJob.objects.all().update(state="READY", description="bulk")
    assert count == 2
    assert db_state(models, a) == "READY" and db_state(models, b) == "USER_KILLED"
    assert events(models, a) == [("CREATED", "READY", "state set with update()")]
    assert set(models.BalsamJob.objects.values_list("description", flat=True)) == {"bulk"}
    with pytest.raises(models.InvalidStateError):
        models.BalsamJob.objects.all().update(state="RUNNING_SOON", description="never")
    assert set(models.BalsamJob.objects.values_list("description", flat=True)) == {"bulk"}


def test_queryset_update_and_bulk_update_check_values(models):
    job = make_job(models, name="v")
    assert models.BalsamJob.objects.update(num_nodes="3", wait_for_parents="no") == 1
    loaded = models.BalsamJob.objects.get(pk=job.pk)
    assert (loaded.num_nodes, loaded.wait_for_parents) == (3, False)
    with pytest.raises(ValueError, match="num_nodes must be >= 1"):
        models.BalsamJob.objects.update(num_nodes=0)
    loaded.num_nodes = -1
    with pytest.raises(ValueError, match="num_nodes must be >= 1"):
        models.BalsamJob.objects.bulk_update([loaded], ["num_nodes"])
    assert models.BalsamJob.objects.get(pk=job.pk).num_nodes == 3


def test_bulk_update_of_state_goes_through_the_state_writer(models):
    a, b = make_job(models, name="a"), make_job(models, name="b")
    b.update_state("USER_KILLED")
    jobs = list(models.BalsamJob.objects.order_by("name"))
    for job in jobs:
        job.state, job.args = "READY", "new args"
    models.BalsamJob.objects.bulk_update(jobs, ["state", "args"])
    assert db_state(models, a) == "READY" and db_state(models, b) == "USER_KILLED"
    assert events(models, a) == [("CREATED", "READY", "state set with bulk_update()")]
    assert set(models.BalsamJob.objects.values_list("args", flat=True)) == {"new args"}
    jobs[0].state = "FAILED"
    models.BalsamJob.objects.bulk_update(jobs, ["state"])
    assert db_state(models, a) == "FAILED"


@pytest.mark.parametrize("field,value,message", [
    ("num_nodes", 0, "num_nodes must be >= 1, not 0"),
    ("ranks_per_node", -2, "ranks_per_node must be >= 1"),
    ("wall_time_minutes", "ten", "wall_time_minutes must be a whole number"),
    ("wait_for_parents", "maybe", "wait_for_parents must be true or false"),
    ("data", "[1, 2]", "data must be a JSON object"),
    ("name", "a\x00b", "may not contain a NUL"),
    ("coschedule_num_nodes", 2**31, "coschedule_num_nodes is too large"),
])
def test_field_validation_on_save_writes_nothing(models, field, value, message):
    with pytest.raises(ValueError, match=message):
        make_job(models, **{field: value})
    assert models.BalsamJob.objects.count() == 0
    job = make_job(models, name="ok")
    setattr(job, field, value)
    with pytest.raises(ValueError, match=message):
        job.save()
    loaded = models.BalsamJob.objects.get(pk=job.pk)
    assert getattr(loaded, field) == (CLASSIC_DEFAULTS[field] if field != "name" else "ok")


def test_values_given_as_text_are_converted_on_save(models):
    job = make_job(models, num_nodes="4", wait_for_parents="false", auto_timeout_retry="yes")
    loaded = models.BalsamJob.objects.get(pk=job.pk)
    assert (loaded.num_nodes, loaded.wait_for_parents, loaded.auto_timeout_retry) == (4, False, True)


def test_a_new_job_saved_in_another_state_records_the_creation_event(models):
    job = make_job(models, state="PREPROCESSED")
    assert db_state(models, job) == "PREPROCESSED"
    assert events(models, job) == [("CREATED", "PREPROCESSED", "created in this state")]
    assert [s for _, s in parse_history(job.state_history)] == ["CREATED", "PREPROCESSED"]


def test_objects_create_and_update_state_of_an_unsaved_job(models):
    job = models.BalsamJob.objects.create(name="made", num_nodes=2)
    assert models.BalsamJob.objects.get(pk=job.pk).num_nodes == 2
    ghost = models.BalsamJob(name="ghost")
    with pytest.raises(models.InvalidStateError, match="does not exist"):
        ghost.update_state("READY")


# ---- files, serialization, repr --------------------------------------------------------------

def test_read_file_in_workdir(models, tmp_path):
    job = models.BalsamJob(name="f", user_workdir=str(tmp_path))
    (tmp_path / "out.txt").write_text("result 42\n")
    assert job.read_file_in_workdir("out.txt") == "result 42\n"
    with pytest.raises(ValueError, match="missing.txt not found in the working directory"):
        job.read_file_in_workdir("missing.txt")


def test_to_dict_serialize_from_dict_deserialize_round_trip(models):
    parent = make_job(models, name="p")
    ql = models.QueuedLaunch.objects.create()
    job = make_job(models, name="c", workflow="w", args="a b", num_nodes=3, data={"k": [1]},
                   environ_vars="X=1", wait_for_parents=False, parents=[parent], queued_launch=ql)
    d = job.to_dict()
    assert d["job_id"] == str(job.pk) and d["parents"] == [str(parent.pk)]
    assert d["num_nodes"] == 3 and d["data"] == {"k": [1]} and d["wait_for_parents"] is False
    assert d["queued_launch_id"] == ql.pk
    assert datetime.datetime.fromisoformat(d["created_at"]) == job.created_at
    assert set(CLASSIC_DEFAULTS) <= set(d)
    text = job.serialize(extra="yes")
    assert json.loads(text)["extra"] == "yes"
    copy = models.BalsamJob.deserialize(text)
    assert copy.to_dict() == d
    assert models.BalsamJob.from_dict(d).to_dict() == d
    assert copy.pk == job.pk and copy.parents == json.dumps([str(parent.pk)])


def test_from_dict_builds_a_new_job_that_can_be_saved(models):
    parent = make_job(models, name="p")
    d = make_job(models, name="c", parents=[parent], args="z").to_dict()
    models.BalsamJob.objects.filter(name="c").delete()
    job = models.BalsamJob.from_dict(d)
    job.save()
    loaded = models.BalsamJob.objects.get(pk=d["job_id"])
    assert loaded.args == "z" and loaded.get_parents_by_id() == [str(parent.pk)]


def test_repr_shows_fields_command_and_working_directory(models, app, db):
    job = make_job(models, name="rep", application="sim", args="--x 1")
    text = repr(job)
    assert text.startswith(f"BalsamJob {job.pk}\n")
    assert "  *** Executed command: /bin/sim --fast --x 1\n" in text
    assert f"  *** Working directory: {job.working_directory}\n" in text
    assert str(job) == text
    for field in ("workflow", "name", "num_nodes", "application", "args", "state", "data", "parents"):
        assert f" {field}: " in text
    gone = models.ApplicationDefinition.objects.create(name="gone", executable="echo")
    orphan = make_job(models, name="o", application="gone")
    gone.delete()
    assert "*** NO APPLICATION MATCHING 'gone'" in repr(orphan)


# ---- dependencies ----------------------------------------------------------------------------

def test_parents_kwarg_at_construction_and_the_parent_child_queries(models):
    p1, p2 = make_job(models, name="p1"), make_job(models, name="p2")
    child = models.BalsamJob(name="c", parents=[p1, str(p2.pk)])
    assert child.get_parents_by_id() == [str(p1.pk), str(p2.pk)]
    child.save()
    loaded = models.BalsamJob.objects.get(pk=child.pk)
    assert loaded.get_parents_by_id() == [str(p1.pk), str(p2.pk)]
    assert json.loads(loaded.parents) == [str(p1.pk), str(p2.pk)]
    assert sorted(j.name for j in loaded.get_parents()) == ["p1", "p2"]
    assert [j.name for j in p1.get_children()] == ["c"]
    assert p1.get_children_by_id() == [str(child.pk)]
    assert p2.get_child_by_name("c") == child
    assert child.get_children_by_id() == []


def test_get_child_by_name_requires_exactly_one(models):
    parent = make_job(models, name="p")
    with pytest.raises(ValueError, match="no children named 'x'"):
        parent.get_child_by_name("x")
    make_job(models, name="x", parents=[parent])
    make_job(models, name="x", parents=[parent])
    with pytest.raises(ValueError, match="2 children named 'x'"):
        parent.get_child_by_name("x")


def test_set_parents_replaces_the_parents_and_checks_them(models):
    a, b, c = (make_job(models, name=n) for n in "abc")
    child = make_job(models, name="child", parents=[a])
    child.set_parents([b, c.pk])
    assert sorted(child.get_parents().values_list("name", flat=True)) == ["b", "c"]
    child.set_parents([])
    assert child.get_parents_by_id() == []
    with pytest.raises(models.InvalidParentsError, match="does not exist"):
        child.set_parents([uuid.uuid4()])
    with pytest.raises(models.InvalidParentsError, match="not a valid job id"):
        child.set_parents(["not-a-uuid"])
    with pytest.raises(models.InvalidParentsError, match="cannot depend on itself"):
        child.set_parents([child])
    child.set_parents([a])
    with pytest.raises(models.InvalidParentsError):
        child.set_parents([b, uuid.uuid4()])  # all or nothing
    assert child.get_parents_by_id() == [str(a.pk)]


def test_setting_parents_then_save_checks_them_too(models):
    a = make_job(models, name="a")
    child = make_job(models, name="child")
    child.parents = [a]
    child.save()
    assert child.get_parents_by_id() == [str(a.pk)]
    child.parents = json.dumps([str(uuid.uuid4())])
    with pytest.raises(models.InvalidParentsError, match="does not exist"):
        child.save()
    assert models.BalsamJob.objects.get(pk=child.pk).get_parents_by_id() == [str(a.pk)]
    with pytest.raises(models.InvalidParentsError, match="does not exist"):
        make_job(models, name="orphan", parents=[uuid.uuid4()])
    assert not models.BalsamJob.objects.filter(name="orphan").exists()


def test_cycles_are_rejected_including_through_a_long_chain(models):
    a, b = make_job(models, name="a"), make_job(models, name="b")
    b.set_parents([a])
    with pytest.raises(models.InvalidParentsError, match="would create a cycle"):
        a.set_parents([b])
    chain = [make_job(models, name=f"n{i}") for i in range(30)]
    for parent, child in zip(chain, chain[1:]):
        child.set_parents([parent])
    with pytest.raises(models.InvalidParentsError, match="would create a cycle"):
        chain[0].set_parents([chain[-1]])
    assert chain[0].get_parents_by_id() == []
    chain[-1].parents = [chain[-1]]
    with pytest.raises(models.InvalidParentsError, match="itself"):
        chain[-1].save()


def test_a_duplicate_edge_is_rejected(models):
    from django.db import connection, transaction

    from balsam.core import lifecycle
    from balsam.errors import BalsamError

    a, b = make_job(models, name="a"), make_job(models, name="b")
    b.set_parents([a, a])  # duplicates in one call collapse to one edge
    assert b.get_parents_by_id() == [str(a.pk)]
    with pytest.raises(BalsamError, match="already depends"), transaction.atomic(), \
            connection.cursor() as cur:
        lifecycle.add_dependency(cur, a.pk, b.pk)
    assert models.JobDependency.objects.count() == 1


def test_deleting_a_parent_fails_its_waiting_children_and_leaves_finished_ones(models):
    parent = make_job(models, name="parent")
    waiting = make_job(models, name="waiting", parents=[parent])
    awaiting = make_job(models, name="awaiting", parents=[parent])
    awaiting.update_state("AWAITING_PARENTS")
    done = make_job(models, name="done", parents=[parent])
    done.update_state("JOB_FINISHED")
    parent.update_state("READY")
    assert models.JobEvent.objects.filter(job_id=parent.pk).count() == 1
    models.BalsamJob.objects.filter(name="parent").delete()
    assert not models.BalsamJob.objects.filter(pk=parent.pk).exists()
    short = str(parent.pk)[:8]
    for child, before in ((waiting, "CREATED"), (awaiting, "AWAITING_PARENTS")):
        assert db_state(models, child) == "FAILED"
        assert events(models, child)[-1] == (before, "FAILED", f"parent job removed: parent {short}")
    assert db_state(models, done) == "JOB_FINISHED"
    assert models.JobEvent.objects.filter(job_id=parent.pk).count() == 0
    assert models.JobDependency.objects.count() == 0


def test_job_delete_fails_waiting_children_and_cascades(models):
    parent = make_job(models, name="p")
    child = make_job(models, name="c", parents=[parent])
    parent.update_state("READY")
    count, detail = parent.delete()
    assert count == 1 and detail == {"core.BalsamJob": 1}
    assert db_state(models, child) == "FAILED"
    assert models.JobDependency.objects.count() == 0
    assert models.JobEvent.objects.filter(job_id=parent.pk).count() == 0


def test_deleting_parent_and_child_together_fails_nothing(models):
    parent = make_job(models, name="p")
    make_job(models, name="c", parents=[parent])
    other = make_job(models, name="other")
    assert models.BalsamJob.objects.filter(name__in=["p", "c"]).delete()[0] == 2
    assert list(models.BalsamJob.objects.values_list("name", flat=True)) == ["other"]
    assert events(models, other) == []


# ---- bulk creation ---------------------------------------------------------------------------

def test_bulk_create_returns_saved_usable_jobs(models):
    jobs = models.BalsamJob.objects.bulk_create(
        [models.BalsamJob(name=f"b{i}", workflow="bulk", num_nodes=i + 1) for i in range(50)])
    assert len(jobs) == 50
    assert models.BalsamJob.objects.filter(workflow="bulk").count() == 50
    loaded = models.BalsamJob.objects.get(name="b7")
    assert loaded.num_nodes == 8 and loaded.pk == jobs[7].pk
    jobs[3].update_state("READY", "after bulk")
    jobs[4].args = "changed"
    jobs[4].save()
    assert db_state(models, jobs[3]) == "READY"
    assert models.BalsamJob.objects.get(pk=jobs[4].pk).args == "changed"
    assert models.BalsamJob.objects.count() == 50  # save() updated, did not insert
    assert models.JobEvent.objects.count() == 1


def test_bulk_create_with_parents_given_as_kwargs(models):
    root = make_job(models, name="root")
    a = models.BalsamJob(name="a", parents=[root])
    b = models.BalsamJob(name="b", parents=[a, root])
    models.BalsamJob.objects.bulk_create([b, a])
    assert sorted(models.BalsamJob.objects.get(name="b").get_parents()
                  .values_list("name", flat=True)) == ["a", "root"]
    assert sorted(root.get_children().values_list("name", flat=True)) == ["a", "b"]
    assert a.get_parents_by_id() == [str(root.pk)]


def test_bulk_create_rejects_bad_parents_and_writes_nothing(models):
    a = models.BalsamJob(name="a")
    b = models.BalsamJob(name="b", parents=[a])
    a.parents = [b]
    with pytest.raises(models.InvalidParentsError, match="cycle"):
        models.BalsamJob.objects.bulk_create([a, b])
    with pytest.raises(models.InvalidParentsError, match="does not exist"):
        models.BalsamJob.objects.bulk_create([models.BalsamJob(name="x", parents=[uuid.uuid4()])])
    assert models.BalsamJob.objects.count() == 0
    assert models.JobDependency.objects.count() == 0


def test_bulk_create_in_another_state_records_the_event(models):
    jobs = models.BalsamJob.objects.bulk_create(
        [models.BalsamJob(name="r", state="PREPROCESSED"), models.BalsamJob(name="c")])
    assert events(models, jobs[0]) == [("CREATED", "PREPROCESSED", "created in this state")]
    assert events(models, jobs[1]) == []
    assert [s for _, s in parse_history(jobs[0].state_history)] == ["CREATED", "PREPROCESSED"]


def test_bulk_create_validates_every_job_and_writes_nothing_on_error(models):
    with pytest.raises(ValueError, match="num_nodes must be >= 1"):
        models.BalsamJob.objects.bulk_create([models.BalsamJob(name="ok"),
                                              models.BalsamJob(name="bad", num_nodes=0)])
    assert models.BalsamJob.objects.count() == 0


def test_bulk_create_with_a_queued_launch_and_odd_text(models):
    ql = models.QueuedLaunch.objects.create()
    text = "tab\there\nnew line \\ back é"
    jobs = models.BalsamJob.objects.bulk_create(
        [models.BalsamJob(name="q", queued_launch=ql, args=text, data={"t": text})])
    loaded = models.BalsamJob.objects.get(pk=jobs[0].pk)
    assert loaded.queued_launch_id == ql.pk and loaded.args == text and loaded.data == {"t": text}


def test_bulk_create_refuses_environ_vars_that_cannot_be_parsed(models):
    with pytest.raises(ValueError, match="not of the form VAR=value"):
        models.BalsamJob.objects.bulk_create([models.BalsamJob(name="e", environ_vars="A=1:oops")])
    assert models.BalsamJob.objects.count() == 0
