"""The Globus Transfer backend against recorded Globus Transfer and Auth responses (issue 15).

The real ``globus_sdk`` clients run, built from the token file the way production builds them;
only the HTTP layer is replayed (``responses``). Recordings: globus-sdk's own
(``globus_sdk.testing``) where they fit, else tests/data/globus/ (origins in its README).
"""
from __future__ import annotations

import io
import json
import os
import stat
import sys
import time
from urllib.parse import parse_qs, urlparse

import pytest
import responses

try:  # globus-sdk 4 renamed the testing package
    from globus_sdk.testing import load_response
except ImportError:  # pragma: no cover - globus-sdk 3.x
    from globus_sdk._testing import load_response

from balsam.cli.main import main as balsam_main
from balsam.errors import BalsamError
from balsam.processing.transfers import globus_auth
from balsam.processing.transfers.globus import (
    GlobusError,
    GlobusItem,
    GlobusTransfer,
    parse_globus_url,
)

DATA = os.path.join(os.path.dirname(__file__), "data", "globus")
CLIENT = "6a3f1c4e-9b2d-4e1f-8a7c-3d5e6f708192"
SRC = "ddb59aef-6d04-11e5-ba46-22000b92c6ec"
DST = "ddb59af0-6d04-11e5-ba46-22000b92c6ec"
ACTIVE_TASK = "42277910-0c18-11ec-ba76-138ac5bdb19f"
SUCCEEDED_TASK = "7f3c1a52-d3a1-11f0-9c2b-0242ac120002"
FAILED_TASK = "9a0e4c36-d3a1-11f0-9c2b-0242ac120002"
TOKEN_URL = "https://auth.globus.org/v2/oauth2/token"


@pytest.fixture
def http():
    """The ``responses`` default mock, on for one test (globus-sdk's ``load_response`` uses it)."""
    responses.start()
    yield responses
    responses.stop()
    responses.reset()


def replay(name: str) -> None:
    """Register the recorded responses of tests/data/globus/<name> (same-URL ones in order)."""
    with open(os.path.join(DATA, name)) as fh:
        for r in json.load(fh)["responses"]:
            responses.add(r["method"], r["url"], json=r["json"], status=r["status"])


def logged_in(token_dir: str, expires_in: int = 3600) -> None:
    globus_auth.save_tokens(token_dir, CLIENT, {"access_token": "AT-stored", "refresh_token": "RT-stored",
                                                "expires_at_seconds": int(time.time()) + expires_in})


def tokens(token_dir: str) -> dict:
    with open(os.path.join(token_dir, "tokens.json")) as fh:
        return json.load(fh)


def calls(path_part: str) -> list:
    return [c for c in responses.calls if path_part in c.request.url]


def job_items() -> list[GlobusItem]:
    """Five jobs' inputs in one batch: files for jobs 1-3 and 5, a directory for job 4."""
    return [GlobusItem(1, "/data/in/run1/input.dat", "/scratch/wf/job1_aaaaaaaa/input.dat", False),
            GlobusItem(2, "/data/in/run2/input.dat", "/scratch/wf/job2_bbbbbbbb/input.dat", False),
            GlobusItem(3, "/data/in/run3/input.dat", "/scratch/wf/job3_cccccccc/input.dat", False),
            GlobusItem(4, "/data/in/run4/", "/scratch/wf/job4_dddddddd/run4/", True),
            GlobusItem(5, "/data/in/run5/input.dat", "/scratch/wf/job5_eeeeeeee/input.dat", False)]


# -- URLs ------------------------------------------------------------------------------------

def test_a_globus_url_gives_the_endpoint_and_the_absolute_path():
    assert parse_globus_url(f"globus://{SRC}/data/in/x.dat") == (SRC, "/data/in/x.dat")
    assert parse_globus_url(f" globus://{SRC.upper()}/~/x ") == (SRC, "/~/x")


@pytest.mark.parametrize("url, fragment", [
    ("gsiftp://host/x", "globus://ENDPOINT_UUID"),
    ("globus:///data/x", "no endpoint"),
    ("globus://my-laptop/data/x", "'my-laptop' is not an endpoint"),
    (f"globus://{SRC}", "no path"),
    (f"globus://{SRC}/a\nb", "control character"),
])
def test_a_bad_globus_url_is_one_clear_error(url, fragment):
    with pytest.raises(GlobusError, match=fragment) as info:
        parse_globus_url(url)
    assert isinstance(info.value, BalsamError) and "\n" not in str(info.value)


