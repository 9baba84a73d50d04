"""`--quiet` (ids only) and `--format json` on the commands that print jobs or apps: `job`,
`mkchild`, `app`, `ls`, `killjob`, `rm`, `dep`, `modify`, `make_dummies`; stdout holds nothing
else."""
from __future__ import annotations

import json

import pytest
from cli_support import add_app, add_edge, add_jobs, assert_one_line_error, job_row
from conftest import run_balsam

from balsam.cli.jobquery import jsonable

JOB = ["job", "--name", "one", "--workflow", "wf", "--application", "hello", "--yes"]


@pytest.fixture
def app(cursor):
    add_app(cursor, "hello", "echo")
    return cursor


def ok(*args: str, **kw) -> str:
    proc = run_balsam(*args, **kw)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def test_job_quiet_prints_only_the_new_id(app):
    out = ok(*JOB, "--quiet")
    job_id = out.strip()
    assert out == f"{job_id}\n" and job_row(app, job_id)["name"] == "one"


def test_job_format_json_prints_the_new_job_as_ls_does(app):
    (job,) = json.loads(ok(*JOB, "--format", "json"))
    row = job_row(app, job["job_id"])
    listed = json.loads(ok("ls", "--format", "json"))
    assert listed == [job]
    assert job["name"] == "one" and job["parents"] == []
    assert {k: v for k, v in job.items() if k != "parents"} == \
        {k: v for k, v in jsonable(row).items() if k in job}


def test_quiet_and_json_together_are_refused(app):
    proc = run_balsam(*JOB, "--quiet", "--format", "json")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
    assert ok("ls") == "No jobs found matching query\n"


def test_mkchild_quiet_and_json_name_the_child_and_its_parent(app):
    (parent,) = add_jobs(app, name="p", workflow="wf", application="hello")
    env = {"BALSAM_JOB_ID": parent}
    child = ok("mkchild", "--name", "c", "--application", "hello", "--yes", "--quiet", env=env)
    assert job_row(app, child.strip())["workflow"] == "wf"
    (obj,) = json.loads(ok("mkchild", "--name", "d", "--application", "hello", "--yes",
                           "--format", "json", env=env))
    assert (obj["name"], obj["parents"]) == ("d", [parent])


def test_app_quiet_prints_its_number_and_json_its_fields(db, cursor):
    number = ok("app", "--name", "a1", "--executable", "/bin/true", "--quiet").strip()
    cursor.execute("SELECT id FROM core_applicationdefinition WHERE name = 'a1'")
    assert int(number) == cursor.fetchone()[0]
    (obj,) = json.loads(ok("app", "--name", "a2", "--executable", "/bin/echo", "--format", "json"))
    assert (obj["name"], obj["executable"]) == ("a2", "/bin/echo") and obj["id"] == int(number) + 1


def test_ls_quiet_lists_matching_ids_in_creation_order(app):
    ids = add_jobs(app, 3, workflow="wf", application="hello")
    other = add_jobs(app, workflow="other", application="hello", state="FAILED")
    assert ok("ls", "--quiet") == "".join(f"{i}\n" for i in ids + other)
    assert ok("ls", "--wf", "wf", "-q") == "".join(f"{i}\n" for i in ids)
    assert ok("ls", "--state", "FAILED", "--quiet") == f"{other[0]}\n"
    assert ok("ls", "wf", "--wf", "other", "--quiet") == f"{other[0]}\n"
    assert ok("ls", "--name", "nothing", "--quiet") == ""
    cur = app
    cur.execute("SELECT id FROM core_applicationdefinition")
    assert ok("ls", "apps", "--quiet") == f"{cur.fetchone()[0]}\n"


def test_ls_quiet_keeps_the_limit_and_notes_the_rest_on_stderr(app):
    ids = add_jobs(app, 4, workflow="wf", application="hello")
    proc = run_balsam("ls", "--quiet", env={"BALSAM_LS_LIMIT": "2"})
    assert proc.returncode == 0 and proc.stdout == f"{ids[0]}\n{ids[1]}\n"
    assert proc.stderr == "(2 more BalsamJobs not shown...) raise BALSAM_LS_LIMIT to see them\n"


@pytest.mark.parametrize("args, fragment", [
    (["--quiet", "--format", "json"], "--quiet prints only ids; it does not combine with --format json"),
    (["--quiet", "--tree", "--history"], "it does not combine with --history, --tree"),
    (["--quiet", "--by-states"], "it does not combine with --by-states"),
    (["wf", "--quiet"], "--quiet cannot be used with `balsam ls wf`"),
    (["queues", "--quiet"], "--quiet cannot be used with `balsam ls queues`"),
])
def test_ls_quiet_refuses_other_views(app, args, fragment):
    assert_one_line_error(run_balsam("ls", *args), fragment)


