"""`balsam job --from-file` / `--array` through the real CLI against the real test DB: one job
per row or index, substitutions, per-row fields, line-numbered errors with nothing written."""
from __future__ import annotations

import json
import os

import pytest
from cli_support import add_app, assert_one_line_error, run_tty, snapshot
from conftest import run_balsam

from balsam.core import schema
from balsam.core.jobenv import job_variables

BASE = ["job", "--workflow", "camp", "--application", "hello", "--yes"]


@pytest.fixture
def app(cursor):
    add_app(cursor, "hello", "echo")
    add_app(cursor, "other", "cat")
    return cursor


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def stored(cursor) -> list[dict]:
    cursor.execute(f"SELECT * FROM {schema.JOB_TABLE} ORDER BY created_at, job_id")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def test_csv_rows_become_jobs_with_substitutions_and_field_columns(app, tmp_path):
    csv_path = write(tmp_path, "points.csv", "x,seed,num_nodes,application\n"
                     "0.5,11,2,\n1.5,12,,other\n\"2,5\",13,4,hello\n")
    proc = run_balsam(*BASE, "--name", "p{i}_{x}", "--args", "--x={x} --seed {seed}",
                      "--num-nodes", "8", "--env", "MODE=fast", "--from-file", csv_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "Added 3 jobs to the database\n", "")
    jobs = stored(app)
    assert [(j["name"], j["args"], j["num_nodes"], j["application"], j["environ_vars"])
            for j in jobs] == [
        ("p0_0.5", "--x=0.5 --seed 11", 2, "hello", "MODE=fast:BALSAM_ARRAY_INDEX=0"),
        ("p1_1.5", "--x=1.5 --seed 12", 8, "other", "MODE=fast:BALSAM_ARRAY_INDEX=1"),
        ("p2_2,5", "--x=2,5 --seed 13", 4, "hello", "MODE=fast:BALSAM_ARRAY_INDEX=2"),
    ]
    assert {j["workflow"] for j in jobs} == {"camp"} and {j["state"] for j in jobs} == {"CREATED"}
    env = job_variables(jobs[1], [], "/db")
    assert (env["BALSAM_ARRAY_INDEX"], env["MODE"]) == ("1", "fast")


def test_json_lines_set_typed_fields_and_data(app, tmp_path):
    path = write(tmp_path, "p.jsonl", '{"name": "a", "data": {"T": 300}, "post_error_handler": true}\n'
                 "\n"
                 '{"name": "b", "T": 0.25, "wall_time_minutes": 30}\n')
    proc = run_balsam(*BASE, "--name", "x", "--description", "T={T}", "--from-file", path)
    assert proc.returncode == 2 and "line 1: no value for {T} in --description" in proc.stderr
    path = write(tmp_path, "p.jsonl", '{"name": "a", "data": {"T": 300}, "post_error_handler": true,'
                 ' "T": "hot"}\n\n{"name": "b", "T": 0.25, "wall_time_minutes": 30}\n')
    proc = run_balsam(*BASE, "--name", "x", "--description", "T={T}", "--from-file", path)
    assert proc.returncode == 0, proc.stderr
    a, b = stored(app)
    assert (a["name"], a["data"], a["post_error_handler"], a["description"], a["wall_time_minutes"]) \
        == ("a", {"T": 300}, True, "T=hot", 1)
    assert (b["name"], b["data"], b["post_error_handler"], b["description"], b["wall_time_minutes"]) \
        == ("b", {}, False, "T=0.25", 30)


def test_from_stdin_and_literal_braces(app):
    proc = run_balsam(*BASE, "--name", "n{k}", "--args", '{{k}} {"json": 1}', "--from-file", "-",
                      input="k\nA\nB\n")
    assert proc.returncode == 0, proc.stderr
    assert [(j["name"], j["args"]) for j in stored(app)] == [
        ("nA", '{k} {"json": 1}'), ("nB", '{k} {"json": 1}')]


