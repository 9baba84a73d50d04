"""Run an application's preprocess or postprocess script for one job (no database access).

The script runs in the job's working directory with the normal environment (the caller's PATH,
HOME, modules, cleaned by :func:`balsam.core.jobenv.task_environment`), the job's variables and
the app's envscript (sourced first). Classic Balsam gave scripts only the job's variables and no
envscript; a script that needs ``python`` from a module works here.

Its stdout and stderr are appended to ``<workdir>/preprocess.log`` or ``postprocess.log`` after
a header, so a retried step keeps the earlier runs. The script runs in its own session: a
timeout or an abort (``should_abort``) stops its whole process group (SIGTERM, then SIGKILL
after a grace period), and anything it left running in its group when it exited is stopped too.
"""
from __future__ import annotations

import datetime
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, Callable, Optional

from balsam.core.jobenv import task_environment, with_envscript
from balsam.errors import BalsamError
from balsam.platform.process import start_time
from balsam.platform.procgroup import live_members, signal_group, wait_bounded
from balsam.processing import warm_hooks
from balsam.processing.warm_hooks import HookRunner

KINDS = {"preprocess": "Preprocessor", "postprocess": "Postprocessor"}
"""Script kind -> the word in the log header (classic "# Balsam Preprocessor: ...")."""

TAIL_BYTES = 65536
"""Most bytes of the script's output read back for the tail."""


class ScriptError(BalsamError):
    """The script cannot be run at all (missing executable, bad command line, unusable workdir)."""


@dataclass
class ScriptResult:
    """How one run ended. ``returncode`` is None if the script never started (an abort
    requested before it started, or an exec failure, described in ``tail``); negative for a
    signal, as in :mod:`subprocess`. ``tail`` holds the last lines of the script's own output
    (not the header); ``seconds`` is the wall time from start to end."""

    returncode: Optional[int]
    timed_out: bool
    aborted: bool
    log_path: str
    tail: str
    seconds: float
    timeout: float

    @property
    def ok(self) -> bool:
        """True when the script ran to completion and exited with status 0."""
        return self.returncode == 0 and not self.timed_out and not self.aborted


