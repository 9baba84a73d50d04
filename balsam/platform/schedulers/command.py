"""The one function that runs scheduler commands, and back-off helpers for callers.

:func:`run` takes an argv list (never a shell string), always a timeout, and returns a
:class:`CommandResult`. A missing program, a non-zero exit (when checked) or a hang each raise a
:class:`~balsam.platform.schedulers.SchedulerError` subclass with a one-line message. A hung
command is killed with its whole process group, so a wedged ``squeue`` leaves nothing behind.

:func:`retry` repeats a call with growing delays; :class:`Backoff` tells a periodic loop (the
service) when to try a failing operation again, so a failing scheduler never kills it.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

from balsam.platform.procgroup import kill_and_reap
from balsam.platform.schedulers.base import (
    COMMAND_TIMEOUT,
    CommandFailed,
    CommandNotFound,
    CommandTimeout,
    SchedulerError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class CommandResult:
    """What a finished command printed and how it exited."""

    argv: tuple[str, ...]
    stdout: str
    stderr: str
    returncode: int


def describe(argv: Sequence[str]) -> str:
    """A short one-line form of ``argv`` for messages (at most 80 characters)."""
    text = " ".join(" ".join(arg.split()) for arg in argv)
    return text if len(text) <= 80 else text[:77] + "..."


def first_line(text: str) -> str:
    """The first non-blank line of ``text``, stripped ("" if none)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT, *, check: bool = True,
        input: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None) -> CommandResult:
    """Run ``argv`` (no shell) for at most ``timeout`` seconds and return what it printed.

    ``env`` holds variables added to this process's environment; ``input`` is written to its
    stdin (else stdin is /dev/null). Raises :class:`CommandNotFound` if the program cannot be
    started, :class:`CommandTimeout` if it is still running after ``timeout`` (it is killed with
    its process group), and with ``check`` :class:`CommandFailed` on a non-zero exit, whose
    message is the command and the first line of its stderr (or stdout).
    """
    argv = tuple(str(a) for a in argv)
    if not argv:
        raise SchedulerError("no command to run")
    full_env = None if env is None else {**os.environ, **env}
    log.debug("running %s", describe(argv))
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=full_env, cwd=cwd, start_new_session=True)
    except FileNotFoundError:
        raise CommandNotFound(f"{argv[0]}: command not found (is the scheduler's bin directory "
                              "on PATH?)")
    except OSError as exc:
        raise CommandNotFound(f"{argv[0]}: cannot run: {exc.strerror or exc}")
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_and_reap(proc)
        raise CommandTimeout(f"`{describe(argv)}` did not finish within {timeout:g} s (killed)")
    if check and proc.returncode != 0:
        reason = first_line(stderr) or first_line(stdout) or "no output"
        raise CommandFailed(f"`{describe(argv)}` failed with exit status {proc.returncode}: {reason}",
                            proc.returncode, stdout, stderr)
    return CommandResult(argv, stdout, stderr, proc.returncode)


def cancel(argv: Sequence[str], gone: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> None:
    """Run a cancel command; a failure whose output says the job is already gone (any of
    ``gone``) is not an error (the job ended between our status call and the cancel)."""
    try:
        run(argv, timeout)
    except CommandFailed as exc:
        if not any(word in exc.stderr + exc.stdout for word in gone):
            raise


def retry(call: Callable[[], T], *, attempts: int = 3, delay: float = 2.0, factor: float = 2.0,
          max_delay: float = 60.0,
          retry_on: tuple[type[BaseException], ...] = (CommandFailed, CommandTimeout),
          sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, retried up to ``attempts`` times in all while it raises one of ``retry_on``,
    sleeping ``delay``, ``delay*factor``, ... (at most ``max_delay``) between tries.

    Each failure is logged as a warning; the last one is re-raised. Do not retry a submission
    on :class:`CommandTimeout`: the job may already be queued.
    """
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    wait = delay
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except retry_on as exc:
            if attempt == attempts:
                raise
            log.warning("attempt %d/%d failed: %s; retrying in %.3g s", attempt, attempts, exc, wait)
            sleep(wait)
            wait = min(max_delay, wait * factor)
    raise AssertionError("unreachable")


class Backoff:
    """When a periodic caller may next try an operation that keeps failing.

    After ``n`` consecutive failures the operation waits ``initial * factor**(n-1)`` seconds
    (at most ``maximum``) before it is :meth:`ready` again; one success resets it. Times are
    ``time.monotonic()`` values passed in by the caller, so tests need no clock.
    """

    def __init__(self, initial: float = 10.0, factor: float = 2.0, maximum: float = 600.0):
        if initial < 0 or factor < 1 or maximum < initial:
            raise ValueError("need 0 <= initial <= maximum and factor >= 1")
        self.initial, self.factor, self.maximum = initial, factor, maximum
        self.failures = 0
        self.next_try = float("-inf")

    def ready(self, now: float) -> bool:
        """True if the operation may run at ``now``."""
        return now >= self.next_try

    def failed(self, now: float) -> float:
        """Record a failure at ``now``; returns the seconds to wait before the next try."""
        self.failures += 1
        wait = min(self.maximum, self.initial * self.factor ** min(self.failures - 1, 64))
        self.next_try = now + wait
        return wait

    def succeeded(self) -> None:
        """Record a success: the next try may happen at once."""
        self.failures = 0
        self.next_try = float("-inf")
