"""`balsam modify`, `rm`, `killjob` and `make_dummies` through the real CLI against the real test DB."""
from __future__ import annotations

import json

import pytest
from cli_support import (
    add_app,
    add_edge,
    add_jobs,
    assert_one_line_error,
    events,
    job_row,
    jobs_by_name,
    run_tty,
    snapshot,
)
from conftest import run_balsam

from balsam.core import schema

MSG = "User mutated state from command line"
AMBIGUOUS_IDS = ["abcd0000-0000-4000-8000-000000000001", "abcd0000-0000-4000-8000-000000000002"]


def ok(*args: str) -> str:
    proc = run_balsam(*args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def app_rows(cursor) -> dict[str, dict]:
    cursor.execute(f"SELECT * FROM {schema.APP_TABLE} ORDER BY id")
    names = [d[0] for d in cursor.description]
    return {r[1]: dict(zip(names, r)) for r in cursor.fetchall()}


# ---- modify ----------------------------------------------------------------------------------

@pytest.fixture
def one(cursor):
    """(cursor, id) of one CREATED job."""
    return cursor, add_jobs(cursor, name="one", workflow="w", application="hello")[0]


@pytest.mark.parametrize("attr, value, stored, shown", [
    ("num_nodes", "4", 4, "4"),
    ("wall_time_minutes", " 30 ", 30, "30"),
    ("coschedule_num_nodes", "0", 0, "0"),
    ("args", "-n 5 --fast", "-n 5 --fast", "-n 5 --fast"),
    ("workflow", "new wf", "new wf", "new wf"),
    ("data", '{"k": [1, 2], "s": "x"}', {"k": [1, 2], "s": "x"}, '{"k": [1, 2], "s": "x"}'),
    ("data", "{}", {}, "{}"),
    *[("post_error_handler", text, True, "True") for text in ("true", "YES", "1", "on")],
    *[("auto_timeout_retry", text, False, "False") for text in ("false", "No", "0", "off")],
])
@pytest.mark.slow
def test_modify_converts_the_value_to_the_fields_type(one, attr, value, stored, shown):
    cursor, job_id = one
    assert ok("modify", job_id[:8], attr, value) == f"job {attr} changed to: {shown}\n"
    assert job_row(cursor, job_id)[attr] == stored


def test_modify_booleans_both_ways_and_the_orm_sees_them(one):
    from balsam.core.models import BalsamJob

    cursor, job_id = one
    ok("modify", job_id, "wait_for_parents", "false")
    assert BalsamJob.objects.get(pk=job_id).wait_for_parents is False
    ok("modify", job_id, "wait_for_parents", "true")
    assert BalsamJob.objects.get(pk=job_id).wait_for_parents is True


@pytest.mark.parametrize("attr, value, fragment", [
    ("num_nodes", "abc", "num_nodes must be a whole number, not 'abc'"),
    ("num_nodes", "0", "num_nodes must be >= 1, not 0"),
    ("num_nodes", "2.5", "must be a whole number"),
    ("post_error_handler", "maybe", "post_error_handler must be true or false, not 'maybe'"),
    ("data", "[1, 2]", "data must be a JSON object, not list"),
    ("data", "{bad json", "data must be a JSON object"),
    ("bogus", "1", "unknown job attribute 'bogus'"),
    ("job_id", "x", "job_id cannot be modified"),
    ("created_at", "2020-01-01", "created_at cannot be modified"),
    ("parents", "[]", "use `balsam dep PARENT CHILD`"),
    ("state", "DONE", "invalid state 'DONE': expected one of CREATED"),
    ("state", "RUNNING", "RUNNING cannot be set by hand"),
])
@pytest.mark.slow
def test_modify_bad_values_exit_2_and_change_nothing(one, attr, value, fragment):
    cursor, job_id = one
    before = snapshot(cursor)
    assert_one_line_error(run_balsam("modify", job_id[:8], attr, value), "balsam modify: error:", fragment)
    assert snapshot(cursor) == before


def test_modify_unknown_or_ambiguous_id_changes_nothing(cursor):
    add_jobs(cursor, ids=AMBIGUOUS_IDS)
    before = snapshot(cursor)
    assert_one_line_error(run_balsam("modify", "abcd", "num_nodes", "2"), "matches more than one job")
    assert_one_line_error(run_balsam("modify", "ffff", "num_nodes", "2"), "no job id starts with 'ffff'")
    assert_one_line_error(run_balsam("modify", "xyz!", "num_nodes", "2"), "is not a job id")
    assert snapshot(cursor) == before


def test_modify_state_records_the_change(one):
    from balsam.core.models import BalsamJob

    cursor, job_id = one
    assert ok("modify", job_id[:8], "state", "ready") == "job state changed to: READY\n"
    assert job_row(cursor, job_id)["state"] == "READY"
    assert events(cursor, job_id) == [("CREATED", "READY", MSG)]
    assert BalsamJob.objects.get(pk=job_id).state_history.endswith(f"READY] {MSG}")


def test_modify_state_of_a_killed_job_needs_force(one):
    cursor, job_id = one
    ok("modify", job_id, "state", "USER_KILLED")
    before = snapshot(cursor)
    assert_one_line_error(run_balsam("modify", job_id, "state", "RESTART_READY"),
                          "was killed by a user (USER_KILLED)")
    assert snapshot(cursor) == before
    assert ok("modify", job_id, "state", "RESTART_READY", "--force") == \
        "job state changed to: RESTART_READY\n"
    assert [e[1] for e in events(cursor, job_id)] == ["USER_KILLED", "RESTART_READY"]


def test_modify_apps_by_number_or_name(cursor):
    hid = add_app(cursor, "hello", "echo")
    add_app(cursor, "other", "cat")
    assert ok("modify", str(hid), "description", "greets", "--type", "apps") == \
        "app description changed to: greets\n"
    assert ok("modify", "other", "executable", "/bin/cat -n", "--type", "apps") == \
        "app executable changed to: /bin/cat -n\n"
    apps = app_rows(cursor)
    assert apps["hello"]["description"] == "greets" and apps["other"]["executable"] == "/bin/cat -n"


def test_modify_app_rename_keeps_names_unique_and_renames_it_in_jobs(cursor):
    hid = add_app(cursor, "hello", "echo")
    add_app(cursor, "other", "cat")
    job_id = add_jobs(cursor, name="j", application="hello")[0]
    before = snapshot(cursor)
    assert_one_line_error(run_balsam("modify", "hello", "name", "other", "--type", "apps"),
                          "an application named 'other' already exists")
    assert_one_line_error(run_balsam("modify", "hello", "name", " ", "--type", "apps"),
                          "name may not be empty")
    assert_one_line_error(run_balsam("modify", "hello", "id", "7", "--type", "apps"),
                          "unknown application attribute 'id'")
    assert_one_line_error(run_balsam("modify", "nope", "name", "x", "--type", "apps"),
                          "no application numbered or named 'nope'")
    assert snapshot(cursor) == before
    out = ok("modify", str(hid), "name", "greeter", "--type", "apps")
    assert out == "1 jobs using 'hello' now name 'greeter'\napp name changed to: greeter\n"
    assert job_row(cursor, job_id)["application"] == "greeter"
    assert set(app_rows(cursor)) == {"greeter", "other"}


# ---- rm --------------------------------------------------------------------------------------

@pytest.fixture
def family(cursor):
    """Jobs p1 -> c1 (CREATED) and p1 -> done (RUN_DONE), plus loner in workflow `w2`."""
    add_app(cursor, "hello", "echo")
    p1 = add_jobs(cursor, name="p1", workflow="w1", application="hello")[0]
    c1 = add_jobs(cursor, name="c1", workflow="w1", application="hello")[0]
    done = add_jobs(cursor, name="Done", workflow="w1", application="hello", state="RUN_DONE")[0]
    add_jobs(cursor, name="loner", workflow="w2", application="hello")
    add_edge(cursor, p1, c1)
    add_edge(cursor, p1, done)
    return cursor


def test_rm_by_name_removes_matching_jobs_case_insensitively(family):
    out = ok("rm", "jobs", "--name", "DON", "--force")
    assert out.startswith("Removed 1 jobs: [Done | ")
    assert set(jobs_by_name(family)) == {"p1", "c1", "loner"}


def test_rm_parent_fails_its_waiting_children_and_says_so(family):
    ids = {n: str(r["job_id"]) for n, r in jobs_by_name(family).items()}
    out = ok("rm", "job", "--id", ids["p1"][:7], "--force")
    assert out == (f"Removed 1 jobs: [p1 | {ids['p1'][:8]}]\n"
                   "1 jobs waiting on a removed job were marked FAILED\n")
    rows = jobs_by_name(family)
    assert rows["c1"]["state"] == "FAILED" and rows["Done"]["state"] == "RUN_DONE"
    assert events(family, ids["c1"]) == [("CREATED", "FAILED", f"parent job removed: p1 {ids['p1'][:8]}")]


def test_rm_empty_name_or_all_removes_every_job(family):
    assert ok("rm", "jobs", "--name", "", "--force").startswith("Removed 4 jobs: ")
    assert jobs_by_name(family) == {}
    add_jobs(family, 12, name="x")
    out = ok("rm", "jobs", "--all", "--force")
    assert out.startswith("Removed 12 jobs: ") and out.endswith(" and 2 more\n")
    assert jobs_by_name(family) == {}


def test_rm_wf_filter_matches_workflows_containing_it_as_everywhere(family):
    add_jobs(family, name="lookalike", workflow="w1x")
    add_jobs(family, name="other", workflow="v9")
    assert ok("rm", "jobs", "--all", "--wf-filter", "w1", "--force").startswith("Removed 4 jobs: ")
    assert set(jobs_by_name(family)) == {"loner", "other"}
    out = ok("rm", "jobs", "--name", "o", "--wf-filter", "w", "--force")
    assert out.startswith("Removed 1 jobs: [loner")
    out = ok("rm", "jobs", "--all", "--wf-filter", "W", "--force")
    assert out == "No jobs matching query: nothing removed\n"


@pytest.mark.parametrize("args, fragment", [
    (["jobs", "--id", "abcd"], "matches more than one job"),
    (["jobs", "--id", "ffff"], "no job id starts with 'ffff'"),
    (["jobs", "--id", "nothex"], "is not a job id"),
    (["jobs", "--id", AMBIGUOUS_IDS[0], "--wf-filter", "w2"], "is not in a workflow containing 'w2'"),
    (["apps", "--all", "--wf-filter", "w1"], "--wf-filter applies to jobs only"),
    (["jobs"], "one of the arguments --name --id --all is required"),
    (["jobs", "--all", "--name", "x"], "not allowed with argument"),
    (["things", "--all"], "invalid choice: 'things'"),
    (["apps", "--id", "hello"], "applications are numbered"),
    (["apps", "--id", "999999"], "no application numbered 999999"),
])
def test_rm_bad_requests_exit_2_and_remove_nothing(family, args, fragment):
    add_jobs(family, ids=AMBIGUOUS_IDS, application="hello")
    before = snapshot(family)
    assert_one_line_error(run_balsam("rm", *args, "--force"), fragment)
    assert snapshot(family) == before


def test_rm_asks_before_removing(family):
    before = snapshot(family)
    assert_one_line_error(run_balsam("rm", "jobs", "--all", input=""), "confirmation needed",
                          "--force")
    status, out = run_tty("rm", "jobs", "--name", "p", answer="n\n")
    assert status == 1 and "PERMANENTLY remove 1 jobs? [y/n]" in out and "aborted: nothing removed" in out
    assert snapshot(family) == before
    status, out = run_tty("rm", "jobs", "--name", "p", answer="y\n")
    assert status == 0 and "Removed 1 jobs: [p1 |" in out
    assert "p1" not in jobs_by_name(family)


def test_rm_apps_in_use_needs_force(family):
    add_app(family, "unused", "true")
    before = snapshot(family)
    assert_one_line_error(run_balsam("rm", "apps", "--all"),
                          "applications still in use ('hello' by 4 jobs)", "--force")
    assert snapshot(family) == before
    assert ok("rm", "app", "--name", "unus", "--force").startswith("Removed 1 applications: unused (")
    assert ok("rm", "apps", "--all", "--force").startswith("Removed 1 applications: hello (")
    assert app_rows(family) == {} and len(jobs_by_name(family)) == 4  # jobs stay
    hid = add_app(family, "again", "echo")
    status, out = run_tty("rm", "apps", "--id", str(hid), answer="y\n")
    assert status == 0 and "PERMANENTLY remove 1 applications? [y/n]" in out
    assert app_rows(family) == {}


# ---- killjob ---------------------------------------------------------------------------------

def test_killjob_kills_one_job_and_leaves_its_children(family):
    ids = {n: str(r["job_id"]) for n, r in jobs_by_name(family).items()}
    assert ok("killjob", "--id", ids["p1"][:6], "--yes") == f"Killed 1 job: {ids['p1'][:8]}\n"
    rows = jobs_by_name(family)
    assert rows["p1"]["state"] == "USER_KILLED" and rows["c1"]["state"] == "CREATED"
    assert events(family, ids["p1"]) == [("CREATED", "USER_KILLED", "Killed by user")]


def test_killjob_recursive_kills_descendants_not_in_a_final_state(family):
    ids = {n: str(r["job_id"]) for n, r in jobs_by_name(family).items()}
    grandchild = add_jobs(family, name="gc", state="JOB_FINISHED")[0]
    add_edge(family, ids["c1"], grandchild)
    out = ok("killjob", "--id", ids["p1"], "--recursive", "--yes")
    assert out.startswith(f"Killed 3 jobs: {ids['p1'][:8]}, ")
    rows = jobs_by_name(family)
    assert [rows[n]["state"] for n in ("p1", "c1", "Done", "gc", "loner")] == \
        ["USER_KILLED", "USER_KILLED", "USER_KILLED", "JOB_FINISHED", "CREATED"]


def test_killjob_on_a_final_job_says_so_and_changes_nothing(family):
    finished = add_jobs(family, name="fin", state="JOB_FINISHED")[0]
    before = snapshot(family)
    assert ok("killjob", "--id", finished, "--yes") == \
        f"Job [fin | {finished[:8]}] is already JOB_FINISHED (a final state): nothing to kill\n"
    assert ok("killjob", "--id", finished, "--recursive", "--yes") == \
        f"Job [fin | {finished[:8]}] is already JOB_FINISHED and no job depending on it can be killed\n"
    assert snapshot(family) == before


@pytest.mark.parametrize("prefix, fragment", [
    ("abcd", "matches more than one job"), ("ffff", "no job id starts with 'ffff'"),
    ("", "is not a job id"), ("g123", "is not a job id"),
])
def test_killjob_bad_prefix_exit_2_and_kill_nothing(family, prefix, fragment):
    add_jobs(family, ids=AMBIGUOUS_IDS)
    before = snapshot(family)
    assert_one_line_error(run_balsam("killjob", "--id", prefix, "--yes"), "balsam killjob: error:", fragment)
    assert snapshot(family) == before


def test_killjob_asks_before_killing(family):
    p1 = str(jobs_by_name(family)["p1"]["job_id"])
    before = snapshot(family)
    assert_one_line_error(run_balsam("killjob", "--id", p1, input=""), "confirmation needed")
    status, out = run_tty("killjob", "--id", p1, "--recursive", answer="n\n")
    assert status == 1 and "and every job that depends on it? [y/n]" in out and "aborted" in out
    assert snapshot(family) == before
    status, out = run_tty("killjob", "--id", p1, answer="y\n")
    assert status == 0 and f"Really kill job [p1 | {p1[:8]}]? [y/n]" in out
    assert jobs_by_name(family)["p1"]["state"] == "USER_KILLED"


# ---- make_dummies ----------------------------------------------------------------------------

def test_make_dummies_creates_the_app_and_n_jobs(cursor):
    from balsam.core.models import BalsamJob

    assert ok("make_dummies", "5") == "Added 5 dummy jobs (application dummy, workflow dummy)\n"
    assert app_rows(cursor)["dummy"]["executable"] == "echo"
    rows = jobs_by_name(cursor)
    assert sorted(rows) == [f"dummy{i}" for i in range(5)]
    for row in rows.values():
        assert (row["workflow"], row["application"], row["args"], row["node_packing_count"],
                row["description"], row["state"]) == \
            ("dummy", "dummy", "hello", 64, "Added by balsam make_dummies", "CREATED")
    assert BalsamJob.objects.filter(workflow="dummy").count() == 5
    ok("make_dummies", "2")
    assert len(app_rows(cursor)) == 1 and len(jobs_by_name(cursor)) == 5  # names repeat: 7 rows
    cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE}")
    assert cursor.fetchone()[0] == 7