def script_environment(base_env: Mapping[str, str], job_vars: Mapping[str, str],
                       extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """``base_env`` cleaned of launcher-only variables and credentials, plus ``job_vars``, plus
    ``extra`` (e.g. ``BALSAM_JOB_ERROR=TRUE``); later ones win."""
    return task_environment(base_env, {**job_vars, **(extra or {})})


def run_script(kind: str, command: str, workdir: str, env: Mapping[str, str], *,
               envscript: Optional[str] = None, timeout: float, header: Sequence[str] = (),
               should_abort: Optional[Callable[[], bool]] = None, poll_seconds: float = 0.2,
               tail_lines: int = 30, kill_grace: float = 5.0,
               hooks: Optional[HookRunner] = None, app: str = "") -> ScriptResult:
    """Run ``command`` (shell-style words, no shell) as the ``kind`` script of a job.

    The first word must name an existing executable file: an absolute path, a path relative to
    ``workdir``, or (a bare name) a program on ``env``'s PATH or a file in ``workdir``; it is
    replaced by its resolved path. ``workdir`` is created if missing. ``header`` lines are
    written to the log after the standard header (prefixed ``# `` unless they start with
    ``#``); a footer line records how the run ended. After ``timeout`` seconds, or as soon as
    ``should_abort()`` (polled every ``poll_seconds``) returns True, the process group gets
    SIGTERM and, ``kill_grace`` seconds later, SIGKILL. Returns once no process of the group is
    left. Raises :class:`ScriptError` if the script cannot be run; ValueError for a bad ``kind``.

    With ``hooks`` (a worker's warm runner), a site app's hook command (of app ``app``) that
    :func:`balsam.processing.warm_hooks.warm_step` accepts runs in that runner instead of a new
    interpreter, with the same log, environment, working directory, timeout and abort.
    """
    if kind not in KINDS:
        raise ValueError(f"script kind must be one of {sorted(KINDS)}, not {kind!r}")
    argv = _resolve_command(kind, command, workdir, env)
    log_path = os.path.join(workdir, f"{kind}.log")
    try:
        os.makedirs(workdir, exist_ok=True)
        log = open(log_path, "ab")
    except OSError as exc:
        raise ScriptError(f"cannot write the {kind} log {log_path}: {exc.strerror}")
    with log:
        started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        lines = [f"# Balsam {KINDS[kind]}: {command}", f"# Started {started_at} in {workdir}"]
        if envscript:
            lines.append(f"# Sourcing envscript {envscript}")
        lines += [line if line.startswith("#") else f"# {line}" for line in header]
        log.write(("\n".join(lines) + "\n").encode())
        log.flush()
        output_start = log.tell()
        start = time.monotonic()
        step = warm_hooks.warm_step(command, envscript) if hooks is not None else None
        if hooks is not None and step is not None and hooks.accepts(env):
            returncode, timed_out, aborted, failure = hooks.run(
                step, app, workdir, env, log, timeout, should_abort, poll_seconds, kill_grace)
        else:
            returncode, timed_out, aborted, failure = _run(
                with_envscript(argv, envscript), workdir, dict(env), log, timeout, should_abort,
                poll_seconds, kill_grace)
        seconds = time.monotonic() - start
        log.flush()
        tail = failure or _tail(log_path, output_start, tail_lines)
        outcome = ("aborted" if aborted else "timed out" if timed_out
                   else "did not start" if returncode is None else f"exited with code {returncode}")
        log.write(f"# {kind} {outcome} after {_fmt_seconds(seconds)} s\n".encode())
    return ScriptResult(returncode, timed_out, aborted, log_path, tail, seconds, timeout)


def failure_message(kind: str, result: ScriptResult) -> str:
    """A message for the job's history describing how ``result`` failed, with the log tail."""
    took = f"after {_fmt_seconds(result.seconds)} s"
    if result.aborted:
        what = f"{kind} was stopped {took} (abort requested)"
    elif result.timed_out:
        what = f"{kind} timed out after {_fmt_seconds(result.timeout)} s and was killed"
    elif result.returncode is None:
        return f"{kind} could not start: {result.tail}"
    elif result.returncode < 0:
        what = f"{kind} was killed by {_signal_name(-result.returncode)} {took}"
    else:
        what = f"{kind} exited with code {result.returncode} {took}"
    tail = result.tail if result.tail.strip() else "(no output)"
    return f"{what}; log tail ({result.log_path}):\n{tail}"


def _resolve_command(kind: str, command: str, workdir: str, env: Mapping[str, str]) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ScriptError(f"cannot parse the {kind} command {command!r}: {exc}")
    if not argv:
        raise ScriptError(f"the {kind} command is empty")
    program = argv[0]
    if os.sep in program:
        candidates = [os.path.join(workdir, os.path.expanduser(program))]
    else:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
        candidates = [found] if found else []
        candidates.append(os.path.join(workdir, program))
    for path in candidates:
        if os.path.isfile(path):
            if not os.access(path, os.X_OK):
                raise ScriptError(f"{kind} script {path} is not executable")
            return [os.path.abspath(path), *argv[1:]]
    where = "" if os.sep in program else " on PATH or"
    raise ScriptError(f"{kind} script {program} not found{where} in {workdir}")


def _run(argv: list[str], workdir: str, env: dict[str, str], log: IO[bytes], timeout: float,
         should_abort: Optional[Callable[[], bool]], poll_seconds: float,
         grace: float) -> tuple[Optional[int], bool, bool, str]:
    """(returncode, timed_out, aborted, failure to start); no process of its group survives."""
    if should_abort is not None and should_abort():
        return None, False, True, ""
    try:
        proc = subprocess.Popen(argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    except OSError as exc:
        return None, False, False, f"cannot run {argv[0]}: {exc.strerror or exc}"
    leader = start_time(proc.pid)  # unreaped: names the group's id after the reap too
    def ended(seconds: float) -> bool:
        try:
            proc.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False

    timed_out = aborted = False
    try:
        timed_out, aborted = wait_bounded(ended, time.monotonic() + timeout, poll_seconds,
                                          should_abort)
    finally:
        # Also on an exception (KeyboardInterrupt, should_abort raising): nothing is left behind.
        if proc.poll() is None or live_members(proc.pid, leader):
            stop_group(proc, grace, leader)
    return proc.returncode, timed_out, aborted, ""


def stop_group(proc: subprocess.Popen[Any], grace: float, leader: Optional[int] = None) -> None:
    """SIGTERM the process group led by ``proc``, SIGKILL it after ``grace`` seconds if any
    member is still alive, reap ``proc``, and wait (up to 5 s) until no member is left.
    ``leader``: ``proc``'s start time (see :func:`balsam.platform.procgroup.reused`)."""
    pgid = proc.pid
    signal_group(pgid, signal.SIGTERM, leader)
    end = time.monotonic() + grace
    while time.monotonic() < end:
        if proc.poll() is not None and not live_members(pgid, leader):
            return
        time.sleep(0.02)
    signal_group(pgid, signal.SIGKILL, leader)
    proc.wait()
    end = time.monotonic() + 5.0
    while live_members(pgid, leader) and time.monotonic() < end:
        time.sleep(0.01)


def _tail(path: str, start: int, lines: int) -> str:
    """The last ``lines`` lines of ``path`` from byte offset ``start`` on."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(start, fh.tell() - TAIL_BYTES))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:]) if lines > 0 else ""


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