def test_killjob_quiet_prints_the_killed_ids_and_json_their_rows(app):
    parent, child = add_jobs(app, 2, workflow="wf", application="hello")
    add_edge(app, parent, child)
    out = ok("killjob", "--id", parent, "--recursive", "--yes", "--quiet")
    assert out == f"{parent}\n{child}\n"
    assert ok("killjob", "--id", parent, "--yes", "--quiet") == ""  # already final: nothing
    (other,) = add_jobs(app, workflow="wf", application="hello", name="o")
    (obj,) = json.loads(ok("killjob", "--id", other, "--yes", "--format", "json"))
    assert (obj["job_id"], obj["name"], obj["state"], obj["parents"]) == (other, "o", "USER_KILLED", [])
    assert json.loads(ok("killjob", "--id", other, "--yes", "--format", "json")) == []


def test_rm_quiet_and_json_show_what_was_removed(app):
    ids = add_jobs(app, 2, workflow="wf", application="hello", name="r")
    add_edge(app, ids[0], ids[1])
    removed = json.loads(ok("rm", "jobs", "--id", ids[1], "--force", "--format", "json"))
    assert [(o["job_id"], o["parents"]) for o in removed] == [(ids[1], [ids[0]])]
    assert ok("rm", "jobs", "--all", "--force", "--quiet") == f"{ids[0]}\n"
    assert ok("rm", "jobs", "--all", "--force", "--quiet") == ""
    app.execute("SELECT id FROM core_applicationdefinition")
    number = app.fetchone()[0]
    (obj,) = json.loads(ok("rm", "apps", "--all", "--force", "--format", "json"))
    assert (obj["id"], obj["name"], obj["executable"]) == (number, "hello", "echo")
    assert ok("rm", "apps", "--all", "--force", "--format", "json") == "[]\n"


def test_dep_quiet_prints_parent_then_child_and_json_both_jobs(app):
    parent, child, other = add_jobs(app, 3, workflow="wf", application="hello", name="d")
    assert ok("dep", parent[:8], child[:8], "--quiet") == f"{parent}\n{child}\n"
    objs = json.loads(ok("dep", other[:8], child[:8], "--format", "json"))
    assert [o["job_id"] for o in objs] == [other, child]
    assert sorted(objs[1]["parents"]) == sorted([parent, other]) and objs[0]["parents"] == []
    assert objs[1]["name"] == "d1" and objs[1]["workflow"] == "wf"


def test_modify_quiet_prints_the_id_and_json_the_changed_job_or_app(app):
    (job,) = add_jobs(app, workflow="wf", application="hello", name="m")
    assert ok("modify", job[:8], "num_nodes", "3", "--quiet") == f"{job}\n"
    (obj,) = json.loads(ok("modify", job[:8], "state", "READY", "--format", "json"))
    assert (obj["job_id"], obj["num_nodes"], obj["state"]) == (job, 3, "READY")
    app.execute("SELECT id FROM core_applicationdefinition WHERE name = 'hello'")
    number = app.fetchone()[0]
    # The rename's note on the jobs it renamed goes to stderr: stdout holds only the id.
    proc = run_balsam("modify", "--type", "apps", "hello", "name", "hi", "--quiet")
    assert (proc.returncode, proc.stdout) == (0, f"{number}\n")
    assert proc.stderr == "1 jobs using 'hello' now name 'hi'\n"
    (obj,) = json.loads(ok("modify", "--type", "apps", str(number), "description", "x y",
                           "--format", "json"))
    assert (obj["id"], obj["name"], obj["description"], obj["executable"]) == \
        (number, "hi", "x y", "echo")


def test_make_dummies_quiet_prints_every_new_id_and_json_every_new_job(app):
    out = ok("make_dummies", "3", "--quiet")
    listed = ok("ls", "--quiet")
    assert out == listed and len(out.splitlines()) == 3
    made = json.loads(ok("make_dummies", "2", "--format", "json"))
    assert [o["name"] for o in made] == ["dummy0", "dummy1"]
    assert made == json.loads(ok("ls", "--format", "json"))[3:]


def test_make_dummies_json_spool_is_one_list_across_chunks():
    import argparse
    import io

    from balsam.cli.cmd_make_dummies import write_chunk
    from balsam.cli.jobout import job_dicts
    from balsam.core import schema

    rows = [schema.new_job_row({"name": f"d{i}", "workflow": "w", "application": "a"})
            for i in range(5)]
    for args, expected in ((argparse.Namespace(quiet=False, format="json"), job_dicts(rows)),
                           (argparse.Namespace(quiet=True, format="text"), None)):
        out = io.StringIO()
        out.write("[" if expected is not None else "")
        write_chunk(out, args, rows[:2], True)
        write_chunk(out, args, rows[2:], False)
        if expected is None:
            assert out.getvalue() == "".join(f"{r['job_id']}\n" for r in rows)
        else:
            out.write("\n]\n")
            assert json.loads(out.getvalue()) == expected
