"""A warm hook runner per transition worker: site app hooks without an interpreter start each.

A site app's hook step is the command ``<python> -m balsam.api.hooks STEP``
(:data:`balsam.api.sites.HOOK_RUNNER`); run as a script it pays Django's and the app's imports
(~0.4 s of CPU) per job. When that command names this interpreter and the app has no envscript
(``shell_preamble``), :func:`balsam.processing.scripts.run_script` hands it to the worker's
:class:`HookRunner` instead: one long-lived ``python -m balsam.api.hook_server FD`` (its own
session, started on first need) that has imported everything once and runs each hook in a fork
of itself -- in the job's working directory, with the job's environment, output appended to the
step's log, in a session of its own -- so a hook costs a fork (milliseconds).

The script's rules hold: the step's timeout and the abort check stop the hook's process group
(SIGTERM, SIGKILL after the grace period) and anything the hook left in its group; the next hook
still runs in the same runner. A runner that dies while a hook runs fails that hook (the log
says so) and is replaced; so is one that does not answer, one serving another database, and
one whose app file changed since it imported it (a fresh runner imports the new file).

The runner's own stderr (a hook's goes to its step's log) is appended to
``<db>/log/hook-runner_<time>_<pid>.log`` (:func:`runner_log_path`), beside the launcher's and the
service's logs, so a runner that crashes leaves its traceback; a failed hook's message names the
file. ``settings.yml`` ``launcher: warm_hooks: false`` turns runners off (hooks run as scripts).
"""
from __future__ import annotations

import json
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import IO, Any, Callable, Optional

from balsam.platform.process import start_time
from balsam.platform.procgroup import live_members, reused, signal_group, wait_bounded

HOOKS_MODULE = "balsam.api.hooks"
SERVER_MODULE = "balsam.api.hook_server"
"""The hook command's module and the runner's (:mod:`balsam.api`; spelled here so that
processing does not import the client side)."""

STEPS = ("preprocess", "postprocess")

STARTUP_PREFIXES = ("PYTHON", "LD_")
"""Variables an interpreter reads when it starts (``PYTHONPATH``, ``PYTHONHASHSEED``,
``LD_PRELOAD``, ...): a fork cannot take a job's own values of them, so a hook whose
environment differs from the runner's in one runs as a script."""


def startup_variables(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(STARTUP_PREFIXES)}


def warm_step(command: str, envscript: Optional[str]) -> Optional[str]:
    """The step of ``command`` if it is a hook command this interpreter can run warm (the same
    Python, no envscript to source first); None: run it as a script."""
    if envscript:
        return None
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if (len(argv) == 4 and argv[1:3] == ["-m", HOOKS_MODULE] and argv[3] in STEPS
            and argv[0] == sys.executable):
        return argv[3]
    return None


def runner_log_path(db_path: str, stamp: str) -> str:
    """Where the stderr of this process's hook runners for ``db_path`` goes: its log directory,
    named like the launcher's and service's logs (``stamp``: ``%Y-%m-%d_%H%M%S``)."""
    return os.path.join(db_path, "log", f"hook-runner_{stamp}_{os.getpid()}.log")


class RunnerGone(Exception):
    """The runner ended (or broke the protocol)."""


