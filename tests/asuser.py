"""Run test code as another OS account: a forked child that drops to that account's uid/gid.

Used by the non-root and multi-user tests (they run only when the suite runs as root). The child
inherits every module already imported: after ``setuid`` it may not be able to read this
interpreter's files (e.g. under ``/root``), so callers import what the code needs beforehand.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import tempfile
import time
import traceback
from typing import Any, Callable, Optional

from balsam.db.pgaccount import Account

TEST_ACCOUNT = "balsamtester"


def ensure_account(name: str = TEST_ACCOUNT) -> Account:
    """The unprivileged account ``name``, created (as a system account) if missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run([useradd, "--system", "--user-group", "--no-create-home", "--home-dir",
                        "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                       check=False, capture_output=True, timeout=60)
        entry = pwd.getpwnam(name)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def owned_dir(account: Account, prefix: str) -> str:
    """A new 0755 directory under /tmp owned by ``account``."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(path, 0o755)
    os.chown(path, account.uid, account.gid)
    return path


def _close_django_connections() -> None:
    """A child must not inherit open Django connections: closing them there would end the
    parent's sessions too (they share the socket)."""
    try:
        from django.conf import settings

        if settings.configured:
            from django.db import connections

            connections.close_all()
    except ImportError:
        pass


def run_as(account: Account, fn: Callable[..., Any], *args: Any, home: str,
           env: Optional[dict[str, Optional[str]]] = None, stdin: str = "",
           timeout: float = 120) -> dict[str, Any]:
    """Call ``fn(*args)`` as ``account`` with HOME=``home`` and ``env`` applied (None unsets).

    Returns ``{"result", "stdout", "stderr", "error"}``; ``error`` holds the traceback text of an
    exception raised in the child (None if it returned). The child is killed after ``timeout``.
    """
    _close_django_connections()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(read_fd)
            out, err = io.StringIO(), io.StringIO()
            result, error = None, None
            try:
                os.setgroups([])
                os.setgid(account.gid)
                os.setuid(account.uid)
                os.environ["HOME"] = home
                for key, val in (env or {}).items():
                    if val is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = val
                os.chdir(home)
                import sys

                sys.stdin = io.StringIO(stdin)
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    result = fn(*args)
            except BaseException:  # noqa: BLE001 - everything goes back to the parent
                error = traceback.format_exc()
            payload = json.dumps({"result": result, "stdout": out.getvalue(), "stderr": err.getvalue(),
                                  "error": error}, default=str).encode()
            with os.fdopen(write_fd, "wb") as fh:
                fh.write(payload)
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    with os.fdopen(read_fd, "rb") as fh:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise TimeoutError(f"child running as {account.name} did not finish in {timeout} s")
            ready, _, _ = select.select([fh], [], [], left)
            if ready:
                chunk = os.read(fh.fileno(), 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"error": "child wrote nothing"}')
