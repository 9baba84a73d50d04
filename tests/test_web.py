"""The dashboard over real HTTP against a real ``balsam web`` process: the token gate, CSRF on
actions, kill and retry through the state writer, filtering and keyset paging, the job page."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest

from tests.conftest import run_balsam
from tests.web_support import TOKEN, Client, insert_jobs, job_ids_on_page, web_server


@pytest.fixture
def site(db: str) -> Iterator[str]:
    with web_server(db, "--token", TOKEN) as base:
        yield base


def test_requests_without_the_token_are_refused_with_403(site: str) -> None:
    anon = Client(site)
    for path in ("/", "/jobs/", "/apps/", "/workflows/", "/api/charts/"):
        status, body, _ = anon.request(path)
        assert status == 403, path
        assert 'name="token"' in body  # the login form
    status, _, _ = anon.request("/?token=wrong-token-xyz")
    assert status == 403
    assert not anon.cookie("balsam_web_")


def test_the_token_in_the_url_becomes_a_session_cookie_and_leaves_the_url(site: str) -> None:
    c = Client(site)
    status, _, headers = c.request(f"/jobs/?state=FAILED&token={TOKEN}", follow=False)
    assert status == 302
    assert headers["Location"] == "/jobs/?state=FAILED"
    assert c.cookie("balsam_web_")
    status, body, headers = c.request("/jobs/?state=FAILED")
    assert status == 200 and "Jobs" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]


def test_the_login_form_needs_csrf_and_the_right_token(site: str) -> None:
    c = Client(site)
    status, body, _ = c.request("/login/", {"token": TOKEN, "next": "/apps/"})
    assert status == 403 and "CSRF" in body  # no CSRF cookie/token: refused before the check
    status, body, _ = c.request("/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1)  # type: ignore[union-attr]
    status, _, _ = c.request("/login/", {"csrfmiddlewaretoken": csrf, "token": "nope-nope-nope"})
    assert status == 403
    status, _, headers = c.request("/login/", {"csrfmiddlewaretoken": csrf, "token": TOKEN,
                                               "next": "/apps/"}, follow=False)
    assert status == 302 and headers["Location"] == "/apps/"
    assert c.request("/apps/")[0] == 200


def test_kill_needs_post_and_csrf_then_kills_the_subtree(site: str, cursor) -> None:
    parent, child = insert_jobs(cursor, [{"name": "p", "state": "READY"},
                                         {"name": "c", "state": "AWAITING_PARENTS"}])
    cursor.execute("INSERT INTO core_jobdependency (parent_id, child_id) VALUES (%s, %s)",
                   [str(parent["job_id"]), str(child["job_id"])])
    c = Client(site)
    c.login()
    pid = str(parent["job_id"])
    assert c.request(f"/jobs/{pid}/kill/")[0] == 405  # GET is not an action
    status, body, _ = c.request(f"/jobs/{pid}/kill/", {"recursive": "1"})
    assert status == 403 and "CSRF" in body
    cursor.execute("SELECT state FROM core_balsamjob WHERE job_id = %s", [pid])
    assert cursor.fetchone()[0] == "READY"
    csrf = c.csrf(f"/jobs/{pid}/")
    status, body, _ = c.request(f"/jobs/{pid}/kill/", {"csrfmiddlewaretoken": csrf,
                                                       "recursive": "1"})
    assert status == 200 and "Killed 2 job(s)." in body
    cursor.execute("SELECT name, state FROM core_balsamjob ORDER BY name")
    assert cursor.fetchall() == [("c", "USER_KILLED"), ("p", "USER_KILLED")]
    cursor.execute("SELECT from_state, to_state, message FROM core_jobevent WHERE job_id = %s "
                   "ORDER BY id DESC LIMIT 1", [pid])
    assert cursor.fetchone() == ("READY", "USER_KILLED", "Killed by user from the web dashboard")


def test_retry_sends_a_job_that_ran_to_restart_ready_and_one_that_did_not_to_created(
        site: str, cursor) -> None:
    ran, never = insert_jobs(cursor, [{"name": "ran", "state": "PREPROCESSED"},
                                      {"name": "never", "state": "READY"}])
    from balsam.core import lifecycle

    lifecycle.transition(cursor, [ran["job_id"]], "RUNNING")
    lifecycle.transition(cursor, [ran["job_id"]], "RUN_ERROR")
    lifecycle.transition(cursor, [ran["job_id"], never["job_id"]], "FAILED")
    c = Client(site)
    c.login()
    for job, expected in ((ran, "RESTART_READY"), (never, "CREATED")):
        jid = str(job["job_id"])
        status, body, _ = c.request(f"/jobs/{jid}/retry/", {})
        assert status == 403
        status, body, _ = c.request(f"/jobs/{jid}/retry/", {"csrfmiddlewaretoken":
                                                            c.csrf(f"/jobs/{jid}/")})
        assert status == 200 and f"Retrying: the job is now {expected}." in body
        cursor.execute("SELECT state FROM core_balsamjob WHERE job_id = %s", [jid])
        assert cursor.fetchone()[0] == expected
    # A job that is not FAILED is left alone.
    jid = str(never["job_id"])
    status, body, _ = c.request(f"/jobs/{jid}/retry/", {"csrfmiddlewaretoken":
                                                        c.csrf(f"/jobs/{jid}/")})
    assert "Not retried: only a FAILED job can be retried." in body
    cursor.execute("SELECT state FROM core_balsamjob WHERE job_id = %s", [jid])
    assert cursor.fetchone()[0] == "CREATED"


def test_filtering_and_keyset_paging_over_10000_jobs(site: str, cursor) -> None:
    specs = [{"name": f"task{i:05d}", "workflow": f"wf{i % 4}", "application": f"app{i % 2}",
              "state": ("JOB_FINISHED", "FAILED", "READY", "RUNNING", "PREPROCESSED")[i % 5]}
             for i in range(10_000)]
    rows = insert_jobs(cursor, specs)
    c = Client(site)
    c.login()
    # Filter: wf1 and FAILED -> i % 4 == 1 and i % 5 == 1 -> i % 20 == 1: 500 jobs.
    expected = [str(r["job_id"]) for i, r in enumerate(rows) if i % 20 == 1]
    seen: list[str] = []
    path = "/jobs/?state=FAILED&wf=wf1&sort=created&dir=asc&size=200"
    pages = 0
    while path:
        status, body, _ = c.request(path)
        assert status == 200
        assert "500 matching" in body
        seen += job_ids_on_page(body)
        m = re.search(r'<a href="([^"]+)" id="next">', body)
        path = "/jobs/" + m.group(1).replace("&amp;", "&") if m else ""
        pages += 1
    assert pages == 3 and seen == expected
    # Back one page from the last one: the 200 jobs before it.
    m = re.search(r'<a href="([^"]+)" id="prev">', body)
    assert m
    status, body, _ = c.request("/jobs/" + m.group(1).replace("&amp;", "&"))
    assert job_ids_on_page(body) == expected[200:400]
    # Name substring (case-insensitive) with an app; an id prefix; no filter: newest first.
    status, body, _ = c.request("/jobs/?name=TASK012&app=app0&dir=asc")
    assert job_ids_on_page(body) == [str(rows[i]["job_id"]) for i in range(1200, 1300, 2)][:50]
    assert "50 matching" in body
    jid = str(rows[4321]["job_id"])
    status, body, _ = c.request(f"/jobs/?id={jid[:13]}")
    assert job_ids_on_page(body) == [jid]
    status, body, _ = c.request("/jobs/")
    assert "10000 matching" in body
    assert job_ids_on_page(body)[0] == str(rows[-1]["job_id"])  # newest first by default


def test_job_page_shows_history_relatives_and_the_output_tail(site: str, cursor, db: str) -> None:
    from balsam.core import schema

    a, b = insert_jobs(cursor, [{"name": "parent", "workflow": "w", "state": "JOB_FINISHED"},
                                {"name": "kid", "workflow": "w", "state": "READY"}])
    cursor.execute("INSERT INTO core_jobdependency (parent_id, child_id) VALUES (%s, %s)",
                   [str(a["job_id"]), str(b["job_id"])])
    workdir = schema.working_directory(db, "w", "kid", b["job_id"])
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "kid.out"), "w") as f:
        f.write("".join(f"line {i}\n" for i in range(20000)))
    c = Client(site)
    c.login()
    status, body, _ = c.request(f"/jobs/{b['job_id']}/")
    assert status == 200
    assert "CREATED → <span class=\"state s-READY\">READY</span>" in body
    assert f'href="/jobs/{a["job_id"]}/">parent</a>' in body
    assert "line 19999" in body and "line 100\n" not in body  # only the tail
    status, body, _ = c.request(f"/jobs/{a['job_id']}/")
    assert f'href="/jobs/{b["job_id"]}/">kid</a>' in body
    assert c.request("/jobs/00000000-0000-0000-0000-000000000000/")[0] == 404
    assert c.request("/jobs/not-a-uuid/")[0] == 404


def test_overview_apps_workflows_and_charts_render(site: str, cursor) -> None:
    cursor.execute("INSERT INTO core_applicationdefinition (name, description, executable, "
                   "preprocess, envscript, postprocess) VALUES ('sim', 'a sim', '/bin/true', "
                   "'', '', '')")
    rows = insert_jobs(cursor, [{"name": f"j{i}", "workflow": "camp", "application": "sim",
                                 "state": "PREPROCESSED"} for i in range(3)])
    from balsam.core import lifecycle

    lifecycle.transition(cursor, [r["job_id"] for r in rows], "RUNNING")
    lifecycle.transition(cursor, [rows[0]["job_id"]], "RUN_DONE")
    c = Client(site)
    c.login()
    status, body, _ = c.request("/")
    assert status == 200
    assert re.search(r"s-RUNNING\">RUNNING</a></td>\s*<td class=\"num\">2</td>", body)
    assert 'href="/jobs/?wf=camp">camp</a>' in body
    status, body, _ = c.request("/apps/")
    assert "/bin/true" in body and "a sim" in body
    status, body, _ = c.request("/workflows/")
    assert 'href="/jobs/?wf=camp">camp</a></td><td class="num">3</td>' in body
    import json

    status, body, _ = c.request("/api/charts/")
    data = json.loads(body)
    assert [s["label"] for s in data["throughput"]["series"]] == ["RUN_DONE", "JOB_FINISHED"]
    assert data["throughput"]["series"][0]["values"][-1] == 1
    assert data["utilization"]["series"][0]["values"][-1] == 2  # running tasks
    assert data["utilization"]["series"][1]["values"][-1] == 2.0  # busy nodes (1 each)


def test_binding_elsewhere_without_a_token_is_refused(db: str) -> None:
    r = run_balsam("web", "--bind", "0.0.0.0", "--port", "0",
                   env={"BALSAM_WEB_TOKEN": ""})
    assert r.returncode == 2
    assert r.stderr == ("balsam web: error: refusing to bind to 0.0.0.0 without an explicit "
                        "token: give --token T or set BALSAM_WEB_TOKEN (only localhost gets a "
                        "generated one)\n")
    assert r.stdout == ""


def test_a_generated_token_is_printed_and_works(db: str) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "balsam", "web", "--port", "0"],
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, BALSAM_DB_PATH=db, BALSAM_WEB_TOKEN=""))
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        m = re.search(r"open: (http://127\.0\.0\.1:\d+)/\?token=([A-Za-z0-9_-]{24})$",
                      lines[1].strip())
        assert m, lines
        c = Client(m.group(1))
        assert c.request("/")[0] == 403
        c.login(m.group(2))
        assert c.request("/apps/")[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
