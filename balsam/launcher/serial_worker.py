"""Serial-mode worker: one per node (MPI ranks 1..N), starting the master's tasks locally.

A :class:`Worker` keeps a queue of :class:`Work` items sent by the master and starts them as
:class:`balsam.launcher.spawn.SpawnedTask` processes (own process group, ``posix_spawn`` from a
thread pinned to the task's CPUs: :mod:`balsam.launcher.spawn_threads`; directories and output
files made ahead by a :class:`balsam.launcher.spawn.Preparer` thread) while they fit on its node
(:class:`balsam.launcher.nodeslots.NodeSlots`: ``node_packing_count`` occupancy, own cores,
pinned as :func:`balsam.launcher.spawn.pinned_cpus` says, one GPU per task with
``CUDA_VISIBLE_DEVICES``; the starts: :mod:`balsam.launcher.serial_starts`, where a slot's next
shell task may be *chained* behind its running one, started by the native spawning thread as
soon as that one exits; a kill, stop, exit or abort withdraws a chained start not begun,
reported ``killed`` or ``returned``). Each loop iteration it reads the master's orders, takes over started
tasks, reaps exited ones, starts what fits and notes it all in ONE report, sent at once if it says
more than starts and clean ends or the queue is empty, else at most every ``REPORT_SECONDS``.
When nothing happened, or work waits for a slot, it waits up to 1 ms (10 ms once quiet) in
``epoll`` (a task's end ends it; no empty iteration: benchmarks/README.md, "branch s16-loop").

Orders (master -> worker, dicts): ``work`` [Work], ``kill`` [job ids] (stop those tasks' process
groups: SIGTERM, ``kill_grace``, SIGKILL; drop them if still queued), ``stop`` grace seconds (the
launcher is stopping: drop the queue, stop every task), ``exit`` (leave the loop), ``abort``
(SIGKILL every task at once and leave: the session was lost). An ``exit`` with ``recorded`` True
says every start was written to the database (the watchdog's report need not list them). ``recall``
worth, ``fits`` (give back queued work worth up to that many nodes, each task at most ``fits``
of a node, to run elsewhere: :mod:`balsam.launcher.serial_rebalance`). ``hold`` [(id, packing
count, cores, ...)] / ``unhold`` [ids]: a task the launcher itself runs on this node (its warm
start, :mod:`balsam.launcher.warm_start`) takes / gives back its share.

Reports (worker -> master, dicts, only non-empty keys): ``started`` [ids] (a task that failed to
start is reported started, then failed), ``done`` [ids] (exit 0), ``failed`` [(id, rc, output
tail)], ``killed`` [ids] (a kill order completed: the group is gone or it never started),
``stopped`` [(id, rc)] (ended by a stop; exit 0 within the grace is ``done``), ``returned`` [ids]
(never started, given back), ``recalled`` [ids] (the answer to a ``recall``: never started),
``outcomes`` [:data:`balsam.core.payloads.OutcomeRow`] (function tasks' outcomes, always in the
report of the task's end, to be written with it), ``drained`` True (stopping, nothing left running),
``bye`` True (the last report, after ``exit`` or ``abort``). A SIGTERM/SIGINT to the worker acts as
a ``stop`` and is announced with ``stopping``.

The task environment is the worker's own, passed once through
:func:`balsam.launcher.task.task_environment` (without the ensemble's ``PMI_*``/``HYDRA_*``: a
task that is an MPI program is not part of the launcher's MPI job), plus the job's variables
(``Work.env``). A Python-function task (:mod:`balsam.site.pyfunc`: its command is the function
runner, no envscript) runs in a warm Python worker (:mod:`balsam.launcher.warm_pool`) with the
same reports; while such tasks are short, the next waits in a running one's warm process
(:mod:`balsam.launcher.serial_warm`). The loop is transport-agnostic (:class:`Channel`).
"""
from __future__ import annotations

import itertools
import math
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

from balsam import defaults
from balsam.launcher import libc_spawn, procs, spawn, spawn_native, spawn_threads, task
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.rank_usage import thread_cpu
from balsam.launcher.serial_starts import Starts, is_shell
from balsam.launcher.serial_warm import Running as _Running
from balsam.launcher.serial_warm import WarmQueueing
from balsam.launcher.serial_work import Channel as Channel  # re-exported: the master, tests
from balsam.launcher.serial_work import Work as Work
from balsam.launcher.serial_work import node_share
from balsam.launcher.spawn_takeover import ThreadedStarts
from balsam.launcher.warm_pool import WarmPool, WarmTask
from balsam.launcher.watchdog import Watchdog

if TYPE_CHECKING:
    from balsam.launcher.rank_heartbeat import Pulse

