"""Settings and serving for the dashboard.

:func:`configure` builds Balsam's Django settings (:func:`balsam.db.settings.django_settings`)
plus what a web server needs: URLs, templates, cookie sessions (signed, no table), CSRF, and the
login token checked by :class:`balsam.web.auth.TokenMiddleware`. It must run before anything else
configures Django in the process. :func:`serve` runs waitress (a production WSGI server, pure
Python) with a small thread pool; each thread keeps its own database connection.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
from typing import Any, Callable, Optional

from balsam.errors import BalsamError

TOKEN_ENV = "BALSAM_WEB_TOKEN"
"""Environment variable holding the login token (instead of ``--token``)."""

HERE = os.path.dirname(os.path.abspath(__file__))

LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


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


def web_settings(token: str, port: int, bind: str) -> dict[str, Any]:
    """Balsam's Django settings extended for the dashboard on ``bind:port`` with ``token``."""
    from balsam.db.settings import django_settings

    s = django_settings()
    hosts = ["127.0.0.1", "localhost", "[::1]", "::1", "testserver"]
    if not is_loopback(bind):
        hosts = ["*"]  # any Host header: the token, not the name, guards a public bind
    s.update(
        DEBUG=False,
        ROOT_URLCONF="balsam.web.urls",
        ALLOWED_HOSTS=hosts,
        # Sessions survive a restart with the same token; another token invalidates them.
        SECRET_KEY=hashlib.sha256(f"balsam-web:{token}".encode()).hexdigest(),
        MIDDLEWARE=[
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


def configure(token: str, port: int, bind: str = "127.0.0.1", db_path: Optional[str] = None) -> None:
    """Configure Django for the dashboard in this process (once, before any other setup)."""
    from django.conf import settings

    if settings.configured:
        raise BalsamError("Django is already configured in this process; start the dashboard "
                          "in a process of its own")
    settings.configure(**web_settings(token, port, bind))
    from balsam.db.settings import ensure_django, use_database

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

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Any:
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