def test_make_dummies_keeps_an_existing_dummy_app(cursor):
    add_app(cursor, "dummy", "/bin/true")
    ok("make_dummies", "1")
    assert app_rows(cursor)["dummy"]["executable"] == "/bin/true"


@pytest.mark.parametrize("value", ["0", "-3", "abc", "1.5", ""])
def test_make_dummies_needs_a_positive_whole_number(cursor, value):
    before = snapshot(cursor)
    assert_one_line_error(run_balsam("make_dummies", value), "N must be a positive whole number")
    assert snapshot(cursor) == before


@pytest.mark.slow
def test_make_dummies_shows_a_progress_bar_on_a_terminal_for_large_n(cursor):
    status, out = run_tty("make_dummies", "20000")
    assert status == 0, out
    assert "\r[" + "#" * 20 + " " * 20 + "] 10000/20000" in out
    assert "\r[" + "#" * 40 + "] 20000/20000\n" in out
    assert out.endswith("Added 20000 dummy jobs (application dummy, workflow dummy)\n")
    cursor.execute(f"SELECT count(*), count(DISTINCT name) FROM {schema.JOB_TABLE}")
    assert cursor.fetchone() == (20000, 20000)
    cursor.execute(f"TRUNCATE {schema.JOB_TABLE} CASCADE")
    proc = run_balsam("make_dummies", "20000")  # stderr is a pipe: no bar
    assert proc.returncode == 0 and proc.stderr == ""