class HookRunner:
    """One warm runner process (see the module docstring); not thread-safe: one per worker."""

    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.sock: Optional[socket.socket] = None
        self.db_path = ""
        self.started = 0
        """Runner processes started so far (for tests and benchmarks)."""
        self.served = 0
        """Hooks this object ran (started in a fork)."""
        self.startup: dict[str, str] = {}
        self.log_path = ""
        """The file the runner's stderr is appended to ('' until one is started, or when the
        log directory cannot be written: then it goes nowhere, and hooks still run)."""
        self._buf = b""

    def accepts(self, env: Mapping[str, str]) -> bool:
        """Whether a hook with environment ``env`` can run here: no runner yet (it starts with
        ``env``), or the same interpreter start-up variables (:data:`STARTUP_PREFIXES`) as the
        running one."""
        return self.proc is None or startup_variables(env) == self.startup

    @property
    def pid(self) -> Optional[int]:
        return None if self.proc is None else self.proc.pid

    def close(self) -> None:
        """End the runner (it exits when its socket closes; killed if it does not)."""
        proc, sock = self.proc, self.sock
        self.proc = self.sock = None
        self._buf = b""
        if sock is not None:
            sock.close()
        if proc is not None:
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait()

    def _start(self, env: Mapping[str, str]) -> None:
        self.close()
        db_path = env.get("BALSAM_DB_PATH", "")
        stderr = self._open_log(db_path)
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", SERVER_MODULE, str(theirs.fileno())],
                pass_fds=[theirs.fileno()], env=dict(env), cwd="/", stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
            if stderr is not subprocess.DEVNULL:
                os.close(stderr)
        self.sock = ours
        self.db_path = db_path
        self.startup = startup_variables(env)
        self.started += 1

    def _open_log(self, db_path: str) -> int:
        """A descriptor appending to :attr:`log_path` (one file per runner object and database;
        a replaced runner appends), headed by a line saying a runner starts; DEVNULL if the
        log directory cannot be written."""
        if not db_path:
            self.log_path = ""
            return subprocess.DEVNULL
        if os.path.dirname(self.log_path) != os.path.join(db_path, "log"):
            self.log_path = runner_log_path(db_path, time.strftime("%Y-%m-%d_%H%M%S"))
        try:
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            self.log_path = ""
            return subprocess.DEVNULL
        os.write(fd, f"# {time.strftime('%Y-%m-%d %H:%M:%S')} starting warm hook runner "
                     f"{self.started + 1} of process {os.getpid()}: its stderr follows\n".encode())
        return fd

    def _log_note(self) -> str:
        return f" (the runner's stderr: {self.log_path})" if self.log_path else ""

    def _recv(self, timeout: float) -> dict[str, Any]:
        """The next message; TimeoutError if none within ``timeout``; RunnerGone at the end."""
        assert self.sock is not None
        while b"\n" not in self._buf:
            if not select.select([self.sock], [], [], max(0.0, timeout))[0]:
                raise TimeoutError
            try:
                data = self.sock.recv(65536)
            except OSError as exc:
                raise RunnerGone(str(exc))
            if not data:
                raise RunnerGone("the hook runner ended")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError:
            raise RunnerGone("the hook runner sent garbage")
        if not isinstance(message, dict):
            raise RunnerGone("the hook runner sent garbage")
        return message

    def _request(self, request: dict[str, Any], env: Mapping[str, str],
                 deadline: float) -> int:
        """Start the hook; its pid. A stale runner is replaced once; RunnerGone if the runner
        fails (it is closed); TimeoutError at the deadline."""
        for _ in range(2):
            if (self.proc is None or self.proc.poll() is not None
                    or self.db_path != env.get("BALSAM_DB_PATH", "")):
                self._start(env)
            assert self.sock is not None
            try:
                self.sock.sendall(json.dumps(request).encode() + b"\n")
                reply = self._recv(deadline - time.monotonic())
            except OSError as exc:
                self.close()
                raise RunnerGone(str(exc))
            except (RunnerGone, TimeoutError):
                self.close()
                raise
            if reply.get("stale"):
                self.close()
                continue
            if isinstance(reply.get("pid"), int):
                self.served += 1
                return int(reply["pid"])
            self.close()
            raise RunnerGone("the hook runner sent no pid")
        raise RunnerGone("the hook runner found its app file changing twice")

    def run(self, step: str, app: str, workdir: str, env: Mapping[str, str], log: IO[bytes],
            timeout: float, should_abort: Optional[Callable[[], bool]], poll_seconds: float,
            grace: float) -> tuple[Optional[int], bool, bool, str]:
        """Run one hook as :func:`balsam.processing.scripts._run` runs a script: (returncode,
        timed_out, aborted, failure to start)."""
        if should_abort is not None and should_abort():
            return None, False, True, ""
        start = time.monotonic()
        deadline = start + timeout
        request = {"step": step, "app": app, "cwd": os.path.abspath(workdir), "env": dict(env),
                   "log": os.path.abspath(log.name)}
        try:
            pid = self._request(request, env, deadline)
        except TimeoutError:
            return None, True, False, ""
        except (RunnerGone, OSError) as exc:
            return None, False, False, (f"cannot run the hook in the warm hook runner: {exc}"
                                        f"{self._log_note()}")
        rc: Optional[int] = None
        leader = start_time(pid)  # the runner's fork: names the group's id after its reap too

        def ended(seconds: float) -> bool:
            nonlocal rc
            try:
                rc = int(self._recv(seconds)["rc"])
                return True
            except TimeoutError:
                return False

        try:
            timed_out, aborted = wait_bounded(ended, deadline, poll_seconds, should_abort)
        except (RunnerGone, KeyError, TypeError, ValueError):
            return self._runner_died(pid, leader, log), False, False, ""
        if rc is None:
            rc = self._stop_hook(pid, leader, grace)
        elif live_members(pid, leader):  # it left something running in its group
            _stop_group(pid, grace, leader)
        return rc, timed_out, aborted, ""

    def _stop_hook(self, pid: int, leader: Optional[int], grace: float) -> int:
        """SIGTERM the hook's group, SIGKILL it after ``grace``; its exit code (the runner is
        replaced if it does not report one)."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            _signal(pid, sig, leader)
            try:
                rc = int(self._recv(wait)["rc"])
            except TimeoutError:
                continue
            except (RunnerGone, KeyError, TypeError, ValueError):
                break
            if live_members(pid, leader):
                _stop_group(pid, grace, leader)
            return rc
        self.close()
        _stop_group(pid, 0.0, leader)
        return -signal.SIGKILL

    def _runner_died(self, pid: int, leader: Optional[int], log: IO[bytes]) -> int:
        """The runner ended while hook ``pid`` ran: the hook is stopped and fails."""
        proc, note = self.proc, self._log_note()
        _signal(pid, signal.SIGKILL, leader)
        _stop_group(pid, 0.0, leader)
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass
        self.close()
        log.write(f"# the warm hook runner (pid {proc.pid if proc else '?'}) ended "
                  f"(code {code}) while the hook ran{note}\n".encode())
        log.flush()
        return code if code is not None and code < 0 else -signal.SIGKILL


def _signal(pid: int, sig: int, leader: Optional[int]) -> None:
    if reused(pid, leader):
        return
    signal_group(pid, sig)
    try:  # before the fork's setsid its group is the runner's: signal the fork itself too
        os.kill(pid, sig)
    except OSError:
        pass


def _stop_group(pgid: int, grace: float, leader: Optional[int]) -> None:
    """What :func:`balsam.processing.scripts.stop_group` does for a group we did not spawn
    (``leader``: its leader's start time, see :func:`balsam.platform.procgroup.reused`)."""
    signal_group(pgid, signal.SIGTERM, leader)
    end = time.monotonic() + grace
    while time.monotonic() < end and live_members(pgid, leader):
        time.sleep(0.02)
    signal_group(pgid, signal.SIGKILL, leader)
    end = time.monotonic() + 5.0
    while live_members(pgid, leader) and time.monotonic() < end:
        time.sleep(0.01)