# -- submission --------------------------------------------------------------------------------

def test_one_task_carries_every_item_of_the_batch_with_checksum_sync(tmp_path, http):
    token_dir = str(tmp_path / "globus")
    logged_in(token_dir)
    load_response("transfer.get_submission_id")
    submitted = load_response("transfer.submit_transfer")
    task_id = GlobusTransfer(token_dir, CLIENT).submit(SRC, DST, job_items(), "balsam batch 7: wf/a")
    assert task_id == submitted.metadata["task_id"]
    post = calls("/v0.10/transfer")[-1].request
    assert post.headers["Authorization"] == "Bearer AT-stored"
    body = json.loads(post.body)
    assert body["source_endpoint"] == SRC and body["destination_endpoint"] == DST
    assert body["label"] == "balsam batch 7_ wf_a"  # Transfer's label alphabet
    # sync level 3 is "checksum" in the Transfer API's numbering (the SDK sends the number)
    assert (body["sync_level"], body["verify_checksum"], body["skip_source_errors"]) == (3, True, True)
    assert body["submission_id"] == submitted.metadata["submission_id"]
    assert [(d["source_path"], d["destination_path"], d["recursive"]) for d in body["DATA"]] == \
        [(i.source_path, i.destination_path, i.recursive) for i in job_items()]
    assert all(d["DATA_TYPE"] == "transfer_item" for d in body["DATA"])
    mapfile = os.path.join(token_dir, "tasks", f"{task_id}.json")
    assert stat.S_IMODE(os.stat(mapfile).st_mode) == 0o600


def test_a_stored_submission_id_is_sent_so_a_resent_batch_is_not_a_second_task(tmp_path, http):
    token_dir = str(tmp_path / "globus")
    logged_in(token_dir)
    load_response("transfer.get_submission_id")
    load_response("transfer.submit_transfer")
    transfer = GlobusTransfer(token_dir, CLIENT)
    sid = transfer.new_submission_id()
    transfer.submit(SRC, DST, job_items()[:1], "b", submission_id=sid)
    transfer.submit(SRC, DST, job_items()[:1], "b", submission_id=sid)
    sent = [json.loads(c.request.body)["submission_id"] for c in calls("/v0.10/transfer")]
    assert sent == [sid, sid] and len(calls("submission_id")) == 1


@pytest.mark.parametrize("items, fragment", [
    ([], "at least one item"),
    ([GlobusItem(1, "data/x", "/d/x", False)], "absolute"),
    ([GlobusItem(1, "/s/x", "/d/x", False), GlobusItem(2, "/s/y", "/d/x/", False)], "share"),
])
def test_a_bad_batch_is_refused_before_any_request(tmp_path, http, items, fragment):
    with pytest.raises(GlobusError, match=fragment):
        GlobusTransfer(str(tmp_path), CLIENT, transfer_client=object()).submit(SRC, DST, items, "x")
    assert len(responses.calls) == 0


def test_missing_consent_for_a_mapped_collection_says_how_to_log_in(tmp_path, http):
    token_dir = str(tmp_path / "globus")
    logged_in(token_dir)
    load_response("transfer.get_submission_id")
    replay("transfer_errors.json")
    with pytest.raises(GlobusError, match=r"ConsentRequired.*balsam globus login --data-access"):
        GlobusTransfer(token_dir, CLIENT).submit(SRC, DST, job_items(), "x")


# -- polling -----------------------------------------------------------------------------------

def test_an_active_task_reports_bytes_and_no_item_results(tmp_path, http):
    token_dir = str(tmp_path / "globus")
    logged_in(token_dir)
    replay("poll_active.json")
    status = GlobusTransfer(token_dir, CLIENT).poll(ACTIVE_TASK, items=job_items())
    assert (status.state, status.per_item, status.bytes_transferred) == ("ACTIVE", {}, 1048576)
    assert "CONNECTION_FAILED" in status.message
    assert len(responses.calls) == 1  # no result listings while the task runs