def test_json_value_round_trip_through_modify_and_ls(one):
    cursor, job_id = one
    ok("modify", job_id, "data", '{"nested": {"a": true, "b": null}}')
    listed = json.loads(ok("ls", "--id", job_id, "--format", "json"))
    assert listed[0]["data"] == {"nested": {"a": True, "b": None}}


def test_modify_refuses_to_make_a_running_job_runnable_again_unless_forced(balsam_cli, cursor):
    from balsam.core import lifecycle
    from balsam.core.models import ApplicationDefinition, BalsamJob

    ApplicationDefinition.objects.create(name="app", executable="true")
    job = BalsamJob(name="busy", application="app", state="PREPROCESSED")
    job.save()
    lifecycle.transition(cursor, [job.pk], "RUNNING", "claimed by a launcher")
    out = balsam_cli("modify", str(job.pk)[:8], "state", "RESTART_READY")
    assert out.returncode == 2
    assert "is RUNNING in a launcher" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    cursor.execute("SELECT state FROM core_balsamjob WHERE job_id = %s", [str(job.pk)])
    assert cursor.fetchone()[0] == "RUNNING"
    forced = balsam_cli("modify", str(job.pk)[:8], "state", "RESTART_READY", "--force")
    assert forced.returncode == 0, forced.stderr
    cursor.execute("SELECT state FROM core_balsamjob WHERE job_id = %s", [str(job.pk)])
    assert cursor.fetchone()[0] == "RESTART_READY"


@pytest.mark.slow
def test_rm_of_many_jobs_shows_progress_on_a_terminal_and_removes_them_all(cursor):
    status, _ = run_tty("make_dummies", "45000")
    assert status == 0
    parent = add_jobs(cursor, name="kept-parent", application="dummy")[0]
    child = add_jobs(cursor, name="kept-child", application="dummy")[0]
    add_edge(cursor, parent, child)
    status, out = run_tty("rm", "jobs", "--all", "--wf-filter", "dummy", "--force")
    assert status == 0, out
    assert "\rremoving: 20,000 of 45,000 jobs (1/3)" in out
    assert "\rremoving: 45,000 of 45,000 jobs (3/3)" in out
    assert "Removed 45000 jobs: " in out
    cursor.execute(f"SELECT workflow, count(*) FROM {schema.JOB_TABLE} GROUP BY 1")
    assert cursor.fetchall() == [("", 2)]
    proc = run_balsam("rm", "jobs", "--all", "--force")  # stderr is a pipe: no progress line
    assert proc.returncode == 0 and proc.stderr == ""
