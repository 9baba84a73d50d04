"""The warm hook runner: ``python -m balsam.api.hook_server FD``.

A transition worker (:mod:`balsam.processing.warm_hooks`) keeps one of these per worker and
sends it the hook steps of site apps (the app row's ``python -m balsam.api.hooks STEP``)
instead of starting that command: Django, :mod:`balsam.api` and each app's module (with what it
imports) are imported once here, and every hook runs in a **fork** of this process, which does
exactly what the command would do -- :func:`balsam.api.hooks.main` -- in its own session, in the
job's working directory, with the job's environment (replacing this process's), stdin from
/dev/null and stdout/stderr appended to the step's log. Whatever a hook changes (variables,
module globals, cwd) dies with its fork; the app file itself is executed again in each fork,
as the command did, so its import-time output goes to the job's log.

Protocol, one JSON object per line over the socket ``FD``: a request ``{"step", "app", "cwd",
"env", "log"}`` is answered ``{"pid": N}`` once the fork runs, then ``{"rc": CODE}`` when it
has ended (negative: killed by that signal, as :mod:`subprocess` says). ``{"stale": true}``
answers a request whose app file changed since this process imported it: the runner exits and
the worker starts a fresh one. The runner exits when the socket ends.
"""
from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sys
import traceback
from typing import Any


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode() + b"\n")


def _file_stamp(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


def _run_child(sock: socket.socket, request: dict[str, Any]) -> int:
    """In the fork: become the command ``python -m balsam.api.hooks STEP`` would be."""
    from balsam.api import hooks

    os.setsid()
    sock.close()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [hooks.__file__, request["step"]]
    try:
        return hooks.main([request["step"]])
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        from django.db import connections

        connections.close_all()  # a clean goodbye to the server, as at a script's exit


def serve(fd: int) -> int:
    """Answer hook requests on socket ``fd`` until it ends (see the module docstring)."""
    sock = socket.socket(fileno=fd)
    from django.db import connections

    from balsam.api import hooks  # noqa: F401 - imported once, for every fork
    from balsam.api.sites import Site
    from balsam.site import loader

    db_path = os.environ.get("BALSAM_DB_PATH", "")
    try:
        Site(db_path)
        # One query now imports the DB backend and driver and builds the ORM's compilers, which
        # Django leaves to the first query (~35 ms in every fork otherwise).
        from balsam.core.models import BalsamJob

        BalsamJob.objects.filter(pk="00000000-0000-0000-0000-000000000000").first()
    except Exception:  # noqa: BLE001 - each hook reports its own site error as the command does
        pass
    connections.close_all()
    stamps: dict[str, tuple[int, int]] = {}
    buf = b""
    while True:
        while b"\n" not in buf:
            data = sock.recv(65536)
            if not data:
                return 0
            buf += data
        line, _, buf = buf.partition(b"\n")
        request = json.loads(line)
        stem = str(request.get("app", "")).partition(".")[0]
        path = os.path.join(loader.apps_dir(db_path), f"{stem}.py") if stem else ""
        if path:
            stamp = _file_stamp(path)
            if path not in stamps:
                stamps[path] = stamp
                try:  # warm the app's own imports; its errors are the fork's to report
                    loader.load_app(db_path, request["app"])
                except Exception:  # noqa: BLE001
                    pass
            elif stamps[path] != stamp:
                _send(sock, {"stale": True})
                return 0
        connections.close_all()  # no connection is shared with a fork
        # The runner's objects go to the collector's permanent generation: a fork's collections
        # do not walk them (fewer of the runner's pages copied into the fork).
        gc.freeze()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _run_child(sock, request)
            except BaseException:  # noqa: BLE001 - the fork must never return into the loop
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code & 0xFF if code >= 0 else 1)
        _send(sock, {"pid": pid})
        _, status = os.waitpid(pid, 0)
        _send(sock, {"rc": os.waitstatus_to_exitcode(status)})


def main() -> int:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python -m balsam.api.hook_server FD (started by processing)",
              file=sys.stderr)
        return 2
    return serve(int(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