def test_a_paused_task_is_still_in_flight(tmp_path, http):
    token_dir = str(tmp_path / "globus")
    logged_in(token_dir)
    replay("poll_inactive.json")
    status = GlobusTransfer(token_dir, CLIENT).poll("5b1a7e0c-d3a1-11f0-9c2b-0242ac120002", items=job_items())
    assert status.state == "ACTIVE" and status.per_item == {}
    assert status.message == "Globus task paused: paused by an administrator"


def test_a_succeeded_task_fails_only_the_skipped_items_across_pages(tmp_path, http):
    token_dir = str(tmp_path / "globus")
    logged_in(token_dir)
    replay("poll_succeeded_partial.json")
    items = job_items()[:4]
    status = GlobusTransfer(token_dir, CLIENT).poll(SUCCEEDED_TASK, items=items)
    assert status.state == "SUCCEEDED" and status.bytes_transferred == 4096
    assert status.per_item[1] is None and status.per_item[3] is None
    assert status.per_item[2] == ("Globus skipped /data/in/run2/input.dat: FILE_NOT_FOUND "
                                  "(No such file or directory)")
    assert status.per_item[4].startswith("Globus skipped /data/in/run4/secret.dat: PERMISSION_DENIED")
    assert "Permission denied" in status.per_item[4]
    pages = calls("skipped_errors")
    assert len(pages) == 2
    assert parse_qs(urlparse(pages[1].request.url).query)["marker"] == ["MjAyNi0xMi0wNlQwMzowMTowNQ"]


def test_a_failed_task_maps_each_item_to_its_own_outcome(tmp_path, http):
    token_dir = str(tmp_path / "globus")
    logged_in(token_dir)
    load_response("transfer.get_submission_id")
    load_response("transfer.submit_transfer")
    transfer = GlobusTransfer(token_dir, CLIENT)
    submitted = transfer.submit(SRC, DST, job_items(), "b")  # remembers the items (map file)
    os.rename(os.path.join(token_dir, "tasks", f"{submitted}.json"),  # as if Globus had named it so
              os.path.join(token_dir, "tasks", f"{FAILED_TASK}.json"))
    replay("poll_failed.json")
    status = GlobusTransfer(token_dir, CLIENT).poll(FAILED_TASK)  # a new process: items from the map
    assert status.state == "FAILED" and status.bytes_transferred == 2048
    assert status.message == "Globus task failed: CANCELED (canceled)"
    assert status.per_item[1] is None  # listed in successful_transfers (its older fault was retried)
    assert status.per_item[2].startswith("Globus skipped /data/in/run2/input.dat: FILE_NOT_FOUND")
    assert status.per_item[3] == ("Globus error on /scratch/wf/job3_cccccccc/: PERMISSION_DENIED "
                                  "(permission denied): Path not allowed.")
    assert status.per_item[4] == status.per_item[5] == "Globus task failed: CANCELED (canceled)"
    assert all("\n" not in (m or "") for m in status.per_item.values())
    ok_pages, event_pages = calls("successful_transfers"), calls("event_list")
    assert parse_qs(urlparse(ok_pages[1].request.url).query)["marker"] == ["OTM5Nzk"]
    assert [parse_qs(urlparse(c.request.url).query).get("offset") for c in event_pages] == [None, ["2"]]


def test_polling_a_task_without_its_items_is_a_clear_error(tmp_path, http):
    token_dir = str(tmp_path / "globus")
    logged_in(token_dir)
    replay("poll_succeeded_partial.json")
    with pytest.raises(GlobusError, match="no item map for Globus task"):
        GlobusTransfer(token_dir, CLIENT).poll(SUCCEEDED_TASK)
    with pytest.raises(GlobusError, match="not a Globus task id"):
        GlobusTransfer(token_dir, CLIENT).poll("../../etc/passwd", items=[])


def test_cancel_asks_globus_to_cancel_the_task(tmp_path, http):
    token_dir = str(tmp_path / "globus")
    logged_in(token_dir)
    replay("cancel.json")
    GlobusTransfer(token_dir, CLIENT).cancel(ACTIVE_TASK)
    assert calls(f"/task/{ACTIVE_TASK}/cancel")[0].request.method == "POST"


# -- tokens ------------------------------------------------------------------------------------

