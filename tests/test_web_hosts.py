"""The dashboard answers only to the Host names of its bind address (issue 12, item 9): a page a
foreign site loads through DNS rebinding (its own name, pointing at this machine) gets 400, even
with the token; localhost names, the bind address and ``--allowed-host`` names work. Real
``balsam web`` processes over real HTTP."""
from __future__ import annotations

import socket

from tests.conftest import run_balsam
from tests.web_support import TOKEN, Client, web_server

FOREIGN = "rebind.attacker.example"


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def test_allowed_hosts_follow_the_bind_address():
    from balsam.web.server import LOOPBACK_HOSTS, allowed_hosts

    assert allowed_hosts("127.0.0.1") == list(LOOPBACK_HOSTS)
    assert allowed_hosts("10.1.2.3") == [*LOOPBACK_HOSTS, "10.1.2.3"]
    assert allowed_hosts("fe80::1") == [*LOOPBACK_HOSTS, "[fe80::1]"]
    assert allowed_hosts("Login1.Site.Org", [".site.org"]) == [*LOOPBACK_HOSTS, "login1.site.org",
                                                               ".site.org"]
    wildcard = allowed_hosts("0.0.0.0")
    assert socket.gethostname().lower() in wildcard and "*" not in wildcard
    assert "0.0.0.0" in wildcard  # the printed URL works
    assert allowed_hosts("::", ["*"])[-1] == "*"


def test_a_foreign_host_header_gets_400_even_with_the_token(db: str) -> None:
    with web_server(db, "--token", TOKEN) as base:
        port = port_of(base)
        c = Client(base)
        status, _, _ = c.request(f"/?token={TOKEN}", headers={"Host": f"{FOREIGN}:{port}"},
                                 follow=False)
        assert status == 400
        assert not c.cookie("balsam_web_")
        c.login()  # the Host urllib sends for 127.0.0.1
        for host in (f"{FOREIGN}:{port}", FOREIGN, f"127.0.0.1.{FOREIGN}"):
            assert c.request("/jobs/", headers={"Host": host})[0] == 400, host
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
            assert c.request("/jobs/", headers={"Host": host})[0] == 200, host


def test_a_wildcard_bind_accepts_this_machines_names_and_allowed_hosts_only(db: str) -> None:
    with web_server(db, "--bind", "0.0.0.0", "--token", TOKEN, "--allowed-host", "dash.example.org"
                    ) as base:
        port = port_of(base)
        Client(base).login()  # the printed URL (http://0.0.0.0:PORT) works as printed
        c = Client(f"http://127.0.0.1:{port}")
        c.login()
        for host in (socket.gethostname(), "dash.example.org", f"dash.example.org:{port}",
                     "localhost"):
            assert c.request("/jobs/", headers={"Host": host})[0] == 200, host
        for host in (FOREIGN, "other.example.org"):
            assert c.request("/jobs/", headers={"Host": host})[0] == 400, host


def test_a_bad_allowed_host_is_one_line_and_exit_2(db: str) -> None:
    r = run_balsam("web", "--port", "0", "--allowed-host", "not a host")
    assert r.returncode == 2, r.stderr
    assert r.stderr == ("balsam web: error: --allowed-host 'not a host' is not a host name, "
                        "address, '.domain' or '*'\n")
    assert r.stdout == ""

