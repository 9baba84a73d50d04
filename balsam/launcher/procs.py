"""Start, watch and stop task processes, each in its own process group.

Every task runs in a new session (``start_new_session``), so signalling its process group reaches
the real MPI job and everything it started, not only a wrapper such as ``mpiexec`` or the shell
that sources an envscript. Output (stdout and stderr) goes to one file.
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Sequence
from typing import IO, Any, Optional

from balsam.launcher.libc_spawn import open_output
from balsam.platform.process import start_time
from balsam.platform.procgroup import signal_group


class Task:
    """A running task process; ``returncode`` is None until it has exited and been reaped.
    OSError if it cannot start: its output file is opened as a shell task's
    (:func:`balsam.launcher.libc_spawn.open_output`: a FIFO with no reader fails the start
    and names it)."""

    message: str = ""
    """Why the task failed, when it said so itself (a function task that could not start:
    :mod:`balsam.launcher.warm_pool`); else its failure is reported with its output's tail."""
    leader_start: Optional[int] = None
    """The leader's start time, read at :meth:`terminate` while it is not reaped: the group is
    signalled after the reap too, and by then its id may name another process."""

    def __init__(self, job_id: str, argv: Sequence[str], env: dict[str, str], cwd: str,
                 output_path: str, cpus: Optional[Sequence[int]] = None,
                 ignore_sigpipe: bool = False) -> None:
        self.job_id = job_id
        self.output_path = output_path
        self.started = time.time()
        self.kill_deadline: Optional[float] = None
        os.makedirs(cwd, exist_ok=True)
        # never a blocking open (a FIFO at the path would hang the launcher's warm start)
        out: IO[bytes] = open(open_output(argv[0], cwd, output_path), "wb")
        try:
            self.proc = _spawn(argv, env, cwd, out, cpus, ignore_sigpipe)
        finally:
            out.close()
        self.pgid = self.proc.pid

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.returncode

    def poll(self) -> Optional[int]:
        """Reap the process if it has exited; its return code or None."""
        return self.proc.poll()

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the task's whole process group (ignored if it is already gone, or
        its id names a process started since: see :attr:`leader_start`)."""
        signal_group(self.pgid, sig, self.leader_start)

    def terminate(self, grace: float) -> None:
        """SIGTERM the group now; :meth:`enforce_kill` sends SIGKILL once ``grace`` has passed."""
        if self.kill_deadline is None:
            if self.returncode is None:  # not reaped: the pid is still the leader's
                self.leader_start = start_time(self.pgid)
            self.signal_group(signal.SIGTERM)
            self.kill_deadline = time.monotonic() + grace

    def enforce_kill(self) -> None:
        """SIGKILL the group if :meth:`terminate` was called and its grace period is over.

        The group is signalled even after the leader exited: children it left behind die too.
        """
        if self.kill_deadline is not None and time.monotonic() >= self.kill_deadline:
            self.signal_group(signal.SIGKILL)
            self.kill_deadline = float("inf")


def _spawn(argv: Sequence[str], env: dict[str, str], cwd: str, out: IO[bytes],
           cpus: Optional[Sequence[int]], ignore_sigpipe: bool = False) -> subprocess.Popen[Any]:
    # ignore_sigpipe: the child keeps Python's SIG_IGN for SIGPIPE (and SIGXFSZ). For MPI
    # launchers that reset their ranks' signals (MPICH's Hydra does): under load, `mpiexec`
    # can die of SIGPIPE writing to a proxy that already exited, after the ranks succeeded.
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                restore_signals=not ignore_sigpipe)
    # Pin by setting our own affinity around the spawn: the child inherits it, and Popen keeps
    # its fast vfork path (a preexec_fn would force a slower fork). Callers are single-threaded.
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        return subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                restore_signals=not ignore_sigpipe)
    finally:
        os.sched_setaffinity(0, previous)


_OUTSIDE_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stopped_from_outside(returncode: int) -> Optional[str]:
    """The signal's name if a task the launcher did not stop ended by SIGTERM, SIGINT or SIGHUP
    (killed by it, or a wrapper such as ``mpiexec`` or a shell exiting with 128 + its number):
    the batch system ending the allocation (walltime, ``scancel``/``qdel``) signals every process
    of the job at once, often before the launcher hears of it. Such runs are recorded
    RUN_TIMEOUT (retried as usual), not RUN_ERROR. None for any other code."""
    for sig in _OUTSIDE_SIGNALS:
        if returncode in (-sig, 128 + sig):
            return signal.Signals(sig).name
    return None


def tail(path: str, lines: int) -> str:
    """The last ``lines`` lines of a text file (reads at most the last 64 KiB); "" if it is
    not a regular file (opened ``O_NONBLOCK``: a FIFO at the path with no writer would block
    the caller in ``open``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    with open(fd, "rb") as fh:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return ""
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 65536))
            data = fh.read()
        except OSError:
            return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
