"""Settings and serving for the dashboard.

:func:`configure` builds Balsam's Django settings (:func:`balsam.db.django_setup.django_settings`)
plus what a web server needs: URLs, templates, cookie sessions (signed, no table), CSRF, and the
login token checked by :class:`balsam.web.auth.TokenMiddleware`. It must run before anything else
configures Django in the process. :func:`serve` runs waitress (a production WSGI server, pure
Python) with a small thread pool; each thread keeps its own database connection.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Sequence
from typing import Any, Callable, Optional

from balsam.errors import BalsamError

TOKEN_ENV = "BALSAM_WEB_TOKEN"
"""Environment variable holding the login token (instead of ``--token``)."""

HERE = os.path.dirname(os.path.abspath(__file__))

LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")

LOOPBACK_HOSTS = ("localhost", "localhost.localdomain", "ip6-localhost", "127.0.0.1", "[::1]")
"""Host headers every dashboard accepts: a browser on this machine or at the end of an SSH tunnel
(``ssh -L 8100:host:8100``) sends one of them, and no DNS answer can make a foreign site's page
send them (the DNS-rebinding attack the Host check is for)."""

WILDCARD_BINDS = ("", "0.0.0.0", "::", "[::]")
"""Bind addresses that listen on every interface of this machine."""

_HOST_PATTERN = re.compile(r"^(\*|\.?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])$")


def _header_form(address: str) -> str:
    """How ``address`` appears in a Host header (an IPv6 address in brackets)."""
    address = address.strip()
    try:
        if ipaddress.ip_address(address.strip("[]")).version == 6:
            return f"[{address.strip('[]')}]"
    except ValueError:
        pass
    return address.lower()


def machine_names() -> list[str]:
    """This machine's host name, fully qualified name and the addresses they resolve to (what a
    browser elsewhere may use to reach a dashboard bound to every interface)."""
    names = {socket.gethostname(), socket.getfqdn()}
    for name in list(names):
        try:
            names.update(str(info[4][0]) for info in socket.getaddrinfo(name, None))
        except OSError:
            pass
    try:  # the address of the default route's interface (no packet is sent)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("192.0.2.1", 9))
            names.add(sock.getsockname()[0])
    except OSError:
        pass
    return sorted(_header_form(n) for n in names if n)


def allowed_hosts(bind: str, extra: Sequence[str] = ()) -> list[str]:
    """Django's ``ALLOWED_HOSTS`` for a dashboard bound to ``bind``: :data:`LOOPBACK_HOSTS`, the
    bind address itself (the URL ``balsam web`` prints names it), for a wildcard bind
    (:data:`WILDCARD_BINDS`) also :func:`machine_names`, and
    ``extra`` (``--allowed-host``: a name, an address, ``.example.org`` for a domain and its
    subdomains, or ``*`` for any). A request with any other Host header gets 400.
    """
    hosts = list(LOOPBACK_HOSTS)
    if bind.strip():
        hosts.append(_header_form(bind))  # the printed URL names it (0.0.0.0 reaches this host)
    if bind.strip() in WILDCARD_BINDS:
        hosts += machine_names()
    for name in extra:
        form = _header_form(name)
        if not _HOST_PATTERN.match(form):
            raise BalsamError(f"--allowed-host {name!r} is not a host name, address, "
                              f"'.domain' or '*'")
        hosts.append(form)
    return list(dict.fromkeys(hosts))


def is_loopback(bind: str) -> bool:
    """True if ``bind`` names only this machine (127.0.0.0/8, ::1 or localhost)."""
    if bind.strip().lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    except ValueError:
        return False


def choose_token(given: Optional[str], bind: str) -> tuple[str, bool]:
    """The login token and whether it was generated here.

    ``given`` (``--token``) wins, then :data:`TOKEN_ENV`; on a loopback address a random token is
    generated. Binding anywhere else without an explicit token raises :class:`BalsamError`: a
    printed random token would be the only thing between the network and the kill button, and
    nobody but the person at this terminal would know it was exposed.
    """
    token = (given if given is not None else os.environ.get(TOKEN_ENV, "")).strip()
    if given is not None and len(token) < 8:
        raise BalsamError("--token must be at least 8 characters")
    if token:
        if len(token) < 8:
            raise BalsamError(f"{TOKEN_ENV} must be at least 8 characters")
        return token, False
    if not is_loopback(bind):
        raise BalsamError(f"refusing to bind to {bind} without an explicit token: give --token T "
                          f"or set {TOKEN_ENV} (only localhost gets a generated one)")
    return secrets.token_urlsafe(18), True


def web_settings(token: str, port: int, bind: str,
                 extra_hosts: Sequence[str] = ()) -> dict[str, Any]:
    """Balsam's Django settings extended for the dashboard on ``bind:port`` with ``token``;
    ``ALLOWED_HOSTS`` from :func:`allowed_hosts`."""
    from balsam.db.django_setup import django_settings

    s = django_settings()
    hosts = allowed_hosts(bind, extra_hosts)
    s.update(
        DEBUG=False,
        ROOT_URLCONF="balsam.web.urls",
        ALLOWED_HOSTS=hosts,
        # Sessions survive a restart with the same token; another token invalidates them.
        SECRET_KEY=hashlib.sha256(f"balsam-web:{token}".encode()).hexdigest(),
        MIDDLEWARE=[
            "balsam.web.auth.HostCheckMiddleware",
            "django.middleware.security.SecurityMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "balsam.web.auth.TokenMiddleware",
            "django.middleware.clickjacking.XFrameOptionsMiddleware",
        ],
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        # Cookies are per host, not per port: two dashboards on one machine must not collide.
        SESSION_COOKIE_NAME=f"balsam_web_{port}",
        CSRF_COOKIE_NAME=f"balsam_csrf_{port}",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        CSRF_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_AGE=7 * 24 * 3600,
        X_FRAME_OPTIONS="DENY",
        SECURE_CONTENT_TYPE_NOSNIFF=True,
        SECURE_REFERRER_POLICY="same-origin",
        TEMPLATES=[{
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "DIRS": [os.path.join(HERE, "templates")],
            "APP_DIRS": False,
            "OPTIONS": {"context_processors": ["django.template.context_processors.csrf",
                                               "django.template.context_processors.request"]},
        }],
        BALSAM_WEB_TOKEN=token,
    )
    return s


def configure(token: str, port: int, bind: str = "127.0.0.1", db_path: Optional[str] = None,
              extra_hosts: Sequence[str] = ()) -> None:
    """Configure Django for the dashboard in this process (once, before any other setup);
    ``extra_hosts`` are more accepted Host header names (:func:`allowed_hosts`)."""
    from django.conf import settings

    if settings.configured:
        raise BalsamError("Django is already configured in this process; start the dashboard "
                          "in a process of its own")
    settings.configure(**web_settings(token, port, bind, extra_hosts))
    from balsam.db.django_setup import ensure_django, use_database

    ensure_django()
    if db_path:
        use_database(db_path)


def check_database() -> None:
    """One query, so a stopped server is a one-line error at start, not a 500 on first visit."""
    from django.db import connection

    try:
        with connection.cursor() as cur:
            cur.execute("SELECT count(*) FROM core_applicationdefinition")
    except BalsamError:
        raise
    except Exception as exc:
        raise BalsamError(f"cannot query the Balsam DB: {str(exc).strip().splitlines()[0]}")
    finally:
        connection.close()


class _LateApp:
    """The WSGI callable handed to the server before Django is configured (the cookie names
    need the port, known only once the socket is bound)."""

    handler: Optional[Callable[..., Any]] = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        assert self.handler is not None
        return self.handler(environ, start_response)


def make_server(bind: str, port: int, threads: int = 4) -> tuple[Any, _LateApp]:
    """Bind the listening socket (``port`` 0 picks a free one); returns (server, app)."""
    from waitress import create_server

    app = _LateApp()
    try:
        server = create_server(app, host=bind, port=port, threads=threads, ident="balsam-web",
                               clear_untrusted_proxy_headers=True)
    except OSError as exc:
        raise BalsamError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}")
    return server, app


def start_handler(app: _LateApp) -> None:
    from django.core.wsgi import get_wsgi_application

    app.handler = get_wsgi_application()