IDLE_WAIT_MS = 1
"""Longest wait (ms) of an iteration in which nothing happened (a task exit ends it at once)."""
FD_CHECK_SECONDS = 1.0
"""How often descriptors the MPI library opened are made close-on-exec (tasks inherit none)."""
REPORT_SECONDS = 0.004
"""A report of only starts and clean ends (``ROUTINE``) waits at most this long for more, while
shell tasks are queued (warm function tasks report at once: faster, bench_pyfunc.py)."""
ROUTINE = frozenset({"started", "done"})
QUIET_WAIT_MS = 10
QUIET_SECONDS = 0.05
"""After this long without anything happening the wait grows to ``QUIET_WAIT_MS``: only the
master's orders wait that long (task exits still end the wait at once)."""


class Worker(WarmQueueing, Starts, ThreadedStarts):
    """The task loop of one node (see the module docstring)."""

    def __init__(self, channel: Channel, node: NodeSlots, base_env: Mapping[str, str], *,
                 kill_grace: float = defaults.KILL_GRACE_SECONDS,
                 shutdown_grace: float = defaults.SHUTDOWN_GRACE_SECONDS,
                 tail_lines: int = defaults.OUTPUT_TAIL_LINES,
                 signalled: Optional[threading.Event] = None,
                 watchdog: Optional[Watchdog] = None, pulse: Optional[Pulse] = None,
                 pin_single_core: bool = defaults.PIN_SINGLE_CORE_TASKS) -> None:
        self.channel = channel
        self.pin_single_core = pin_single_core
        self.watchdog = watchdog
        if watchdog is not None:  # the loop never waits for it (serial_starts.Starts._told)
            watchdog.never_wait()
        self.pulse = pulse  # heartbeats to the master (balsam.launcher.rank_heartbeat)
        self.node = node
        self.base_env = task.task_environment(base_env, {})
        self._env = libc_spawn.EncodedEnv(self.base_env)  # a task's spawn adds its own variables
        self.kill_grace = kill_grace
        self.shutdown_grace = shutdown_grace
        self.tail_lines = tail_lines
        self.signalled = signalled or threading.Event()
        self.queue: deque[Work] = deque()
        self.running: dict[str, _Running] = {}
        self.stopping = False
        self.finished = False
        self.recorded = False  # the master said every start was recorded (with ``exit``)
        self._by_fd: dict[int, str] = {}
        self._poller = select.epoll()  # pidfds and warm channels; the spawning threads add
        self._ready: Optional[list[tuple[int, int]]] = None  # what the last wait saw ready
        self._spawns = (spawn_native.make(self.base_env, self._poller)
                        if spawn_threads.usable() else None)  # else tasks start in this thread
        self._aborting = False
        self._report: dict[str, Any] = {}
        self._next_report = 0.0
        self._drained_sent = False
        self._home = os.getcwd()  # task paths are made absolute against it, once
        self.warm = WarmPool(self.base_env, self._home, watchdog=watchdog)
        """Warm Python workers for function tasks (started on first need)."""
        self._tails, self._behind, self._stop_grace = {}, {}, shutdown_grace  # WarmQueueing
        self._next_fd_check = 0.0
        self._prep = spawn.Preparer()  # makes queued tasks' directories and output files
        self._follower: dict[str, str] = {}  # Starts
        self._leader: dict[str, str] = {}
        self._chained_work: dict[str, Work] = {}
        self._chain_seq: dict[str, int] = {}  # chained starts' order (hand-backs keep it)
        self._chain_ticket = itertools.count()
        self._doomed: set[str] = set()  # Starts: chained starts the kernel hands back
        self._unwatched: set[str] = set()  # Starts: running tasks without a pidfd
        self.started = 0  # tasks started so far
        self.prepared = 0  # of those, tasks whose directory and output file were made ahead
        self.loops = {"iterations": 0, "waits": 0, "paces": 0, "reports": 0}
        """The loop's counts (its exit log line says them: benchmarks read them)."""
        self.threads: dict[str, float] = {}  # CPU seconds by thread at the loop's end

    # ---- loop -------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve orders until ``exit`` (or ``abort``)."""
        last_busy = now = time.monotonic()
        pulse = self.pulse
        beat_due = math.inf if pulse is None else pulse.due
        loops = self.loops
        try:
            while not self.finished:
                loops["iterations"] += 1
                if self.step():
                    last_busy = now = time.monotonic()
                    if self.queue and not (self.stopping or self.finished):
                        if self._paced():  # the chains run on: reap and report in batches
                            loops["paces"] += 1
                            self.pace()
                        else:
                            loops["waits"] += 1
                            self.wait(IDLE_WAIT_MS)  # queued work waits for a slot: an end
                else:
                    now = time.monotonic()
                    quiet = now - last_busy > QUIET_SECONDS
                    loops["waits"] += 1
                    self.wait(QUIET_WAIT_MS if quiet else IDLE_WAIT_MS)
                if now >= beat_due and pulse is not None:  # one comparison an iteration
                    pulse.beat(now)
                    beat_due = pulse.due
        finally:
            self.threads = thread_cpu()  # before close(): the spawning threads end
            self.close()

    def close(self) -> None:
        """Stop the preparer, spawning threads and warm workers (:meth:`run` does at its end)."""
        self._prep.close()
        self._close_spawns()  # (what they dropped is undone in the watchdog's pipe)
        self.warm.close()
        self._poller.close()

    def step(self) -> bool:
        """One iteration: orders, reaping, kills, starts, one report. True if anything
        happened."""
        busy = False
        while not self.finished:
            message = self.channel.receive()
            if message is None:
                break
            self._obey(message)
            busy = True
        if self.finished:  # exit or abort: say goodbye (the master waits for it)
            self._cancel_all_chained("returned")  # never begun: they never will
            self._collect(settle=True)
            self._note("bye", True)
            self._note("beats", self.pulse.sent if self.pulse is not None else 0)  # see Silence
            self.channel.send(self._report)
            self._report = {}
            return True
        if self.signalled.is_set() and not self.stopping:
            self._note("stopping", True)
            self._stop(self.shutdown_grace)
        busy = self._reap() or busy
        if self.queue and not self.stopping and time.monotonic() >= self._next_fd_check:
            spawn.forbid_inheritance()
            self._next_fd_check = time.monotonic() + FD_CHECK_SECONDS
        busy = self._start_fitting() or busy
        if self.stopping and not self.running and not self._in_flight() \
                and not self._drained_sent:
            self._drained_sent = True
            self._note("drained", True)
        if self.watchdog is not None:
            self.watchdog.flush()
        if self._report and (self._report.keys() - ROUTINE or not self.queue or self._tails
                             or time.monotonic() >= self._next_report):
            report, self._report = self._report, {}
            self.channel.send(report)
            self.loops["reports"] += 1
            self._next_report = time.monotonic() + REPORT_SECONDS
            busy = True
        return busy

    def wait(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` for a task to exit (returns at once when one does)."""
        self._ready = self._poller.poll(timeout_ms / 1000)

    # ---- orders -----------------------------------------------------------------------------
    def _obey(self, message: Mapping[str, Any]) -> None:
        if message.get("abort"):
            self._aborting = True  # and those still starting once they have (_collect)
            self._cancel_all_chained("returned")  # before their predecessors die
            for r in self.running.values():
                r.task.signal_group(signal.SIGKILL)
            self.finished = True
            return
        for job_id, packing, cores, *where in message.get("hold", ()):  # [pgid[, cpus, gpu]]
            self.node.place_at(job_id, packing, cores, *where[1:3])  # the launcher runs it
        for job_id in message.get("unhold", ()):
            self.node.free(job_id)
        if message.get("work"):
            if self.stopping:
                self._note_all("returned", [w.job_id for w in message["work"]])
            else:
                for w in message["work"]:
                    # paths made absolute once, on arrival (the preparer and warm pool use them)
                    if not (os.path.isabs(w.workdir) and os.path.isabs(w.output_path)):
                        w = w._replace(workdir=os.path.join(self._home, w.workdir),
                                       output_path=os.path.join(self._home, w.output_path))
                    self.queue.append(w)
                    if is_shell(w):
                        self._prep.ahead(w.workdir, w.output_path)
        for job_id in message.get("kill", ()):
            self._kill(job_id)
        if "recall" in message:
            self._hand_back(float(message["recall"]), float(message.get("fits", 1.0)))
        if "stop" in message:
            self._stop(float(message["stop"]))
        if message.get("exit"):
            self.finished = True
            self.recorded = bool(message.get("recorded"))

    def _kill(self, job_id: str) -> None:
        running = self.running.get(job_id)
        if running is not None:
            running.why = running.why or "kill"
            self._cancel_behind(running.task)
            running.task.terminate(self.kill_grace)
            return
        if self._cancel_chained(job_id, "killed"):  # chained, not begun: it never will
            return
        if self._spawns is not None and self._spawns.mark(job_id, "kill", self.kill_grace):
            return  # ended once it has started (_collect)
        if self._kill_behind(job_id):  # queued in a warm process: it never begins
            return
        for work in self.queue:
            if work.job_id == job_id:
                self.queue.remove(work)
                self._prep.take(work.output_path)
                self._note_all("killed", [job_id])
                return

    def _hand_back(self, worth: float, fits: float) -> None:
        """The master takes back queued work worth up to ``worth`` nodes, each task at most
        ``fits`` of a node (the most one idle node has free), to run it on idle nodes
        (:mod:`balsam.launcher.serial_rebalance`): from the queue's tail, then chained starts
        not begun; always answered (``recalled``, maybe empty)."""
        given: list[str] = []
        room, gpus = worth + 1e-9, self.node.gpus  # in the master's measure (GPUs count)

        def fit(work: Work) -> bool:
            return node_share(work.packing, gpus) <= min(room, fits + 1e-9)
        while self.queue and not self.stopping and fit(self.queue[-1]):
            work = self.queue.pop()
            self._prep.take(work.output_path)
            given.append(work.job_id)
            room -= node_share(work.packing, gpus)
        for job_id, work in reversed(list(self._chained_work.items())):
            if fit(work) and self._cancel_chained(job_id, ""):
                given.append(job_id)
                room -= node_share(work.packing, gpus)
        self._note("recalled", self._report.get("recalled", []) + given)

    def _stop(self, grace: float) -> None:
        self._reap()  # what already ended is reported as it ended, not as stopped
        self.stopping = True
        self._stop_behind(grace)
        if self.queue:
            self._note_all("returned", [w.job_id for w in self.queue])
            for work in self.queue:
                self._prep.take(work.output_path)
            self.queue.clear()
        self._cancel_all_chained("returned")  # before their predecessors die (and they start)
        for r in self.running.values():
            if r.why != "kill":
                r.why = "stop"
            r.task.terminate(grace)
        if self._spawns is not None:
            self._spawns.mark_all("stop", grace)

    # ---- tasks ------------------------------------------------------------------------------
    def _reap(self) -> bool:
        started = self._collect()
        if started and self.queue:  # before the reaps: the chain goes on while Python reaps
            self._chain_behind()
        ready, self._ready = self._ready, None  # a pidfd, once ready, stays so
        if not self.running:
            return started
        if self._by_fd:  # ready and not yet collected: next time (epoll is level-triggered)
            ready = self._poller.poll(0) if ready is None else ready
            candidates = [self._by_fd[fd] for fd, _ in ready if fd in self._by_fd]
            if self._unwatched:  # no pidfd (pidfd_open failed): polled
                candidates += self._polled()
        else:
            candidates = list(self.running)
        for r in self.running.values():
            if r.task.kill_deadline is not None:
                r.task.enforce_kill()
        ended = False
        for job_id in candidates:
            r = self.running[job_id]
            rc = r.task.poll()
            if rc is not None:
                self._ended(job_id, r, rc)
                ended = True
        return ended or started

    def _ended(self, job_id: str, r: _Running, rc: int) -> None:
        del self.running[job_id]
        if r.why:
            # The leader is gone; whatever it left in its group goes now, not after the grace.
            r.task.signal_group(signal.SIGKILL)
        successor = None
        if isinstance(r.task, WarmTask):  # the pool unregisters a process it drops
            self._tails.pop(job_id, None)
            successor = self.warm.finished(r.task, clean=not r.why)
            if r.task.outcome is not None:  # before the end it goes with: same report
                self._note_all("outcomes", [r.task.outcome])
        elif self.watchdog is not None:  # sent with this iteration's next watchdog write
            self.watchdog.remove(r.task.pgid, defer=True)
        if successor is not None and successor.begun:  # same cores, same connection
            self.node.hand_over(job_id, successor.job_id)
            self._by_fd[r.fd] = successor.job_id
        else:
            self._release(job_id)  # or hand it to the task chained behind it
            if r.fd >= 0:
                self._poller.unregister(r.fd)
                del self._by_fd[r.fd]
                os.close(r.fd)
        if r.why == "kill":
            self._note_all("killed", [job_id])
        elif r.why == "stop" and rc != 0:  # exit 0 within the grace: it completed
            self._note_all("stopped", [(job_id, rc)])
        elif rc == 0:
            self._note_all("done", [job_id])
        elif procs.stopped_from_outside(rc):
            self._note_all("terminated", [(job_id, rc)])
        else:
            self._note_all("failed", [(job_id, rc, r.task.message or procs.tail(
                r.task.output_path, self.tail_lines))])
        if successor is not None:
            self._follow(successor, collateral=bool(r.why))

    # ---- reporting --------------------------------------------------------------------------
    def _note(self, key: str, value: Any) -> None:
        self._report[key] = value

    def _note_all(self, key: str, values: Sequence[Any]) -> None:
        if values:  # an empty list would make a report of nothing (sent, and busy)
            self._report.setdefault(key, []).extend(values)
