"""Serial mode: the launcher's side of the ensemble's rank 0 stdin, and the ensemble it started.

Hydra forwards ``mpiexec``'s stdin to rank 0 (whatever the bootstrap), so an ensemble started
before the launcher's session opened (:func:`balsam.launcher.serial_mode.launch`) reads there
the session id, then what the launcher's own first tasks hold on node 1
(:mod:`balsam.launcher.warm_start`), then ``-JOBID`` lines as those end; end of file after the
last (or instead of an id: no session, :func:`abandon`). Rank 0's side is
:func:`balsam.launcher.rank_boot.read_handover`.
"""
from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from balsam.platform.procgroup import signal_group

if TYPE_CHECKING:
    from balsam.launcher.context import Context


@dataclass
class Launched:
    """An ensemble the launcher started: its MPI launch, its output, whether rank 0 reads stdin."""

    proc: subprocess.Popen[Any]
    out_path: str
    early: bool = False


def hand_over(launched: Launched, session_id: int, holds: str = "") -> None:
    """Give the early ensemble's rank 0 the session id (it then claims work) and, after it,
    ``holds``: what the launcher's own first tasks hold on node 1
    (:mod:`balsam.launcher.warm_start`; stdin then stays open for :func:`tell_ended`)."""
    assert launched.proc.stdin is not None
    try:
        launched.proc.stdin.write(f"{session_id} {holds}\n".encode())
        if holds:
            launched.proc.stdin.flush()
        else:
            launched.proc.stdin.close()
    except OSError:  # the launch died: the wait sees its status
        pass


def tell_ended(launched: Launched, job_ids: list[str], last: bool) -> None:
    """Tell rank 0 the launcher's own tasks ended, recorded (``-JOBID`` lines); ``last``: close stdin."""
    stdin = launched.proc.stdin
    if stdin is None or stdin.closed:
        return
    try:
        if job_ids:
            stdin.write("".join(f"-{j}\n" for j in job_ids).encode())
            stdin.flush()
        if last:
            stdin.close()
    except OSError:  # rank 0 is gone: the wait sees the launch's status
        pass


def abandon(launched: Launched, ctx: Context, wait_seconds: float = 5.0) -> None:
    """The session could not be opened: rank 0 reads end-of-file instead of an id and tells
    the workers to exit (nothing was claimed, no task started); kill what remains after
    ``wait_seconds``."""
    with_stdin = launched.proc.stdin
    if with_stdin is not None:
        try:
            with_stdin.close()
        except OSError:
            pass
    try:
        launched.proc.wait(wait_seconds)
    except subprocess.TimeoutExpired:
        signal_group(launched.proc.pid, signal.SIGKILL)
        launched.proc.wait()
    if ctx.watchdog is not None:
        ctx.watchdog.remove(launched.proc.pid)