def test_an_expired_access_token_is_refreshed_and_written_back_owner_only(tmp_path, http):
    token_dir = str(tmp_path / "globus")
    logged_in(token_dir, expires_in=-60)
    replay("auth_refresh.json")
    replay("poll_active.json")
    GlobusTransfer(token_dir, CLIENT).poll(ACTIVE_TASK, items=[])
    refresh = calls(TOKEN_URL)[0].request
    assert parse_qs(refresh.body)["grant_type"] == ["refresh_token"]
    assert parse_qs(refresh.body)["refresh_token"] == ["RT-stored"]
    assert calls("/task/")[0].request.headers["Authorization"] == "Bearer AT-refreshed"
    saved = tokens(token_dir)
    assert (saved["access_token"], saved["refresh_token"]) == ("AT-refreshed", "RT-rotated")
    assert saved["expires_at_seconds"] > time.time() + 3600
    assert stat.S_IMODE(os.stat(os.path.join(token_dir, "tokens.json")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(token_dir).st_mode) == 0o700
    assert [n for n in os.listdir(token_dir) if n.startswith(".tmp-")] == []


def test_a_revoked_refresh_token_says_to_log_in_again(tmp_path, http):
    token_dir = str(tmp_path / "globus")
    logged_in(token_dir, expires_in=-60)
    load_response("auth.oauth2_exchange_code_for_tokens", case="invalid_grant")
    with pytest.raises(GlobusError, match=r"expired or was revoked.*run `balsam globus login`$"):
        GlobusTransfer(token_dir, CLIENT).poll(ACTIVE_TASK, items=[])
    assert tokens(token_dir)["refresh_token"] == "RT-stored"  # nothing half-written


def test_a_token_transfer_no_longer_accepts_is_refreshed_once_then_says_to_log_in(tmp_path, http):
    token_dir = str(tmp_path / "globus")
    logged_in(token_dir)
    replay("transfer_errors.json")  # every GET of the task: 401
    replay("auth_refresh.json")
    with pytest.raises(GlobusError, match=r"401 AuthenticationFailed.*run `balsam globus login`"):
        GlobusTransfer(token_dir, CLIENT).poll(ACTIVE_TASK, items=[])
    tried = [c.request.headers["Authorization"] for c in calls("/task/")]
    assert tried == ["Bearer AT-stored", "Bearer AT-refreshed"]  # the SDK's one retry after a 401


def test_missing_or_exposed_tokens_are_refused_with_the_fix(tmp_path):
    token_dir = str(tmp_path / "globus")
    with pytest.raises(GlobusError, match="no Globus login for this Balsam DB.*balsam globus login"):
        GlobusTransfer(token_dir, CLIENT).poll(ACTIVE_TASK, items=[])
    logged_in(token_dir)
    os.chmod(os.path.join(token_dir, "tokens.json"), 0o644)
    with pytest.raises(GlobusError, match="readable by others"):
        GlobusTransfer(token_dir, CLIENT).poll(ACTIVE_TASK, items=[])
    os.chmod(os.path.join(token_dir, "tokens.json"), 0o600)
    with pytest.raises(GlobusError, match="issued to client"):
        GlobusTransfer(token_dir, "00000000-0000-0000-0000-000000000000").poll(ACTIVE_TASK, items=[])


# -- login, status, logout (the CLI, in process so the HTTP layer can be replayed) ---------------

@pytest.fixture
def fake_db(tmp_path, monkeypatch):
    """A DB directory as far as `balsam globus` needs one (it never talks to PostgreSQL)."""
    path = tmp_path / "db"
    path.mkdir()
    (path / "server-info").write_text("{}\n")
    monkeypatch.setenv("BALSAM_DB_PATH", str(path))
    return str(path)


def test_login_prints_a_url_reads_the_code_on_stdin_and_stores_tokens_0600(fake_db, http, monkeypatch,
                                                                          capsys):
    replay("auth_login.json")
    monkeypatch.setattr("sys.stdin", io.StringIO("the-code-from-the-browser\n"))
    assert balsam_main(["globus", "login", "--client-id", CLIENT, "--data-access", DST]) == 0
    out = capsys.readouterr().out
    url = next(line for line in out.splitlines() if line.startswith("https://auth.globus.org/"))
    query = parse_qs(urlparse(url).query)
    assert query["client_id"] == [CLIENT] and query["access_type"] == ["offline"]
    assert query["code_challenge_method"] == ["S256"]
    assert f"https://auth.globus.org/scopes/{DST}/data_access" in query["scope"][0]
    exchange = parse_qs(calls(TOKEN_URL)[0].request.body)
    assert exchange["code"] == ["the-code-from-the-browser"] and "code_verifier" in exchange
    token_dir = os.path.join(fake_db, "globus")
    assert tokens(token_dir)["refresh_token"] == "RT-login" and tokens(token_dir)["client_id"] == CLIENT
    assert stat.S_IMODE(os.stat(os.path.join(token_dir, "tokens.json")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(token_dir).st_mode) == 0o700
    assert "logged in to Globus" in out


def test_login_with_no_code_or_a_refused_code_stores_nothing(fake_db, http, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert balsam_main(["globus", "login", "--client-id", CLIENT]) == 2
    assert "no authorization code" in capsys.readouterr().err
    load_response("auth.oauth2_exchange_code_for_tokens", case="invalid_grant")
    monkeypatch.setattr("sys.stdin", io.StringIO("stale-code\n"))
    assert balsam_main(["globus", "login", "--client-id", CLIENT]) == 2
    err = capsys.readouterr().err
    assert "Globus rejected the authorization code" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(os.path.join(fake_db, "globus", "tokens.json"))


def test_status_and_logout_revoke_and_delete_the_tokens(fake_db, http, capsys):
    token_dir = os.path.join(fake_db, "globus")
    logged_in(token_dir)
    assert balsam_main(["globus", "status"]) == 0
    assert f"client {CLIENT}" in capsys.readouterr().out
    load_response("auth.oauth2_revoke_token")
    assert balsam_main(["globus", "logout"]) == 0
    revoked = sorted(parse_qs(c.request.body)["token"][0] for c in calls("/v2/oauth2/token/revoke"))
    assert revoked == ["AT-stored", "RT-stored"]
    assert not os.path.exists(os.path.join(token_dir, "tokens.json"))
    assert balsam_main(["globus", "status"]) == 2
    assert "run `balsam globus login`" in capsys.readouterr().err


def test_without_globus_sdk_the_error_says_how_to_install_it(fake_db, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "globus_sdk", None)  # as if not installed
    with pytest.raises(GlobusError, match=r"need globus-sdk: pip install 'balsam-classic\[globus\]'"):
        GlobusTransfer(fake_db, CLIENT).submit(SRC, DST, job_items(), "x")
    monkeypatch.setattr("sys.stdin", io.StringIO("code\n"))
    assert balsam_main(["globus", "login", "--client-id", CLIENT]) == 2
    err = capsys.readouterr().err
    assert err.startswith("balsam globus: error: Globus transfers need globus-sdk") and err.count("\n") == 1


def test_a_token_directory_that_cannot_be_made_is_one_line_and_no_login(tmp_path, http, monkeypatch):
    (tmp_path / "db").write_text("a file where the DB directory should be\n")
    replay("auth_login.json")
    monkeypatch.setattr("sys.stdin", io.StringIO("code\n"))
    with pytest.raises(GlobusError, match=r"cannot write .*/db/globus/tokens.json"):
        globus_auth.login(str(tmp_path / "db" / "globus"), CLIENT, show=lambda _: None)
    assert (tmp_path / "db").read_text().startswith("a file")


def test_a_task_whose_item_map_cannot_be_saved_still_returns_its_id(tmp_path, http, caplog):
    token_dir = str(tmp_path / "globus")
    logged_in(token_dir)
    (tmp_path / "globus" / "tasks").write_text("not a directory\n")
    load_response("transfer.get_submission_id")
    submitted = load_response("transfer.submit_transfer")
    task_id = GlobusTransfer(token_dir, CLIENT).submit(SRC, DST, job_items(), "b")
    assert task_id == submitted.metadata["task_id"]
    assert "the item map was not saved" in caplog.text


def test_a_data_access_collection_that_is_no_uuid_is_refused_before_any_request(tmp_path, http):
    with pytest.raises(GlobusError, match="the Globus collection must be a UUID, not 'my laptop'"):
        globus_auth.login(str(tmp_path), CLIENT, data_access=["my laptop"], read_code=lambda _: "x")
    assert len(responses.calls) == 0 and not os.listdir(tmp_path)
