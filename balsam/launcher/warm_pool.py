"""Warm Python workers of a serial-mode worker: function tasks without an interpreter start.

A serial worker (:mod:`balsam.launcher.serial_worker`) hands a Python-function task (its command
is :func:`balsam.site.pyfunc.runner_command` and it has no envscript) to a :class:`WarmPool`
instead of spawning it. The pool keeps processes of ``python -m balsam.launcher.pyfunc_task
--warm FD`` (:func:`balsam.launcher.pyfunc_task.serve`), each in its own session, started on
first need (at most one per running task, so one per core at most when every task holds a
core) and reused for task after task. A task in a warm process is a :class:`WarmTask`: the
:class:`balsam.launcher.procs.Task` interface the worker already drives (poll, terminate,
kill, process group), its end announced on a descriptor the worker polls like a pidfd. A task
sent with its job row (read by the master with its claim) comes back with its outcome
(:attr:`WarmTask.outcome`), which the worker reports for the master to write: the warm process
then touches no database (:mod:`balsam.core.payloads`).

A warm process that dies, or whose task was killed or stopped (its group is SIGKILLed, as any
task's), is dropped; the next task starts a new one. Closing the pool closes the connections:
each warm process exits when it reads the end. Short tasks may be queued behind a running one
(:meth:`WarmPool.queue_behind`; when and how: :mod:`balsam.launcher.serial_warm`).

The worker's watchdog (:class:`Guard`) hears of each request before it is sent (so a process
is registered before it can run a task; one write per task, which also carries the removals
the worker deferred): one sent to an idle process counts as started, one queued behind only if
its process noted that it began (:mod:`balsam.launcher.warm_channel`); and of each process the
pool lets go. The messages themselves: :mod:`balsam.launcher.warm_channel`.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Optional, Protocol

from balsam.core.payloads import OutcomeRow, TaskRow
from balsam.launcher import procs
from balsam.launcher.runner_argv import RUNNER_MODULE as RUNNER_MODULE
from balsam.launcher.runner_argv import is_runner_argv as is_runner_argv
from balsam.launcher.warm_channel import CANCEL, Channel
from balsam.platform.procgroup import signal_group

EXIT_WAIT_SECONDS = 1.0
"""How long a warm process whose connection ended may take to exit before it is killed."""
QUEUE_DEPTH = 2
"""Most tasks queued in one warm process behind the one it runs (two: a rank that the scheduler
keeps off the CPU for a few milliseconds does not leave the process idle after one task)."""
SHORT_TASK_SECONDS = 0.01
"""Queue behind a running task only while this pool's tasks average less (their ends seen by
the worker) and it is younger: its successor waits microseconds (if the task turns long, the
worker takes it back when a place frees: :mod:`balsam.launcher.serial_warm`)."""
SHORT_WEIGHT = 0.1
"""Weight of each end in that average (exponential)."""


class Guard(Protocol):
    """What the pool tells the worker's watchdog (:class:`balsam.launcher.watchdog.Watchdog`):
    a request sent to an idle process starts (``add``), one queued behind a running task
    (``queue``) counts as started only if its process noted it in ``began_path`` ("": counted
    started); ``remove`` when the pool lets a process go."""

    began_path: str

    def add(self, pgid: int, job_id: str = "") -> None: ...
    def queue(self, pgid: int, job_id: str) -> None: ...
    def remove(self, pgid: int, *, defer: bool = False) -> None: ...


class WarmProcess:
    """One warm worker process and the worker's end of its connection."""

    def __init__(self, env: Mapping[str, str], cwd: str, python: str = sys.executable,
                 began_path: str = "", taken: Optional[list[WarmTask]] = None) -> None:
        mine, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [python, "-m", RUNNER_MODULE, "--warm", str(theirs.fileno())]
                + ([began_path] if began_path else []),
                pass_fds=[theirs.fileno()], env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                start_new_session=True)
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()
        self.conn = Channel(mine)
        self.pid = self.proc.pid
        self.cpus: Optional[tuple[int, ...]] = None
        self.tasks = 0
        self.sent: dict[str, WarmTask] = {}
        """Requests sent and not ended: the task running, and those queued behind it."""
        self.queued: deque[WarmTask] = deque()
        """The requests queued behind the running task, in order, not known to have begun."""
        self.running: Optional[WarmTask] = None  # the task begun last
        self.taken = [] if taken is None else taken
        """Where requests taken back while a task ran are put (the pool's list)."""
        self.gone = False

    def alive(self) -> bool:
        return not self.gone and self.proc.poll() is None

    def read(self) -> None:
        """Take every reply waiting: ends (each with its outcome), and what became of the
        requests queued behind (after each end the first not cancelled begins: named in the
        reply's ``next``, or sent after the process looked, it begins on arrival); a reply
        without a job id took requests back while a task ran (they go to ``taken``, unlinked
        from the tasks ahead). When the process is gone, its running task gets the exit status
        and the queued requests are cancelled (never begun)."""
        try:
            while self.conn.poll():
                job_id, rc, outcome, _next, cancelled = self.conn.recv()
                for cancel in cancelled:
                    self._cancelled(cancel, job_id is None)
                if job_id is None:
                    self._relink()
                    continue
                task = self.sent.pop(job_id, None)
                if task is not None:
                    self.tasks += 1
                    task.outcome, task.message = (None, outcome) if isinstance(outcome, str) \
                        else (outcome, "")  # a str: why it could not start
                    task.ended(int(rc))
                if self.queued:
                    self.queued.popleft().begin()
            return
        except (EOFError, OSError):  # the process is gone or going: its status is its task's
            pass
        self.gone = True
        try:
            rc = self.proc.wait(EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            signal_group(self.pid, signal.SIGKILL)
            rc = self.proc.wait()
        for job_id in list(self.sent):
            task = self.sent[job_id]
            if task.begun:
                del self.sent[job_id]
                task.ended(rc if rc != 0 else 255)
            else:
                self._cancelled(job_id)

    def _cancelled(self, job_id: str, taken: bool = False) -> None:
        task = self.sent.pop(job_id, None)
        if task is not None:
            task.cancelled = True
            if task in self.queued:
                self.queued.remove(task)
            if taken:
                self.taken.append(task)

    def _relink(self) -> None:
        """The running task and the requests still queued behind it, in order, as a chain."""
        last = self.running
        if last is not None:
            for task in self.queued:
                last.successor = last = task
            last.successor = None

    def close(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass


class WarmTask(procs.Task):
    """A function task sent to a :class:`WarmProcess` (the ``procs.Task`` interface); ``fd``
    (a duplicate of the connection's descriptor, the caller closes it) becomes readable when
    the process replies or dies. A task sent to an idle process has ``begun``; one queued
    behind a running task (:meth:`WarmPool.queue_behind`) begins when that one ends, unless it
    was ``cancelled`` first (then it never ran), and then gets that one's ``fd`` (-1 until
    then)."""

    def __init__(self, job_id: str, process: WarmProcess, output_path: str, begun: bool,
                 shape: tuple[int, int] = (0, 0)) -> None:
        self.job_id = job_id
        self.output_path = output_path
        self.started = time.monotonic()
        self.kill_deadline: Optional[float] = None
        self.process = process
        self.pid = self.pgid = process.pid
        self.begun = begun
        self.cancelled = False
        self.cancel_sent = False
        self.shape = shape  # (node packing count, required cores) it was placed with
        self.successor: Optional[WarmTask] = None  # the task queued behind this one
        self.duration: Optional[float] = None
        self._returncode: Optional[int] = None
        self.outcome: Optional[OutcomeRow] = None
        """The task's outcome, when the warm process returned it for the master to write."""
        self.fd = os.dup(process.conn.fileno()) if begun else -1
        self.recalled = False  # cancelled to run elsewhere: if it began anyway, it runs on
        process.sent[job_id] = self
        if begun:
            process.running = self

    @property
    def returncode(self) -> Optional[int]:
        return self._returncode

    def begin(self) -> None:
        self.begun = True
        self.started = time.monotonic()
        self.process.running = self

    def ended(self, rc: int) -> None:
        self._returncode = rc
        self.duration = time.monotonic() - self.started

    def poll(self) -> Optional[int]:
        """The task's exit status once it replied (or its process died: -N if killed by
        signal N, as for a spawned task)."""
        if self._returncode is None and not self.cancelled:
            self.process.read()
        return self._returncode


class WarmPool:
    """The warm processes of one serial worker (see the module docstring)."""

    def __init__(self, env: Mapping[str, str], cwd: str, python: str = sys.executable, *,
                 watchdog: Optional[Guard] = None) -> None:
        self.env = dict(env)
        self.cwd = cwd
        self.python = python
        self.watchdog = watchdog
        self.taken: list[WarmTask] = []
        """Requests taken back while the task ahead ran, not yet given back to the queue."""
        self.idle: list[WarmProcess] = []
        self.busy: dict[str, WarmTask] = {}  # tasks begun and not finished, by job id
        self.started = 0  # warm processes started so far
        self.short_seconds = SHORT_TASK_SECONDS  # what counts as short (:meth:`can_follow`)
        self.mean_seconds = SHORT_TASK_SECONDS
        """Average duration of this pool's tasks (exponential; none yet: not short, so the
        first tasks are never queued behind)."""
        self.queued_behind = 0  # tasks queued behind another so far

    def start(self, job_id: str, env: Mapping[str, str], workdir: str, output_path: str,
              cpus: Sequence[int], row: Optional[TaskRow] = None,
              shape: tuple[int, int] = (0, 0)) -> WarmTask:
        """Run a task in an idle warm process (started now if there is none); OSError if no
        process could be started. ``env``: the task's variables on top of the pool's
        environment. ``row``: the task's job fields and arguments as the master read them
        (then the outcome comes back as :attr:`WarmTask.outcome`), or None (the warm process
        reads them and writes the outcome itself). ``shape``: (packing count, cores)."""
        wanted = tuple(cpus)
        process = self._idle_process(wanted)
        if process is None:
            process = WarmProcess(self.env, self.cwd, self.python,
                                  self.watchdog.began_path if self.watchdog else "", self.taken)
            self.started += 1
        if process.cpus != wanted:
            try:
                os.sched_setaffinity(process.pid, wanted)
                process.cpus = wanted
            except (OSError, AttributeError):
                pass
        task = self._send(process, job_id, env, workdir, output_path, row, True, shape)
        self.busy[job_id] = task
        return task

    def queue_behind(self, running: WarmTask, job_id: str, env: Mapping[str, str],
                     workdir: str, output_path: str, row: Optional[TaskRow] = None) -> WarmTask:
        """Send a task to ``running``'s process, to begin there when ``running`` (the running
        task or the last one queued behind it) ends, on the same cores: it takes over that
        one's placement; OSError if it cannot be sent. The caller checks :meth:`can_follow`
        first."""
        task = self._send(running.process, job_id, env, workdir, output_path, row, False,
                          running.shape)
        running.successor = task
        running.process.queued.append(task)
        self.queued_behind += 1
        return task

    def can_follow(self, running: WarmTask, now: float) -> bool:
        """Whether a task may be queued behind ``running``: this pool's tasks are short,
        ``running`` is young (sent or begun within ``short_seconds``), the last of its process,
        not being stopped, and fewer than ``QUEUE_DEPTH`` wait there."""
        process = running.process
        return (running.successor is None and not running.cancel_sent
                and running.returncode is None and not running.cancelled and not process.gone
                and len(process.queued) < QUEUE_DEPTH
                and self.mean_seconds < self.short_seconds
                and now - running.started < self.short_seconds)

    def _send(self, process: WarmProcess, job_id: str, env: Mapping[str, str], workdir: str,
              output_path: str, row: Optional[TaskRow], begun: bool,
              shape: tuple[int, int]) -> WarmTask:
        if self.watchdog is not None:
            (self.watchdog.add if begun else self.watchdog.queue)(process.pid, job_id)
        try:
            process.conn.send((job_id, _delta(self.env, env), workdir, output_path, row,
                               not begun))
        except OSError:
            self._drop(process)
            raise
        return WarmTask(job_id, process, output_path, begun, shape)

    def cancel(self, task: WarmTask, recall: bool = False) -> None:
        """Ask for a queued task back, with every task queued after it (its process says at
        once if a long task runs, else after its running task, whether they began); a task
        that began is not affected. ``recall``: to run them elsewhere (one that began anyway
        runs on, where it is)."""
        chain: list[WarmTask] = []
        follow: Optional[WarmTask] = task
        while follow is not None:
            if not (follow.begun or follow.cancel_sent or follow.cancelled):
                chain.append(follow)
            follow = follow.successor
        if chain:
            for queued in chain:
                queued.cancel_sent, queued.recalled = True, recall
            try:
                task.process.conn.send((CANCEL, [t.job_id for t in chain]))
            except OSError:  # the process is gone: they never begin
                pass

    def _idle_process(self, cpus: tuple[int, ...]) -> Optional[WarmProcess]:
        """A live idle process, preferably one already pinned to ``cpus`` (moving a process
        to other cores costs a migration and a cold cache: with one process per core, each
        keeps its core); dead ones found are dropped."""
        for i, candidate in enumerate(self.idle):
            if candidate.cpus == cpus and candidate.alive():
                return self.idle.pop(i)
        while self.idle:
            candidate = self.idle.pop()
            if candidate.alive():
                return candidate
            self._drop(candidate)
        return None

    def finished(self, task: WarmTask, clean: bool) -> Optional[WarmTask]:
        """``task`` was reaped: its process goes back to the pool if the task ended on its own
        (``clean``), the process lives and nothing began behind it; otherwise the process is
        dropped unless a task began behind it. Returns the task that was queued behind it (it
        has ``begun`` and holds ``task``'s descriptor now, or is ``cancelled``: it never ran),
        or None."""
        self.busy.pop(task.job_id, None)
        if task.duration is not None:
            self.mean_seconds += SHORT_WEIGHT * (task.duration - self.mean_seconds)
        process, successor = task.process, task.successor
        if successor is not None and not successor.begun and not successor.cancelled:
            process.read()  # its fate is in the reply just read, or the process is gone
            successor = task.successor  # a take-back read meanwhile unlinked what it took
            if successor is not None and not successor.begun:
                follow: Optional[WarmTask] = successor
                while follow is not None:  # never begins: nor does what is behind it
                    process._cancelled(follow.job_id)
                    follow = follow.successor
        if successor is not None and successor.begun:
            self.busy[successor.job_id] = successor
            successor.fd, task.fd = task.fd, -1
            return successor
        if clean and task.returncode is not None and task.returncode >= 0 and process.alive() \
                and not process.conn.closed:
            self.idle.append(process)
        else:
            self._drop(process)
        return successor

    def _drop(self, process: WarmProcess) -> None:
        process.close()
        if self.watchdog is not None:
            self.watchdog.remove(process.pid)

    def close(self, timeout: float = 2.0) -> None:
        """End every warm process (they exit when their connection closes)."""
        processes = list({p.pid: p for p in
                          self.idle + [t.process for t in self.busy.values()]}.values())
        self.idle, self.busy = [], {}
        for p in processes:
            p.close()
        end = time.monotonic() + timeout
        for p in processes:
            try:
                p.proc.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_group(p.pid, signal.SIGKILL)
                p.proc.wait()
            if self.watchdog is not None:
                self.watchdog.remove(p.pid)


def _delta(base: Mapping[str, str], env: Mapping[str, str]) -> dict[str, Optional[str]]:
    """The task's variables ``env`` that ``base`` (the process's start environment) lacks or
    has otherwise: the message stays small."""
    return {k: v for k, v in env.items() if base.get(k) != v}
