"""Serial-mode worker: function tasks queued behind short running ones in their warm processes.

A warm process (:mod:`balsam.launcher.warm_pool`) that ends a task and then waits for the worker
rank's next request idles for a round trip through the rank's loop (woken by the reply, the
report, the next start): at thousands of no-op tasks a second that wait, not the task, was most
of each task's time. So while a pool's tasks are short (:meth:`WarmPool.can_follow`), the
function task at the head of the worker's queue, which does not fit on the node now, is sent to
the warm process of a running function task of the same shape instead
(:meth:`WarmQueueing._queue_behind`, up to ``warm_pool.QUEUE_DEPTH`` (2) per process, each
behind the last; not on nodes with GPUs): it begins there the moment the one before returns,
on the same cores.

It counts as started only once it began: the warm process's reply to the task before it says
so (or, sent after that reply, it begins on arrival), and then it takes that task's placement
(:meth:`balsam.launcher.nodeslots.NodeSlots.hand_over`) and descriptor and is reported
``started`` in the report of that one's end (:meth:`WarmQueueing._follow`). A kill or a stop
that reaches it first cancels it (``(CANCEL, job id)``, taken by the warm process before it
begins anything; the tasks queued after it are taken back with it and go back to the queue):
reported ``killed`` or ``returned``, never run. If the task before it is killed, or its process
dies, it goes back to the queue (it never ran). One that began in the
microseconds before such a cancel arrived is stopped like any running task (``stopped``:
RUN_TIMEOUT, retried by the usual rules).

If the task ahead turns long (it runs longer than ``short_seconds``) and a place frees on the
node, the worker takes the first task queued behind it back to run it there
(:meth:`WarmQueueing._recall`): the warm process's watcher answers a cancel while a long task
runs (:mod:`balsam.launcher.warm_channel`), the pool hands what it took back in ``taken``, and
:meth:`WarmQueueing._give_back` queues it again (or reports it killed or returned, if a kill or
a stop asked for it). One that began before the recall arrived runs on where it is.

:class:`WarmQueueing` is a base of :class:`balsam.launcher.serial_worker.Worker`, which owns
the loop, the queue and the reports.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Optional, Protocol

from balsam.core.payloads import TaskRow
from balsam.launcher import procs
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.warm_pool import WarmPool, WarmTask, is_runner_argv


class Running:
    """A task the worker started (or, queued behind another, will have started)."""

    __slots__ = ("task", "fd", "why")

    def __init__(self, task: procs.Task, fd: int) -> None:
        self.task = task
        self.fd = fd
        self.why = ""  # "" running normally, "kill" (user kill), "stop" (launcher stopping)


class QueuedWork(Protocol):
    """What is read here of a queued :class:`balsam.launcher.serial_worker.Work` item."""

    @property
    def job_id(self) -> str: ...
    @property
    def argv(self) -> list[str]: ...
    @property
    def envscript(self) -> Optional[str]: ...
    @property
    def env(self) -> dict[str, str]: ...
    @property
    def workdir(self) -> str: ...
    @property
    def output_path(self) -> str: ...
    @property
    def packing(self) -> int: ...
    @property
    def required_cores(self) -> int: ...
    @property
    def row(self) -> Optional[TaskRow]: ...


class WarmQueueing:
    """The function tasks a worker queued behind running ones (see the module docstring); the
    loop (:class:`balsam.launcher.serial_worker.Worker`) sets these attributes up."""

    _tails: dict[str, WarmTask]
    """Running function tasks nothing is queued behind yet."""
    _behind: dict[str, tuple[Running, Any]]
    """Function tasks queued behind a running one, not begun: job id -> (their future
    :class:`Running`, their work item)."""
    _stop_grace: float
    # The loop's, read or touched here.
    queue: deque[Any]
    running: dict[str, Running]
    warm: WarmPool
    node: NodeSlots
    stopping: bool
    started: int
    kill_grace: float

    def _note_all(self, key: str, values: Sequence[Any]) -> None:
        """Add to this iteration's report (provided by ``Worker``)."""
        raise NotImplementedError

    def _ended(self, job_id: str, r: Running, rc: int) -> None:
        """Report a task's end (provided by ``Worker``)."""
        raise NotImplementedError

    def _queue_behind(self) -> bool:
        """Send the function tasks at the head of the queue (which does not fit now) to warm
        processes of short running tasks of the same shape; whether any was sent (or any
        taken back went back to the queue: it is placed in the next iteration)."""
        if self.warm.taken:
            self._give_back(self.warm.taken)
            self.warm.taken.clear()
            return True
        if self._behind and not self.stopping and not self.node.full:
            self._recall()
        if self.stopping or not self.queue or not self._tails or self.node.gpus:
            return False
        now, sent = time.monotonic(), False
        while self.queue and self._tails:
            work: QueuedWork = self.queue[0]
            if work.envscript is not None or not is_runner_argv(work.argv):
                break
            running = self._tails.pop(next(iter(self._tails)))
            if running.shape != (work.packing, work.required_cores) \
                    or not self.warm.can_follow(running, now):
                continue
            try:
                task = self.warm.queue_behind(running, work.job_id, work.env, work.workdir,
                                              work.output_path, work.row)
            except OSError:
                break
            self.queue.popleft()
            self._behind[work.job_id] = (Running(task, -1), work)
            self._tails[work.job_id] = task  # the last of its process now
            sent = True
        return sent

    def _recall(self) -> None:
        """A place is free: take back the first task queued behind one that turned long (it
        runs longer than ``short_seconds``) and fits the place, with those queued after it, to
        run it there (its warm process answers while its task runs)."""
        now = time.monotonic()
        for r, work in self._behind.values():
            task = r.task
            if not isinstance(task, WarmTask) or task.cancelled:
                continue
            if task.cancel_sent:
                if task.recalled and not task.begun:  # one recall at a time: its answer
                    return                            # may take the free place
                continue
            process, ahead = task.process, task.process.running
            if process.queued and process.queued[0] is task and ahead is not None \
                    and now - ahead.started >= self.warm.short_seconds \
                    and self.node.fits(work.packing):
                self.warm.cancel(task, recall=True)
                return

    def _give_back(self, tasks: Sequence[WarmTask]) -> None:
        """Tasks taken back unrun (none began): reported killed or returned, if a kill or a
        stop asked for them, else queued again (first, in their order)."""
        again: list[Any] = []
        for task in tasks:
            behind = self._behind.pop(task.job_id, None)
            self._tails.pop(task.job_id, None)
            if behind is None:
                continue
            if behind[0].why == "kill":
                self._note_all("killed", [task.job_id])
            elif behind[0].why or self.stopping:
                self._note_all("returned", [task.job_id])
            else:
                again.append(behind[1])
        self.queue.extendleft(reversed(again))

    def _kill_behind(self, job_id: str) -> bool:
        """A user kill of a queued task: cancel it (True), if it is one."""
        behind = self._behind.get(job_id)
        if behind is None:
            return False
        behind[0].why = "kill"
        self._cancel(behind[0].task)  # and those queued after it (they go back to the queue)
        return True

    def _stop_behind(self, grace: float) -> None:
        """The launcher stops: every queued task is cancelled (or stopped once it began)."""
        self._stop_grace = grace
        self._tails.clear()
        for behind, _ in self._behind.values():
            behind.why = behind.why or "stop"
            self._cancel(behind.task)

    def _cancel_behind(self, task: procs.Task) -> None:
        """``task`` is being stopped: ask back the task queued behind it (queued again if it
        never began)."""
        if isinstance(task, WarmTask):
            self._tails.pop(task.job_id, None)
            if task.successor is not None:
                self.warm.cancel(task.successor)

    def _cancel(self, task: procs.Task) -> None:
        if isinstance(task, WarmTask):
            self.warm.cancel(task)

    def _follow(self, task: WarmTask, collateral: bool) -> None:
        """The task queued behind one that ended began (it has that one's place and
        descriptor: reported started) or was cancelled with those queued after it (they never
        ran: reported killed or returned, or queued again if nobody asked)."""
        if not task.begun:
            chain: list[WarmTask] = []
            follow: Optional[WarmTask] = task
            while follow is not None:
                chain.append(follow)
                follow = follow.successor
            self._give_back(chain)
            return
        r, work = self._behind.pop(task.job_id)
        if collateral or (task.cancel_sent and not task.recalled):  # stopped with the one
            r.why = r.why or "stop"  # before, or asked back too late: it stops now
        r.fd = task.fd
        self.started += 1
        self.running[task.job_id] = r
        self._note_all("started", [task.job_id])
        if task.returncode is not None:  # its reply came with the one before
            self._ended(task.job_id, r, task.returncode)
        elif r.why:
            task.terminate(self.kill_grace if r.why == "kill" else self._stop_grace)
        else:
            last = task
            while last.successor is not None:
                last = last.successor
            self._tails[last.job_id] = last  # room behind it again
