"""Transfer items sent in batches (balsam.processing.transfers): real rsync and scp over SSH to
a throwaway sshd on localhost, local copies, a Globus-shaped asynchronous plug-in, and a sender
killed mid-batch. Connections are counted in sshd's log."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from dataclasses import astuple, dataclass, field
from typing import Any, Optional

import pytest
import sshd_support
from conftest import make_public_tmpdir
from launcher_support import add_app, add_jobs, settings

from balsam.core import lifecycle, schema
from balsam.db import dbsettings
from balsam.db.database import Database
from balsam.processing import transitions
from balsam.processing.transfers import items as titems
from balsam.processing.transfers import locate
from balsam.processing.transfers.step import TransferStep

HOST = sshd_support.HOST


@pytest.fixture(scope="module")
def sshd():
    base = make_public_tmpdir("balsam-sshd-")
    try:
        server = sshd_support.start(os.path.join(base, "keys"))
    except sshd_support.Unavailable as exc:
        pytest.skip(f"no throwaway sshd: {exc}")
    yield server
    server.stop()
    subprocess.run(["rm", "-rf", base], check=False)


@pytest.fixture
def area():
    path = make_public_tmpdir("balsam-xfer-")
    yield path
    subprocess.run(["rm", "-rf", path], check=False)


def ready_jobs(cursor: Any, specs: list[dict[str, Any]]) -> list[str]:
    """Insert jobs of the app ``echo`` and advance them to READY (their stage-in is due)."""
    cursor.execute(f"SELECT 1 FROM {schema.APP_TABLE} WHERE name = 'echo'")
    if cursor.fetchone() is None:
        add_app(cursor, "echo", "/bin/echo")
    ids = add_jobs(cursor, [{"application": "echo", **s} for s in specs])
    transitions.advance(cursor)
    return ids


def job_states(cursor: Any, ids: list[str]) -> dict[str, str]:
    cursor.execute(f"SELECT job_id, state FROM {schema.JOB_TABLE} WHERE job_id = ANY(%s::uuid[])",
                   [ids])
    return {str(j): s for j, s in cursor.fetchall()}


def last_message(cursor: Any, job_id: str) -> str:
    cursor.execute(f"SELECT message FROM {schema.EVENT_TABLE} WHERE job_id = %s "
                   "ORDER BY id DESC LIMIT 1", [job_id])
    return cursor.fetchone()[0]


def drain(db_path: str, *, timeout: float = 30, states: tuple[str, ...] = ("READY",)) -> None:
    """Run transfer passes until no job is in ``states`` with transfer work left."""
    conn = Database(db_path, "test-transfers")
    step = TransferStep(db_path, dbsettings.load(db_path))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            step.run_pass(conn)
            left = conn.run(_open_work, list(states))
            if not left and not step.busy():
                return
            step.wait(0.05)
        raise AssertionError(f"transfers still open after {timeout} s")
    finally:
        step.close()
        conn.close()


def _open_work(cursor: Any, states: list[str]) -> int:
    cursor.execute(f"""SELECT count(*) FROM {schema.JOB_TABLE} j WHERE j.state = ANY(%s)
                       AND (j.stage_in_url <> '' OR j.stage_out_url <> '' OR EXISTS (
                           SELECT 1 FROM {schema.TRANSFER_SLOT_TABLE} s
                           WHERE s.job_id = j.job_id))""", [states])
    return int(cursor.fetchone()[0])


def transfer_settings(db: str, sshd: Optional[sshd_support.Sshd] = None, **values: Any):
    section = {"ssh_config_file": sshd.config if sshd else "", "retry_backoff_seconds": 0,
               **values}
    return settings(db, transfers=section)


def test_urls_name_protocol_endpoint_and_path():
    assert astuple(locate("rsync:user@h:/data/x")) == ("rsync", "user@h", "/data/x")
    assert astuple(locate("scp:h:rel/x")) == ("scp", "h", "rel/x")
    assert astuple(locate("/abs/x")) == ("local", "", "/abs/x")
    uuid = "0c1a7e0e-1b4f-4f53-8d1c-0a9d2a5b9f10"
    assert astuple(locate(f"globus://{uuid}/data/in.dat")) == ("globus", uuid, "/data/in.dat")
    assert astuple(locate("gsiftp://gridftp.site.org/p"))[:2] == ("gsiftp", "gridftp.site.org")


@pytest.mark.slow
def test_a_thousand_jobs_stage_in_and_out_over_two_ssh_connections(db, cursor, sshd, area):
    remote_in, remote_out = os.path.join(area, "in"), os.path.join(area, "out")
    os.mkdir(remote_in)
    os.chmod(area, 0o751)  # the directories above a destination keep their modes
    tmp_mode = os.stat("/tmp").st_mode
    for i in range(1000):
        if i != 7:  # job 7's input is missing on the remote side
            with open(os.path.join(remote_in, f"f{i}.dat"), "w") as fh:
                fh.write(f"input {i}\n")
    ids = ready_jobs(cursor, [{"name": f"j{i}", "stage_in_url": f"rsync:{HOST}:{remote_in}/f{i}.dat",
                               "stage_out_url": f"rsync:{HOST}:{remote_out}",
                               "stage_out_files": "out*.txt"} for i in range(1000)])
    before = sshd.connections()
    with transfer_settings(db, sshd, batch_items=500, max_attempts=2):
        drain(db)
        assert sshd.connections() - before == 2  # 2 batches of 500: one rsync each
        got = job_states(cursor, ids)
        assert got.pop(ids[7]) == "FAILED"
        assert set(got.values()) == {"PREPROCESSED"}
        assert "f7.dat" in last_message(cursor, ids[7])
        assert "No such file" in last_message(cursor, ids[7])
        assert last_message(cursor, ids[3]) == "nothing to preprocess: ready to run"
        cursor.execute(f"SELECT count(*), sum(bytes) FROM {schema.TRANSFER_BATCH_TABLE}")
        assert cursor.fetchone() == (2, sum(len(f"input {i}\n") for i in range(1000) if i != 7))
        ok = [j for j in ids if j != ids[7]]
        for n, job_id in enumerate(ids):
            wd = schema.working_directory(db, "wf", f"j{n}", job_id)
            if n != 7:
                with open(os.path.join(wd, f"f{n}.dat")) as fh:
                    assert fh.read() == f"input {n}\n"
                with open(os.path.join(wd, f"out{n}.txt"), "w") as fh:
                    fh.write(f"output {n}\n")
        lifecycle.transition(cursor, ok, "RUNNING")
        lifecycle.transition(cursor, ok, "RUN_DONE")
        transitions.advance(cursor)
        before = sshd.connections()
        drain(db, states=("POSTPROCESSED",))
        assert sshd.connections() - before == 2
    assert set(job_states(cursor, ok).values()) == {"JOB_FINISHED"}
    assert last_message(cursor, ok[0]) == f"staged out 1 file(s) to rsync:{HOST}:{remote_out}"
    assert len(os.listdir(remote_out)) == 999
    assert os.stat(area).st_mode & 0o7777 == 0o751 and os.stat("/tmp").st_mode == tmp_mode
    with open(os.path.join(remote_out, "out999.txt")) as fh:
        assert fh.read() == "output 999\n"


def test_scp_batches_share_one_connection_and_a_missing_file_fails_only_its_job(
        db, cursor, sshd, area):
    for i in range(5):
        with open(os.path.join(area, f"s{i}"), "w") as fh:
            fh.write(str(i))
    urls = [f"scp:{HOST}:{area}/s{i}" for i in range(5)] + [f"scp:{HOST}:{area}/nothing"]
    ids = ready_jobs(cursor, [{"name": f"s{i}", "stage_in_url": u} for i, u in enumerate(urls)])
    before = sshd.connections()
    with transfer_settings(db, sshd):
        drain(db)
    assert sshd.connections() - before == 1
    got = job_states(cursor, ids)
    assert [got[j] for j in ids] == ["PREPROCESSED"] * 5 + ["FAILED"]
    assert last_message(cursor, ids[5]).startswith("stage-in failed: stage-in from ")
    assert "nothing" in last_message(cursor, ids[5])


def test_local_items_are_copied_and_a_transient_failure_is_retried(db, cursor, area):
    src = os.path.join(area, "data")
    os.mkdir(src)
    with open(os.path.join(src, "a.txt"), "w") as fh:
        fh.write("a")
    ids = ready_jobs(cursor, [{"name": "dir", "stage_in_url": f"local:{src}"},
                              {"name": "glob", "stage_in_url": f"{src}/*"},
                              {"name": "gone", "stage_in_url": f"{area}/missing"}])
    with transfer_settings(db, max_attempts=3):
        drain(db)
    got = job_states(cursor, ids)
    assert [got[j] for j in ids] == ["PREPROCESSED", "PREPROCESSED", "FAILED"]
    wd = schema.working_directory(db, "wf", "dir", ids[0])
    assert os.listdir(os.path.join(wd, "data")) == ["a.txt"]
    cursor.execute(f"SELECT attempts, state FROM {schema.TRANSFER_ITEM_TABLE} "
                   "WHERE job_id = %s", [ids[2]])
    assert cursor.fetchone() == (1, "failed")  # a missing source is not retried


def test_a_sender_killed_mid_batch_loses_nothing_and_no_job_moves_on(db, cursor, sshd, area):
    slow_bin = os.path.join(area, "bin")
    os.mkdir(slow_bin)
    with open(os.path.join(slow_bin, "rsync"), "w") as fh:
        fh.write("#!/bin/sh\nsleep 60\nexec /usr/bin/rsync \"$@\"\n")
    os.chmod(os.path.join(slow_bin, "rsync"), 0o755)
    for i in range(3):
        with open(os.path.join(area, f"k{i}"), "w") as fh:
            fh.write(str(i))
    ids = ready_jobs(cursor, [{"name": f"k{i}", "stage_in_url": f"rsync:{HOST}:{area}/k{i}"}
                              for i in range(3)])
    code = textwrap.dedent(f"""
        import time
        from balsam.db import dbsettings
        from balsam.db.database import Database
        from balsam.processing.transfers.step import TransferStep
        step = TransferStep({db!r}, dbsettings.load({db!r}))
        conn = Database({db!r})
        end = time.monotonic() + 600  # bounded: outlives no interrupted test by long
        while time.monotonic() < end:
            step.run_pass(conn)
            time.sleep(0.1)
    """)
    with transfer_settings(db, sshd):
        env = dict(os.environ, PATH=f"{slow_bin}:{os.environ['PATH']}")
        sender = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                cursor.execute(f"SELECT count(*) FROM {schema.TRANSFER_ITEM_TABLE} "
                               "WHERE state = 'active'")
                if cursor.fetchone()[0] == 3:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the batch never became active")
        finally:
            os.killpg(sender.pid, signal.SIGKILL)
            sender.wait(10)
        assert set(job_states(cursor, ids).values()) == {"READY"}
        drain(db)
    assert set(job_states(cursor, ids).values()) == {"PREPROCESSED"}
    cursor.execute(f"SELECT state FROM {schema.TRANSFER_BATCH_TABLE} ORDER BY id")
    assert [r[0] for r in cursor.fetchall()] == ["lost", "done"]
    cursor.execute(f"SELECT DISTINCT state, attempts FROM {schema.TRANSFER_ITEM_TABLE}")
    assert cursor.fetchall() == [("done", 1)]
    for i, job_id in enumerate(ids):
        with open(os.path.join(schema.working_directory(db, "wf", f"k{i}", job_id),
                               f"k{i}")) as fh:
            assert fh.read() == str(i)


# ---- an asynchronous plug-in: the Globus backend's interface, faked -----------------------------
UUID_REMOTE = "11111111-2222-3333-4444-555555555555"
UUID_SITE = "66666666-7777-8888-9999-000000000000"


@dataclass
class FakeGlobus:
    """What the backend was asked, and the answers it gives (one per poll)."""

    submitted: list[tuple[str, str, list[Any], str]] = field(default_factory=list)
    answers: list[Any] = field(default_factory=list)


def fake_backend(record: FakeGlobus) -> types.ModuleType:
    module = types.ModuleType("balsam.processing.transfers.globus")

    @dataclass(frozen=True)
    class GlobusItem:
        item_id: int
        source_path: str
        destination_path: str
        recursive: bool

    @dataclass
    class GlobusTaskStatus:
        state: str
        per_item: dict
        bytes_transferred: int

    class GlobusError(Exception):
        pass

    class GlobusTransfer:
        def __init__(self, token_dir: str, client_id: str, transfer_client: Any = None):
            assert client_id == "client-1"

        def submit(self, source_endpoint, destination_endpoint, items, label):
            record.submitted.append((source_endpoint, destination_endpoint, list(items), label))
            return "task-1"

        def poll(self, task_id):
            assert task_id == "task-1"
            state, per_item = record.answers.pop(0) if record.answers else ("ACTIVE", {})
            return GlobusTaskStatus(state, per_item, 42)

    module.GlobusItem, module.GlobusTaskStatus = GlobusItem, GlobusTaskStatus
    module.GlobusError, module.GlobusTransfer = GlobusError, GlobusTransfer
    return module


def test_globus_batches_are_submitted_once_polled_and_failures_map_to_their_jobs(
        db, cursor, monkeypatch):
    record = FakeGlobus()
    monkeypatch.setitem(sys.modules, "balsam.processing.transfers.globus", fake_backend(record))
    ids = ready_jobs(cursor, [{"name": f"g{i}", "stage_in_url": f"globus://{UUID_REMOTE}/d/g{i}"}
                              for i in range(3)])
    conn = Database(db, "test-globus")
    with transfer_settings(db, globus_endpoint_id=UUID_SITE, globus_client_id="client-1",
                           poll_seconds=0.01):
        step = TransferStep(db, dbsettings.load(db))
        step.run_pass(conn)
        assert len(record.submitted) == 1
        source, dest, entries, label = record.submitted[0]
        assert (source, dest, label) == (UUID_REMOTE, UUID_SITE, "balsam stage-in 3 item(s)")
        entries.sort(key=lambda e: e.source_path)
        assert [e.source_path for e in entries] == ["/d/g0", "/d/g1", "/d/g2"]
        assert entries[0].destination_path == os.path.join(
            schema.working_directory(db, "wf", "g0", ids[0]), "g0")
        assert not any(e.recursive for e in entries)
        record.answers = [("FAILED", {entries[0].item_id: None,
                                                      entries[1].item_id: None,
                                                      entries[2].item_id: "permission denied"})]
        assert set(job_states(cursor, ids).values()) == {"READY"}
        time.sleep(0.02)
        step.run_pass(conn)
        step.close()
    conn.close()
    got = job_states(cursor, ids)
    assert [got[j] for j in ids[:2]] == ["PREPROCESSED", "PREPROCESSED"]
    cursor.execute(f"SELECT task_id, bytes FROM {schema.TRANSFER_BATCH_TABLE}")
    assert cursor.fetchone()[0] == "task-1"
    # the failed item is retried within its attempts: a second task is submitted
    assert got[ids[2]] == "READY"
    cursor.execute(f"SELECT state, attempts, error FROM {schema.TRANSFER_ITEM_TABLE} "
                   "WHERE job_id = %s", [ids[2]])
    assert cursor.fetchone() == ("pending", 1, "permission denied")


def test_a_globus_task_that_succeeded_without_listing_items_delivers_them_all(
        db, cursor, monkeypatch):
    record = FakeGlobus(answers=[("SUCCEEDED", {})])
    monkeypatch.setitem(sys.modules, "balsam.processing.transfers.globus", fake_backend(record))
    ids = ready_jobs(cursor, [{"name": f"s{i}", "stage_in_url": f"globus://{UUID_REMOTE}/d/s{i}/"}
                              for i in range(2)])
    with transfer_settings(db, globus_endpoint_id=UUID_SITE, globus_client_id="client-1",
                           poll_seconds=0.01):
        drain(db)
    assert set(job_states(cursor, ids).values()) == {"PREPROCESSED"}
    assert all(e.recursive for e in record.submitted[0][2])  # a trailing / sends a directory


def test_items_are_made_from_job_rows_once(db, cursor, area):
    ids = ready_jobs(cursor, [{"name": "x", "stage_in_url": f"{area}/x"}])
    assert titems.create_items(cursor, db, None, 100) == 1
    assert titems.create_items(cursor, db, None, 100) == 0
    cursor.execute(f"SELECT job_id, direction, protocol, endpoint, state FROM "
                   f"{schema.TRANSFER_ITEM_TABLE}")
    assert [(str(r[0]), *r[1:]) for r in cursor.fetchall()] == [
        (ids[0], "in", "local", "", "pending")]


def test_ls_transfers_shows_items_batches_and_json(db, cursor, area, balsam_cli):
    import json

    with open(os.path.join(area, "in.dat"), "w") as fh:
        fh.write("12345")
    ids = ready_jobs(cursor, [{"name": "a", "stage_in_url": f"{area}/in.dat"},
                              {"name": "b", "stage_in_url": f"{area}/gone.dat"}])
    with transfer_settings(db):
        drain(db)
    table = balsam_cli("ls", "transfers")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    cells = [[c.strip() for c in ln.split("|")] for ln in lines if "|" in ln]
    assert cells[0][:8] == ["id", "job", "direction", "state", "protocol", "endpoint", "batch",
                            "bytes"]
    assert sorted(c[1:4] + c[7:8] for c in cells[1:]) == sorted(
        [[ids[0][:8], "in", "done", "5"], [ids[1][:8], "in", "failed", ""]])
    failed = balsam_cli("ls", "transfers", "--state", "failed", "--format", "json")
    assert failed.returncode == 0, failed.stderr
    rows = json.loads(failed.stdout)
    assert [(r["job_id"], r["state"]) for r in rows] == [(ids[1], "failed")]
    assert "does not exist" in rows[0]["error"]
    quiet = balsam_cli("ls", "transfers", "--id", ids[0][:8], "--quiet")
    assert quiet.stdout.strip().isdigit()
    batches = balsam_cli("ls", "transfers", "--verbose")
    assert batches.returncode == 0 and "local" in batches.stdout and "failed" in batches.stdout


def test_top_and_report_show_transfers(db, cursor, area, balsam_cli):
    with open(os.path.join(area, "in.dat"), "w") as fh:
        fh.write("x" * 2000)
    ready_jobs(cursor, [{"name": "a", "stage_in_url": f"{area}/in.dat"},
                        {"name": "b", "stage_in_url": f"rsync:{HOST}:/in.dat"}])
    titems.create_items(cursor, db, None, 100)
    top = balsam_cli("top", "--once")
    assert top.returncode == 0, top.stderr
    assert "Transfers: 2 pending, 0 active" in top.stdout
    assert any(ln.startswith("rsync") and HOST in ln for ln in top.stdout.splitlines())
    cursor.execute(f"UPDATE {schema.TRANSFER_ITEM_TABLE} SET endpoint = '' "
                   "WHERE protocol = 'rsync'")  # no sshd needed: sent as a local rsync
    with transfer_settings(db):
        drain(db)
    report = balsam_cli("report")
    assert report.returncode == 0, report.stderr
    assert "Transfers: 1 done (2.0 kB), 1 failed, 0 pending, 0 active" in report.stdout
    assert "Transfer throughput (last 1h): 1 items, 2.0 kB in 1 batch(es)" in report.stdout


def test_the_dashboard_transfers_tab_lists_counts_batches_and_failures(db, cursor, area):
    from web_support import TOKEN, Client, web_server

    with open(os.path.join(area, "in.dat"), "w") as fh:
        fh.write("x" * 1500)
    ready_jobs(cursor, [{"name": "good", "stage_in_url": f"{area}/in.dat"},
                        {"name": "bad", "stage_in_url": f"{area}/gone.dat"}])
    with transfer_settings(db):
        drain(db)
    with web_server(db, "--token", TOKEN) as base:
        client = Client(base)
        client.login()
        status, body, _ = client.request("/transfers/")
    assert status == 200
    assert 'href="/transfers/" class="here">Transfers</a>' in body
    counts = body.split('id="transfer-counts"')[1].split("</table>")[0]
    assert '<td class="num">1</td><td class="num">1</td>' in counts  # done, failed
    assert "1.5 kB" in counts
    assert "<td>local</td><td>(local)</td><td>in</td><td>failed</td>" in body
    failures = body.split('id="transfer-failures"')[1]
    assert ">bad</a>" in failures and "does not exist" in failures


def test_a_job_retried_after_a_failed_stage_in_gets_new_items(db, cursor, area):
    (job_id,) = ready_jobs(cursor, [{"name": "r", "stage_in_url": f"{area}/late.dat"}])
    with transfer_settings(db):
        drain(db)
        assert job_states(cursor, [job_id]) == {job_id: "FAILED"}
        with open(os.path.join(area, "late.dat"), "w") as fh:
            fh.write("now here")
        lifecycle.transition(cursor, [job_id], "CREATED", "retry", user=True)
        transitions.advance(cursor)
        assert job_states(cursor, [job_id]) == {job_id: "READY"}
        drain(db)
    assert job_states(cursor, [job_id]) == {job_id: "PREPROCESSED"}
    cursor.execute(f"SELECT state FROM {schema.TRANSFER_ITEM_TABLE}")
    assert cursor.fetchall() == [("done",)]


def test_pending_items_of_a_killed_job_are_not_sent(db, cursor, area):
    (job_id,) = ready_jobs(cursor, [{"name": "k", "stage_in_url": f"{area}/x.dat"}])
    titems.create_items(cursor, db, None, 100)
    lifecycle.kill(cursor, [job_id])
    titems.create_items(cursor, db, None, 100)
    cursor.execute(f"SELECT state, error FROM {schema.TRANSFER_ITEM_TABLE}")
    assert cursor.fetchall() == [("failed", "not sent: the job is USER_KILLED")]
