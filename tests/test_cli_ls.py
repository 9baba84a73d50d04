"""`balsam ls` (jobs, apps, wf, queues) through the real CLI against the real test DB."""
from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time

import pytest
from cli_support import add_app, add_edge, add_jobs, assert_one_line_error
from conftest import run_balsam

from balsam.core import lifecycle, schema
from balsam.core.states import STATES


def table_text(rows: list[list[str]], headers: list[str]) -> str:
    """The expected table, computed here independently of balsam.core.render."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = [" | ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [headers] + rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n"


def ordered_jobs(cursor, where: str = "", params=()) -> list[dict]:
    cursor.execute(f"SELECT * FROM {schema.JOB_TABLE} {where} ORDER BY created_at, job_id", params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]


def default_table(jobs: list[dict]) -> str:
    cols = ["job_id", "name", "workflow", "application", "state"]
    return table_text([[str(j[c]) for c in cols] for j in jobs], cols)


@pytest.fixture
def jobs(cursor):
    """Five jobs in three workflows, one of them RUN_DONE, one of them FAILED."""
    add_app(cursor, "hello", "echo", description="says hello")
    add_app(cursor, "sim", "/opt/sim/bin/sim.x")
    add_jobs(cursor, name="Alpha", workflow="wf_a", application="hello")
    add_jobs(cursor, name="alphabet", workflow="wf_a", application="hello", state="RUN_DONE")
    add_jobs(cursor, name="beta_1", workflow="wf_b", application="sim", num_nodes=4)
    add_jobs(cursor, name="beta%2", workflow="wf_b", application="sim", state="FAILED")
    add_jobs(cursor, name="gamma", workflow="other", application="sim")
    return cursor


def ls(*args: str, **env: str) -> subprocess.CompletedProcess:
    proc = run_balsam("ls", *args, env=env or None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc


def test_ls_empty_db_says_no_jobs(db):
    assert ls().stdout == "No jobs found matching query\n"
    assert ls("--by-states").stdout == "No jobs found matching query\n"
    assert ls("--format", "json").stdout == "[]\n"


def test_ls_default_table_lists_all_jobs_in_creation_order(jobs):
    assert ls().stdout == default_table(ordered_jobs(jobs))
    assert ls("jobs").stdout == ls().stdout


@pytest.mark.parametrize("args, where, params", [
    (["--name", "ALPHA"], "WHERE name ILIKE %s", ["%alpha%"]),
    (["--name", "a_1"], "WHERE name = %s", ["beta_1"]),        # _ is literal, not a wildcard
    (["--name", "%"], "WHERE name = %s", ["beta%2"]),          # % is literal
    (["--state", "run_done"], "WHERE state = %s", ["RUN_DONE"]),
    (["--wf", "wf_"], "WHERE workflow LIKE %s", ["wf\\_%"]),
    (["--wf", "b", "--state", "CREATED"], "WHERE workflow = 'wf_b' AND state = %s", ["CREATED"]),
])
def test_ls_filters_select_matching_jobs(jobs, args, where, params):
    expected = ordered_jobs(jobs, where, params)
    assert expected, "the filter case must match something"
    assert ls(*args).stdout == default_table(expected)


def test_ls_id_matches_prefix_substring_and_exact_uuid(jobs):
    target = ordered_jobs(jobs)[2]
    job_id = str(target["job_id"])
    for text in (job_id[:6], job_id[9:18], job_id, job_id.upper(), job_id.replace("-", "")):
        expected = [j for j in ordered_jobs(jobs)
                    if text.lower() in str(j["job_id"]) or str(j["job_id"]) == job_id]
        assert ls("--id", text).stdout == default_table(expected), text


def test_ls_filters_that_match_nothing_say_so(jobs):
    assert ls("--name", "zzz").stdout == "No jobs found matching query\n"
    assert ls("--state", "RUNNING").stdout == "No jobs found matching query\n"


@pytest.mark.parametrize("args, fragment", [
    (["--state", "DONE"], "invalid state 'DONE': expected one of CREATED, AWAITING_PARENTS"),
    (["--id", "xyz"], "'xyz' is not a job id or part of one"),
    (["--id", "0000000000000000000000000000000g"], "is not a job id"),
    (["--format", "json", "--history"], "does not combine with --history or --tree"),
    (["apps", "--state", "RUN_DONE"], "--state cannot be used with `balsam ls apps`"),
    (["queues", "--name", "x"], "--name cannot be used with `balsam ls queues`"),
    (["wf", "--tree"], "--tree cannot be used with `balsam ls wf`"),
    (["apps", "--id", "hello"], "applications are numbered"),
    (["everything"], "invalid choice: 'everything'"),
])
@pytest.mark.slow
def test_ls_bad_arguments_exit_2_with_one_line(jobs, args, fragment):
    assert_one_line_error(run_balsam("ls", *args), fragment)


def test_ls_fields_env_adds_columns(jobs):
    all_jobs = ordered_jobs(jobs)
    add_edge(jobs, str(all_jobs[0]["job_id"]), str(all_jobs[2]["job_id"]))
    add_edge(jobs, str(all_jobs[1]["job_id"]), str(all_jobs[2]["job_id"]))
    out = ls("--wf", "wf_b", BALSAM_LS_FIELDS="num_nodes:parents:num_nodes").stdout
    cols = ["job_id", "name", "workflow", "application", "state", "num_nodes", "parents"]
    parents = {2: f"{str(all_jobs[0]['job_id'])[:8]},{str(all_jobs[1]['job_id'])[:8]}", 3: ""}
    rows = [[str(j[c]) for c in cols[:6]] + [parents[i]] for i, j in enumerate(all_jobs) if i in (2, 3)]
    assert out == table_text(rows, cols)


def test_ls_fields_env_with_unknown_field_names_it(jobs):
    proc = run_balsam("ls", env={"BALSAM_LS_FIELDS": "num_nodes:bogus"})
    assert_one_line_error(proc, "BALSAM_LS_FIELDS names an unknown job field 'bogus'", "unset")


def test_ls_limit_env_truncates_with_a_count_of_the_rest(jobs):
    out = ls(BALSAM_LS_LIMIT="2").stdout
    assert out == default_table(ordered_jobs(jobs)[:2]) + "(3 more BalsamJobs not shown...)\n"
    assert ls(BALSAM_LS_LIMIT="5").stdout == default_table(ordered_jobs(jobs))
    proc = run_balsam("ls", "--format", "json", env={"BALSAM_LS_LIMIT": "1"})
    assert len(json.loads(proc.stdout)) == 1
    assert proc.stderr == "(4 more BalsamJobs not shown...) raise BALSAM_LS_LIMIT to see them\n"


@pytest.mark.parametrize("value", ["0", "-3", "abc", "1.5"])
def test_ls_limit_env_must_be_a_positive_integer(jobs, value):
    proc = run_balsam("ls", env={"BALSAM_LS_LIMIT": value})
    assert_one_line_error(proc, f"BALSAM_LS_LIMIT must be a positive whole number, not {value!r}")


def test_ls_verbose_prints_the_same_repr_as_the_orm(jobs):
    from balsam.core.models import BalsamJob

    all_jobs = ordered_jobs(jobs)
    add_edge(jobs, str(all_jobs[0]["job_id"]), str(all_jobs[4]["job_id"]))
    jobs.execute(f"UPDATE {schema.JOB_TABLE} SET data = '{{\"k\": [1, 2]}}', application = 'gone' "
                 "WHERE name = 'gamma'")
    out = ls("--verbose").stdout
    expected = "\n".join(repr(BalsamJob.objects.get(pk=j["job_id"])) for j in all_jobs)
    assert out == expected
    assert "NO APPLICATION MATCHING 'gone'" in out and "{'k': [1, 2]}" in out


def test_ls_history_matches_state_history_of_the_orm(jobs):
    from balsam.core.models import BalsamJob

    first = ordered_jobs(jobs)[0]
    job_id = str(first["job_id"])
    lifecycle.transition(jobs, [job_id], "READY", "deps ok")
    lifecycle.transition(jobs, [job_id], "FAILED", "line one\nline two")
    out = ls("--history", "--name", "alpha").stdout
    blocks = []
    for j in ordered_jobs(jobs, "WHERE name ILIKE %s", ["alpha%"]):
        job = BalsamJob.objects.get(pk=j["job_id"])
        note = "  (priority 0; 0 failed run(s) counted, max_retries 3)"
        blocks.append(f"Job {job.name} [{job.pk}]{note}\n{'-' * 60}{job.state_history}\n")
    assert out == "\n".join(blocks)
    assert "READY] deps ok" in out and "FAILED] line one\nline two" in out
    assert out.count("RUN_DONE]") == 1  # alphabet was created in RUN_DONE


def test_ls_tree_shows_the_dependency_forest(jobs):
    a, b, c, d, e = (str(j["job_id"]) for j in ordered_jobs(jobs))
    # a -> c -> e, b -> c, a -> d
    for parent, child in ((a, c), (c, e), (b, c), (a, d)):
        add_edge(jobs, parent, child)
    st = {str(j["job_id"]): j["state"] for j in ordered_jobs(jobs)}

    def line(depth, name, jid):
        return f"{'|   ' * depth}{name} [{name} | {jid[:8]}] {st[jid]}"

    expected = [line(0, "Alpha", a), line(1, "beta_1", c), line(2, "gamma", e), line(1, "beta%2", d),
                line(0, "alphabet", b), line(1, "beta_1", c), line(2, "gamma", e)]
    assert ls("--tree").stdout == "\n".join(expected) + "\n"
    # the filter chooses roots; the children below them are not filtered
    assert ls("--tree", "--name", "alphabet").stdout == "\n".join(expected[4:]) + "\n"
    assert ls("--tree", "--name", "gamma").stdout == "No jobs without parents found matching query\n"


def test_tree_lines_fetches_all_descendant_edges_in_one_query(jobs):
    from balsam.core.reads.jobs import tree_lines

    ids = add_jobs(jobs, 30, name="chain")
    for parent, child in zip(ids, ids[1:]):
        add_edge(jobs, parent, child)

    class CountingCursor:
        def __init__(self, cur):
            self.cur, self.calls = cur, 0

        def execute(self, *a):
            self.calls += 1
            return self.cur.execute(*a)

        def fetchall(self):
            return self.cur.fetchall()

    counting = CountingCursor(jobs)
    lines = tree_lines(counting, [{"job_id": ids[0], "name": "chain0", "state": "CREATED"}])
    assert counting.calls == 1
    assert len(lines) == 30 and lines[-1].startswith("|   " * 29 + "chain29 ")


def test_ls_by_states_counts_per_state_right_justified(jobs):
    assert ls("--by-states").stdout == "         CREATED 3\n        RUN_DONE 1\n          FAILED 1\n"
    assert ls("--by-states", "--wf", "wf_b").stdout == "         CREATED 1\n          FAILED 1\n"
    counts = json.loads(ls("--by-states", "--format", "json").stdout)
    assert counts == {"CREATED": 3, "RUN_DONE": 1, "FAILED": 1}
    assert list(counts) == [s for s in STATES if s in counts]


def test_ls_view_precedence_history_then_tree_then_by_states(jobs):
    history = ls("--history").stdout
    tree = ls("--tree").stdout
    by_states = ls("--by-states").stdout
    assert ls("--history", "--tree", "--by-states", "--verbose").stdout == history
    assert ls("--tree", "--by-states", "--verbose").stdout == tree
    assert ls("--by-states", "--verbose").stdout == by_states
    assert history.startswith("Job Alpha [") and tree.startswith("Alpha [Alpha |")


def test_ls_json_lists_every_field_for_scripts(jobs):
    from balsam.core.models import BalsamJob

    all_jobs = ordered_jobs(jobs)
    add_edge(jobs, str(all_jobs[0]["job_id"]), str(all_jobs[1]["job_id"]))
    listed = json.loads(ls("--format", "json").stdout)
    assert [j["job_id"] for j in listed] == [str(j["job_id"]) for j in all_jobs]
    expected_keys = set(schema.JOB_DEFAULTS) | {"job_id", "created_at", "tick", "queued_launch_id",
                                                 "parents"}
    assert all(set(j) == expected_keys for j in listed)
    assert listed[1]["parents"] == [str(all_jobs[0]["job_id"])] and listed[0]["parents"] == []
    orm = BalsamJob.objects.get(pk=all_jobs[1]["job_id"]).to_dict()
    assert {k: listed[1][k] for k in orm} == orm
    assert listed[2]["num_nodes"] == 4 and listed[1]["wait_for_parents"] is True


def test_ls_apps_table_filters_and_json(jobs):
    jobs.execute(f"SELECT id, name FROM {schema.APP_TABLE} ORDER BY id")
    (hid, _), (sid, _) = jobs.fetchall()
    rows = [[str(hid), "hello", "echo", "says hello"], [str(sid), "sim", "/opt/sim/bin/sim.x", ""]]
    headers = ["id", "name", "executable", "description"]
    assert ls("apps").stdout == table_text(rows, headers)
    assert ls("apps", "--name", "SI").stdout == table_text(rows[1:], headers)
    assert ls("apps", "--id", str(hid)).stdout == table_text(rows[:1], headers)
    assert ls("apps", "--id", "999999").stdout == "No applications found matching query\n"
    assert f"Application {sid}:\n        name: sim\n" in ls("apps", "--verbose").stdout
    listed = json.loads(ls("apps", "--format", "json").stdout)
    assert [a["name"] for a in listed] == ["hello", "sim"] and listed[0]["id"] == hid


def test_ls_wf_lists_workflows_and_an_exact_workflow_lists_its_jobs(jobs):
    assert ls("wf").stdout == table_text([["other", "1"], ["wf_a", "2"], ["wf_b", "2"]],
                                         ["workflow", "jobs"])
    assert ls("wf", "--wf", "wf").stdout == table_text([["wf_a", "2"], ["wf_b", "2"]],
                                                       ["workflow", "jobs"])
    exact = ordered_jobs(jobs, "WHERE workflow = 'wf_a'")
    assert ls("wf", "--wf", "wf_a").stdout == default_table(exact)
    assert ls("wf", "--wf", "wf_a", "--by-states").stdout == "         CREATED 1\n        RUN_DONE 1\n"
    assert ls("wf", "--wf", "nothing").stdout == "No workflows found matching query\n"
    assert json.loads(ls("wf", "--format", "json").stdout)[0] == {"workflow": "other", "jobs": 1}


def test_ls_queues_lists_queued_launches(db, cursor):
    assert ls("queues").stdout == "No queued jobs detected\n"
    cursor.execute(f"""INSERT INTO {schema.QLAUNCH_TABLE} (scheduler_id, project, queue, nodes,
        wall_minutes, job_mode, wf_filter, sched_flags, command, state, prescheduled_only, from_balsam)
        VALUES (4242, 'proj', 'debug', 8, 30, 'mpi', '', '', '/q/run.sh', 'queued', false, true)""")
    cursor.execute(f"SELECT id FROM {schema.QLAUNCH_TABLE}")
    rid = cursor.fetchone()[0]
    headers = ["id", "scheduler_id", "queue", "nodes", "wall_minutes", "job_mode", "state",
               "as_of", "submitted_at"]
    # the (local) scheduler does not list job 4242: it ended, whatever the DB recorded
    row = [str(rid), "4242", "debug", "8", "30", "mpi", "ended", "live (recorded queued)", "None"]
    assert ls("queues").stdout == table_text([row], headers)
    assert "  scheduler_id: 4242\n" in ls("queues", "--verbose").stdout
    assert json.loads(ls("queues", "--format", "json").stdout)[0]["queue"] == "debug"


def test_ls_into_a_closed_pipe_is_quiet(cursor):
    add_jobs(cursor, 3000, name="many")
    proc = subprocess.Popen([sys.executable, "-m", "balsam", "ls"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"job_id")
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert err == ""


def test_ls_interrupted_by_ctrl_c_is_quiet(cursor):
    add_jobs(cursor, 3000, name="many")
    proc = subprocess.Popen([sys.executable, "-m", "balsam", "ls"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    assert ready  # it is writing; the pipe fills up and the write blocks
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err.decode() and err.decode().strip() == ""


@pytest.mark.slow
def test_ls_with_100000_jobs_is_limited_in_sql_and_counts_the_rest(cursor):
    add_jobs(cursor, 99_990, name="bulk", workflow="big")
    add_jobs(cursor, 10, name="few", workflow="small", state="FAILED")
    started = time.monotonic()
    out = ls().stdout
    ls_seconds = time.monotonic() - started
    lines = out.splitlines()
    assert len(lines) == 2 + 5000 + 1 and lines[-1] == "(95000 more BalsamJobs not shown...)"
    assert ls("--by-states").stdout == "         CREATED 99990\n          FAILED 10\n"
    assert len(ls("--wf", "small", "--state", "FAILED").stdout.splitlines()) == 12
    assert ls_seconds < 10, f"ls took {ls_seconds:.1f} s with 100,000 jobs"


@pytest.mark.parametrize("limit", [1, 3, 5, 50])
def test_the_column_fetch_of_the_table_holds_what_the_row_fetch_holds(jobs, limit):
    """`balsam ls` renders from reads.fetch_job_columns; the other views read fetch_jobs: the
    same jobs, values, parents and total, whatever the limit."""
    from balsam.core.reads import jobs as reads

    all_jobs = ordered_jobs(jobs)
    add_edge(jobs, str(all_jobs[0]["job_id"]), str(all_jobs[2]["job_id"]))
    add_edge(jobs, str(all_jobs[1]["job_id"]), str(all_jobs[2]["job_id"]))
    columns = ["job_id", "name", "state", "num_nodes", "parents", "data"]
    for where, params in (("", []), (" WHERE workflow = %s", ["wf_b"]), (" WHERE name = %s", ["none"])):
        rows, total = reads.fetch_jobs(jobs, where, list(params), columns, limit)
        values, total_too = reads.fetch_job_columns(jobs, where, list(params), columns, limit)
        assert total_too == total and total >= len(rows)
        assert values == [[r[c] for r in rows] for c in columns]
    assert total == 0 and values == [[] for _ in columns]
    rows, total = reads.fetch_jobs(jobs, "", [], columns, 50)
    assert total == len(all_jobs) and [str(p) for p in rows[2]["parents"]] == [
        str(all_jobs[0]["job_id"]), str(all_jobs[1]["job_id"])]
