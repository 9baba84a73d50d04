"""The login token: exchanged once for a signed session cookie, then required on every request.

A visit to any page with ``?token=T`` (the URL printed at start) or a POST of the login form with
the right token marks the session as logged in and redirects to the same page without the token
(so it stays out of history and referrers). Anything else without a logged-in session gets 403
with the login form. Static files are public (they hold no data). Every response carries a
Content-Security-Policy that allows only this server's own scripts and styles.
"""
from __future__ import annotations

import hmac
from typing import Any, Callable
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.loader import render_to_string

SESSION_KEY = "balsam_web_login"
PUBLIC_PREFIXES = ("/static/",)
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def token_matches(candidate: str) -> bool:
    """Constant-time comparison with the configured token."""
    expected: str = settings.BALSAM_WEB_TOKEN
    return hmac.compare_digest(candidate.encode(), expected.encode())


def login_page(request: HttpRequest, status: int, error: str = "") -> HttpResponse:
    body = render_to_string("balsam_web/login.html", {"error": error, "next": request.path},
                            request=request)
    return HttpResponse(body, status=status)


def log_in(request: HttpRequest) -> None:
    """Mark the session as logged in (a fresh session key, against fixation)."""
    session: Any = request.session
    session.cycle_key()
    session[SESSION_KEY] = True


def _without_token(request: HttpRequest) -> str:
    query = request.GET.copy()
    query.pop("token", None)
    rest = urlencode(sorted(query.items()))
    path: str = request.path
    return path + (f"?{rest}" if rest else "")


class HostCheckMiddleware:
    """Validate the Host header against ``ALLOWED_HOSTS`` before anything else.

    Django checks it only when something calls ``request.get_host()`` (CSRF on a POST, redirects),
    so a GET would pass with any Host: a foreign page reached through DNS rebinding could read the
    dashboard once someone logged in. ``get_host()`` raises ``DisallowedHost``, which Django
    answers with 400."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.get_host()
        return self.get_response(request)


class TokenMiddleware:
    """Refuse (403) every request from a session that has not shown the token."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self._handle(request)
        response.setdefault("Content-Security-Policy", CSP)
        response.setdefault("Cache-Control", "no-store")
        return response

    def _handle(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(PUBLIC_PREFIXES):
            return self.get_response(request)
        session: Any = request.session
        token = request.GET.get("token")
        if token is not None:
            if not token_matches(token):
                return login_page(request, 403, "That token is not right.")
            log_in(request)
            return HttpResponseRedirect(_without_token(request))
        if request.path == "/login/" and request.method == "POST":
            return self.get_response(request)  # views.login, behind the CSRF check
        if not session.get(SESSION_KEY):
            return login_page(request, 403)
        return self.get_response(request)