def test_parents_column_links_existing_jobs_and_earlier_rows(app, tmp_path):
    from cli_support import add_jobs

    old1, old2 = add_jobs(app, 2, workflow="w", application="hello", name="old")
    path = write(tmp_path, "dag.csv", "x,parents\n"
                 f"a,{old1}; {old2.replace('-', '').upper()}\n"  # ids, any spelling
                 "b,pa\n"
                 f"c,pa pb;pa  {old1}\n"  # a repeated parent counts once
                 "d,\n")
    proc = run_balsam(*BASE, "--name", "p{x}", "--from-file", path, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    ids = {o["name"]: o["job_id"] for o in out}
    assert [o["parents"] for o in out] == [
        [old1, old2], [ids["pa"]], [ids["pa"], ids["pb"], old1], []]
    app.execute(f"SELECT parent_id::text, child_id::text FROM {schema.DEP_TABLE}")
    edges = sorted(app.fetchall())
    assert edges == sorted([(old1, ids["pa"]), (old2, ids["pa"]), (ids["pa"], ids["pb"]),
                            (ids["pa"], ids["pc"]), (ids["pb"], ids["pc"]), (old1, ids["pc"])])
    listed = json.loads(run_balsam("ls", "--name", "pc", "--format", "json").stdout)
    assert sorted(listed[0]["parents"]) == sorted([ids["pa"], ids["pb"], old1])
    # JSON lines: a list, or text as in CSV; the text summary counts the dependencies.
    # Names are those of the file's rows only: a job already in the DB is named by its id.
    lines = [{"name": "q1"}, {"name": "q2", "parents": ["q1", ids["pd"]]},
             {"name": "q3", "parents": "q1;q2"}]
    path = write(tmp_path, "dag.jsonl", "".join(json.dumps(obj) + "\n" for obj in lines))
    proc = run_balsam(*BASE, "--name", "x", "--from-file", path)
    assert proc.stdout == "Added 3 jobs to the database with 4 dependencies\n", proc.stderr


def test_parent_rows_wait_for_their_parents(app, tmp_path):
    from balsam.processing import transitions

    path = write(tmp_path, "dag.csv", "x,parents\n1,\n2,p1\n")
    assert run_balsam(*BASE, "--name", "p{x}", "--from-file", path).returncode == 0
    transitions.advance(app)
    assert [(j["name"], j["state"]) for j in stored(app)] == [
        ("p1", "PREPROCESSED"), ("p2", "AWAITING_PARENTS")]


@pytest.mark.parametrize("spec, indices", [
    ("3", [0, 1, 2]), ("5-7", [5, 6, 7]), ("2-9:3", [2, 5, 8]), ("4-4", [4])])
def test_array_makes_one_job_per_index(app, spec, indices):
    proc = run_balsam(*BASE, "--name", "run{i}", "--args", "--seed {i}", "--array", spec)
    assert proc.returncode == 0, proc.stderr
    jobs = stored(app)
    assert [j["name"] for j in jobs] == [f"run{i}" for i in indices]
    assert [j["args"] for j in jobs] == [f"--seed {i}" for i in indices]
    assert [j["environ_vars"] for j in jobs] == [f"BALSAM_ARRAY_INDEX={i}" for i in indices]


def test_quiet_prints_ids_and_json_prints_jobs(app):
    proc = run_balsam(*BASE, "--name", "q{i}", "--array", "3", "--quiet")
    assert proc.returncode == 0 and proc.stderr == ""
    jobs = stored(app)
    assert proc.stdout == "".join(f"{j['job_id']}\n" for j in jobs)
    proc = run_balsam(*BASE, "--name", "j{i}", "--array", "2", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [o["name"] for o in out] == ["j0", "j1"]
    assert out[1]["environ_vars"] == "BALSAM_ARRAY_INDEX=1" and out[1]["parents"] == []
    assert {o["job_id"] for o in out} == {str(j["job_id"]) for j in stored(app)[3:]}


def test_campaign_ids_pipe_into_wait(app):
    proc = run_balsam(*BASE, "--name", "w{i}", "--array", "4", "--quiet")
    ids = proc.stdout.split()
    app.execute(f"UPDATE {schema.JOB_TABLE} SET state = 'JOB_FINISHED'")
    waited = run_balsam("wait", "-", "--timeout", "10", input=proc.stdout)
    assert (waited.returncode, waited.stdout) == (0, "all 4 jobs finished\n"), waited.stderr
    assert len(ids) == 4


def test_prompt_shows_the_first_job_and_no_adds_nothing(app):
    args = [a for a in BASE if a != "--yes"] + ["--name", "p{i}", "--array", "3"]
    code, screen = run_tty(*args, answer="n\n")
    assert code == 1, screen
    assert "BalsamJob " in screen and "[INFO]: ... and 2 more jobs from --array" in screen
    assert "Add these 3 jobs to the database? [y/n]" in screen
    assert stored(app) == []
    code, screen = run_tty(*args, answer="y\n")
    assert code == 0 and screen.endswith("Added 3 jobs to the database\n"), screen
    assert len(stored(app)) == 3


@pytest.mark.parametrize("text, flags, fragment", [
    ("x,num_nodes\n1,2\n2,2\n3,two\n4,1\n", [],
     "p.csv, line 4: num_nodes must be a whole number, not 'two'"),
    ("x\n1\n2,3\n", [], "p.csv, line 3: 2 values for 1 columns"),
    ("x,num_node\n1,2\n", [], "column 'num_node' is neither a job field nor used as {num_node} in "
     "--name, --args, --description, --url-in, --url-out, --env (did you mean the job field "
     "'num_nodes'?)"),
    ("x,state\n1,RUNNING\n", [], "column 'state': this job field is set by Balsam"),
    ("x\n1\n", ["--args", "{y}"], "--args '{y}': {y} is not a column of the file"),
    ("x,application\n1,hello\n2,nope\n", [], "p.csv, line 3: application 'nope' does not exist"),
    ("x\na:b\n", ["--env", "X={x}"], "p.csv, line 2: a value substituted into --env contains ':'"),
    ("x,input_files\n1,../secret\n", [], "p.csv, line 2: input_files pattern '../secret'"),
    ("x,data\n1,[1]\n", [], "p.csv, line 2: data must be a JSON object, not list"),
    ('{"x": 1}\n[2]\n', [], "p.csv, line 2: a JSON object is expected on each line, not list"),
    ('{"x": 1}\n{"x": \n', [], "p.csv, line 2: not valid JSON"),
    ('{"x": null}\n', [], "p.csv, line 1: 'x' is null"),
    ("x,x\n1,2\n", [], "column 'x' appears twice in the header"),
    ("", [], "empty; expected a header line"),
    ("x\n", [], "no rows, nothing to add"),
    ("x\n1\n", ["--array", "3"], "--from-file and --array cannot be combined"),
    ("x,parents\n1,\n2,p1\n3,p9\n", [],
     "p.csv, line 4: parent 'p9' is neither a job id nor the name of an earlier row"),
    ("x,parents\n1,p2\n2,\n", [], "p.csv, line 2: parent 'p2' is the name of a later row"),
    ("x,parents\n1,p1\n", [], "p.csv, line 2: a job cannot be its own parent"),
    ("x,parents\n1,\n1,\n2,p1\n", [], "p.csv, line 4: parent 'p1' is the name of 2 rows"),
    ("x,parents\n1,\n2,p1;00000000-0000-4000-8000-00000000000f\n", [],
     "p.csv, line 3: parent job 00000000-0000-4000-8000-00000000000f does not exist"),
    ('{"x": 1, "parents": 5}\n', [], "p.csv, line 1: parents must be text or a list of text, not 5"),
])
@pytest.mark.slow
def test_bad_rows_are_named_by_line_and_nothing_is_written(app, tmp_path, text, flags, fragment):
    path = write(tmp_path, "p.csv", text)
    before = snapshot(app)
    proc = run_balsam(*BASE, "--name", "p{x}", "--from-file", path, *flags)
    assert_one_line_error(proc, fragment)
    assert snapshot(app) == before


@pytest.mark.parametrize("spec, fragment", [
    ("0", "gives 0 jobs"), ("x", "expected N, A-B or A-B:STEP"), ("5-2", "need A <= B"),
    ("1-5:0", "STEP >= 1"), ("-3", "expected N, A-B"), ("1000001", "between 1 and 1000000"),
])
def test_bad_array_specs_are_refused(app, spec, fragment):
    proc = run_balsam(*BASE, "--name", "a{i}", f"--array={spec}")
    assert_one_line_error(proc, fragment)
    assert stored(app) == []


def test_unreadable_file_is_one_line(app, tmp_path):
    proc = run_balsam(*BASE, "--name", "a", "--from-file", str(tmp_path / "missing.csv"))
    assert_one_line_error(proc, "cannot read it: No such file or directory")
    path = tmp_path / "latin.csv"
    path.write_bytes(b"x\n\xe9\n")
    assert_one_line_error(run_balsam(*BASE, "--name", "a", "--from-file", str(path)), "not UTF-8")


def test_a_bad_last_row_of_many_writes_nothing(app, tmp_path):
    rows = "".join(f"{i},1\n" for i in range(20000)) + "20000,0\n"
    path = write(tmp_path, "big.csv", "x,num_nodes\n" + rows)
    proc = run_balsam(*BASE, "--name", "p{x}", "--from-file", path)
    assert_one_line_error(proc, "big.csv, line 20002: num_nodes must be >= 1, not 0")
    assert stored(app) == []
    os.remove(path)
