"""Helpers for the dashboard tests: a real ``balsam web`` subprocess, a logged-in HTTP client
with a cookie jar, and bulk job insertion through ``balsam.core.bulk`` (COPY)."""
from __future__ import annotations

import datetime
import http.cookiejar
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

from balsam.core import bulk, schema

TOKEN = "test-token-0123456789"
URL_RE = re.compile(r"open: (http://\S+)/\?token=(\S+)")


@contextmanager
def web_server(db_path: str, *args: str, env: Optional[dict] = None) -> Iterator[str]:
    """Run ``balsam web --port 0 ARGS``; yield its base URL; stop it (SIGTERM) at the end."""
    full_env = dict(os.environ, BALSAM_DB_PATH=db_path, **(env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "balsam", "web", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        base = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            m = URL_RE.search(line)
            if m:
                base = m.group(1)
                break
        if not base:
            proc.kill()
            raise AssertionError(f"balsam web did not start: {proc.communicate()[1]}")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Client:
    """An HTTP client with cookies; ``follow=False`` returns redirects as they are."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.follow = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.nofollow = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                    _NoRedirect())

    def request(self, path: str, data: Optional[dict] = None, follow: bool = True,
                headers: Optional[dict] = None) -> tuple[int, str, dict]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body, headers=headers or {})
        opener = self.follow if follow else self.nofollow
        try:
            with opener.open(req, timeout=30) as resp:
                return resp.status, resp.read().decode(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(), dict(err.headers)

    def cookie(self, prefix: str) -> str:
        return next((c.value for c in self.jar if c.name.startswith(prefix)), "")

    def csrf(self, path: str) -> str:
        """The CSRF form token of the page at ``path``."""
        status, body, _ = self.request(path)
        assert status == 200, body[:300]
        m = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body)
        assert m, "no CSRF token on the page"
        return m.group(1)

    def login(self, token: str = TOKEN) -> None:
        status, _, _ = self.request(f"/?token={token}")
        assert status == 200


def insert_jobs(cursor: Any, specs: Sequence[dict], start: Optional[datetime.datetime] = None
                ) -> list[dict]:
    """Insert jobs by COPY; job ``i`` is created ``i`` seconds after ``start``."""
    start = start or datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    rows = []
    for i, spec in enumerate(specs):
        row = schema.new_job_row(spec)
        row["created_at"] = row["tick"] = start + datetime.timedelta(seconds=i)
        rows.append(row)
    bulk.copy_jobs(cursor, rows)
    return rows


def job_ids_on_page(body: str) -> list[str]:
    return re.findall(r'href="/jobs/([0-9a-f-]{36})/"', body)
