"""Tasks die with their launcher: one small watchdog process per task-starting process.

Tasks run in their own sessions (so a kill reaches the whole MPI job, not only a wrapper), which
also means nothing kills them when the launcher, or a serial-mode worker rank, is killed with
SIGKILL on a node that stays up. Its lease then expires, the sweep records the job RUN_TIMEOUT,
and the retry would run while the orphan still runs.

:class:`Watchdog` prevents that. It starts ``python -S`` running ``balsam.launcher.watchdog``
(:data:`_BOOT`) in its own session, holding the read end of a pipe whose write end only the
launcher has (the descriptor is not inherited by anything the launcher starts). The launcher writes
``+PGID`` when it starts a task (with a bound of its leader's start time, read before the reap:
:mod:`.watchdog_lines`) and ``-PGID`` when it has reaped it: one ``write`` of a few bytes
each, or, for a serial-mode worker rank starting many short tasks, one ``write`` per loop iteration
carrying all its lines (:meth:`Watchdog.expect_all`, :meth:`Watchdog.add_all`,
``remove(defer=True)`` then :meth:`Watchdog.flush`): each write wakes the watchdog process. When
the pipe reaches end of file -- the launcher exited, however it died -- the watchdog sends SIGTERM
to every process group still registered, SIGKILL to those still alive ``GRACE`` seconds later, and
exits. After a normal exit nothing is registered, so it exits at once and silently.

A serial-mode worker rank also gives each task's job id (``+PGID JOBID``) and a report file.
The rank writes the file (``{"state": "running"}``) before the watchdog exists, so the file is
there before any task starts; when the watchdog is done it replaces it (atomic rename) with
``state`` "stopped" (every registered group is gone: SIGKILL was followed by a wait until no
live member is left) or "alive" (a group outlived SIGKILL), the ``started`` job ids (one per
start this rank made, unless the rank said ``=``: "everything I started was recorded") and the
groups still alive. The launcher reads these files after its ensemble ended
(:mod:`balsam.launcher.ensemble_watch`): its session is released only once its tasks are known
dead, and a start that was never recorded is recorded then.
An MPI-mode launcher gives job ids too (``?JOBID`` before a launch, ``+PGID JOBID`` after it),
says ``#JOBID`` once a commit ended a job's hold, and has a report file listing, if it dies, the
jobs it launched without a recorded end: its sweep reads it (:mod:`balsam.core.launch_reports`).
A worker rank's watchdog starts before ``MPI_Init`` and is given the epoch time just before
(``since``); the rank then sends its MPI shared-memory files (``!DEV INO PATH`` lines, a bare
``!`` ends them). A watchdog whose owner died without ``.`` removes them; if no ``!`` came, the
files made while the owner lived once no live process maps them
(:func:`balsam.launcher.ensemble_shm.unlink_orphans`).

The watchdog ignores SIGINT, SIGTERM and SIGHUP (a Ctrl-C in the terminal or a signal to the
launcher's group must not take it down first). The grace must be well under the lease, so that
orphans are gone before the sweep can make their jobs runnable again.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping

from balsam.launcher.ensemble_shm import ORPHAN_WAIT_SECONDS, unlink_orphans, unlink_segments
from balsam.launcher.group_stop import confirm_starts, groups_of_job
from balsam.launcher.group_stop import kill_groups as kill_groups  # (read by fence, tests)
from balsam.launcher.group_stop import still_alive as still_alive
from balsam.launcher.pipe_lines import Outbox
from balsam.launcher.watchdog_lines import Heard, group_line
from balsam.platform.process import boot_ticks, wait_child

HANG_UP_WAIT_SECONDS = 1.0  # a bounded owner's hang_up: the most it waits for room
TYPE_CHECKING = False  # (not typing's: it imports re, most of a watchdog's start; issue 16)
if TYPE_CHECKING:
    import subprocess
    from typing import Any, Callable, Optional

READ_NAP_SECONDS = 0.02
"""After reading lines, the watchdog naps this long before reading again: the pipe holds
what the launcher writes meanwhile (a write never waits: 64 KiB is ~1,400 lines, 70,000 a
second), so a launcher starting thousands of tasks a second wakes it at most 50 times a second
instead of once a write. The nap ends early when the pipe's last writer is gone (:func:`_nap`):
an owner's close, or its death, is seen at once."""


_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = (f"import sys; sys.path.insert(0, {_ROOT!r}); "
         "from balsam.launcher.watchdog import exit_now, main; exit_now(main(sys.argv))")
"""The watchdog process runs this with ``python -S``: it needs only the standard library and
this package, and skipping ``site`` (site-packages, ``.pth`` files, an editable install's
finder) halves its start-up, which competes with the ensemble's for the cores."""


class Watchdog:
    """The launcher's side (see the module docstring). ``log`` receives one line if the
    watchdog process is found dead (tasks are then no longer covered)."""

    def __init__(self, grace: float, *, log: Optional[Callable[[str], None]] = None,
                 python: str = sys.executable, report: str = "",
                 segments: Optional[Mapping[str, tuple[int, int]]] = None,
                 since: Optional[float] = None) -> None:
        if report:  # before any task can start: the launcher then knows this watchdog exists
            write_report(report, {"state": "running", "host": os.uname().nodename})
        self.began_path = _new_began_file(f"{report}.began") if report else ""
        """Where warm processes note the queued requests they begin (:meth:`queue`); "" if
        not made (then every queued request counts as started)."""
        read_fd, fd = os.pipe()  # both close-on-exec: no task inherits the write end
        try:
            if segments:  # in the pipe before the process starts (a few lines: one write)
                os.write(fd, _segment_lines(segments))
            import subprocess  # (the watchdog process itself never needs it)
            self.proc: Optional[subprocess.Popen[Any]] = subprocess.Popen(
                [python, "-S", "-c", _BOOT, f"{grace:g}", str(os.getpid()), report,
                 self.began_path, "" if since is None else repr(since)],
                stdin=read_fd, stdout=subprocess.DEVNULL, start_new_session=True,
                close_fds=True)
        except OSError:
            os.close(fd)
            raise
        finally:
            os.close(read_fd)
        self.out = Outbox(fd, log, "tasks will not be stopped if this process is killed")
        """The pipe's writer (bounded: what it holds back, whether the pipe refuses lines)."""
        self.registered: dict[int, Optional[int]] = {}
        """The groups registered and not yet removed: pgid -> a bound of their leader's start
        time (:func:`~balsam.platform.process.boot_ticks` when registered, the leader being this
        process's unreaped child: :func:`.group_stop.confirm_starts` makes it start times).
        Whether or not the watchdog took their lines (it may be gone): the fences' list."""

    @property
    def _fd(self) -> int:
        """The pipe's write end (-1 once closed, or the watchdog found dead)."""
        return self.out.fd

    def never_wait(self) -> None:
        """No write waits for the watchdog from now on (a serial worker rank's loop; see
        :mod:`.pipe_lines` and :meth:`expect_all`)."""
        self.out.never_wait()

    def add(self, pgid: int, job_id: str = "", *, defer: bool = False) -> None:
        """A task (of ``job_id``, if given) leading process group ``pgid`` started. ``defer``
        (after :meth:`expect`, which finds the task meanwhile): sent with the next write.
        Called before this process reaps the leader (its child): the line says the leader
        started no later than now (:func:`.watchdog_lines.group_line`), so the watchdog never
        takes a process that got the pid after the reap for it, however late it reads."""
        self.add_all([(pgid, job_id)], defer=defer)

    def queue(self, pgid: int, job_id: str) -> None:
        """A request of ``job_id`` was queued in the warm process leading group ``pgid``
        behind its running task: it counts as started only if that process noted in
        :attr:`began_path` that it began it (:mod:`balsam.launcher.warm_channel`)."""
        by = boot_ticks()
        self.out.send(group_line("~", pgid, job_id, by).encode())
        self.registered[pgid] = by  # (kept if the watchdog is gone: the fences stop it)

    def add_all(self, started: list[tuple[int, str]], *, defer: bool = False) -> None:
        """:meth:`add` for every (pgid, job id) in ``started``, in one write; ``defer``: with
        the next write or :meth:`flush` (as :meth:`remove`'s; the ``?JOBID`` line of each was
        sent before its start, so the watchdog finds it by its job id meanwhile)."""
        by = boot_ticks()  # (every one of them started before now)
        lines = "".join(group_line("+", pgid, job, by) for pgid, job in started).encode()
        if started and defer and self._fd >= 0:
            self.out.deferred.append(lines)
        elif started:
            self.out.send(lines)
        # Kept even if the watchdog is gone (the pipe refused them): the lease fences stop
        # what is registered, and must stop these tasks too.
        self.registered.update((pgid, by) for pgid, _ in started)

    def expect_all(self, job_ids: list[str]) -> int:
        """:meth:`expect` for every job id in ``job_ids``, in one write. Returns how many of
        them (the first ones) the watchdog will read: all unless bounded (:meth:`never_wait`)
        and the pipe was full, then the others' lines are dropped, never written (their
        tasks must not start: the watchdog could neither stop them nor count them started
        if this process died). A dead watchdog counts as told (nothing covers tasks then)."""
        if not job_ids:
            return 0
        lines = "".join(f"?{job}\n" for job in job_ids).encode()
        written = self.out.send(lines, keep=False)
        return len(job_ids) if written < 0 else lines[:written].count(b"\n")

    def expect(self, job_id: str) -> None:
        """A task of ``job_id`` is about to be started (:meth:`add` follows once it has its
        process group): if this process dies in between, the watchdog finds the task by its
        ``BALSAM_JOB_ID`` and stops it too."""
        self.out.send(f"?{job_id}\n".encode())

    def segments(self, found: Mapping[str, tuple[int, int]]) -> None:
        """MPI shared-memory files ({path: (device, inode)}) this process maps (all of them,
        even none): if it dies (end of file without :meth:`close`'s line), the watchdog unlinks
        those still there (:func:`balsam.launcher.ensemble_shm.unlink_segments`)."""
        self.out.send(_segment_lines(found))

    def all_recorded(self) -> None:
        """Every start so far is recorded in the database: the report need not list them.
        Sent right before :meth:`close`."""
        self.out.send(b"=\n")

    def remove(self, pgid: int, *, defer: bool = False) -> None:
        """The task leading ``pgid`` has been reaped (and its group stopped if need be).
        ``defer``: sent with the next write (or :meth:`flush`) instead of now. Until then the
        watchdog would signal a group that is gone (its leader is reaped, so its id is only
        reused by a process that starts a new session with the same id: the caller flushes
        within its loop iteration, microseconds later)."""
        if pgid in self.registered:
            del self.registered[pgid]
            if defer and self._fd >= 0:
                self.out.deferred.append(b"-%d\n" % pgid)
            else:
                self.out.send(b"-%d\n" % pgid)

    def forget(self, job_ids: Iterable[str]) -> None:
        """A commit ended the hold on ``job_ids`` (their ends or releases are recorded): the
        report need not list them (MPI mode, :mod:`balsam.core.launch_reports`); sent with
        the next write."""
        if self._fd >= 0:
            self.out.deferred.extend(f"#{job}\n".encode() for job in job_ids)

    def flush(self) -> None:
        """Send the deferred (and held) lines now (one write)."""
        if self.out.deferred or self.out.held:
            self.out.send(b"")

    def close(self, timeout: float = 5.0) -> None:
        """Normal exit: close the pipe and reap the watchdog (which kills whatever is still
        registered -- nothing, after a clean stop)."""
        self.hang_up()
        self.reap(timeout)

    def hang_up(self, wait: float = HANG_UP_WAIT_SECONDS) -> None:
        """The first half of :meth:`close`: close the pipe (the watchdog then stops what is
        still registered and exits) without waiting for it; :meth:`reap` waits. Bounded
        (:meth:`never_wait`), lines still held wait at most ``wait`` seconds for room (a
        watchdog stuck for good: they are dropped, and the closing line with them)."""
        out, end = self.out, time.monotonic() + wait
        out.send(b".\n")  # "closing": the watchdog reads end of file without its nap
        while out.held and out.fd >= 0 and time.monotonic() < end:
            poller = select.poll()  # (a select() would refuse a descriptor above 1023)
            poller.register(out.fd, select.POLLOUT)
            poller.poll(max(0.0, end - time.monotonic()) * 1000.0)
            out.send(b"")
        out.close()

    def reap(self, timeout: float = 5.0) -> None:
        """Wait up to ``timeout`` for the watchdog to exit after :meth:`hang_up`."""
        if self.proc is not None:  # (still killing leftovers at the timeout: it finishes alone)
            wait_child(self.proc, timeout)
            self.proc = None

def _new_began_file(path: str) -> str:
    """Create the (empty) began file at ``path`` before any task can start: ``path``, or ""
    if it cannot be made. Its absence at the end then means "unknown", never "none began"."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    except OSError:
        return ""
    return path


def _segment_lines(found: Mapping[str, tuple[int, int]]) -> bytes:
    return "".join([f"!{dev} {ino} {path}\n" for path, (dev, ino) in found.items()] + ["!\n"]
                   ).encode()  # (a bare "!": the owner told them all)


def write_report(path: str, report: dict[str, Any]) -> None:
    """Replace the report file at ``path`` at once (write a temporary file, rename it)."""
    import json  # (with re: ~5 ms of each watchdog's start; a report is written at its end)

    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(report, fh)
    os.replace(tmp, path)


def serve(fd: int, grace: float, began_path: str = ""
          ) -> tuple[list[int], list[int], list[str], Optional[dict[str, tuple[int, int]]], float]:
    """Read the owner's lines (:mod:`.watchdog_lines`) from ``fd`` until end of file (one read
    every ``READ_NAP_SECONDS`` at most; ``.``, the owner closing, skips the nap), then stop the
    groups still registered (and those of expected tasks that never were). Returns (groups
    stopped, groups still alive after SIGKILL, job ids started since the last ``=``, one per
    start (none of a job once ``#JOBID`` said its hold was ended) -- an expected start counts,
    a queued one (``~``) if ``began_path`` names it (:func:`began_queued`) --, the
    shared-memory files the owner left if it died: none after ``.``, None if it told none (no
    ``!`` line), the time end of file was read)."""
    heard = Heard()
    pending = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except InterruptedError:  # pragma: no cover - PEP 475 retries reads
            continue
        if not data:
            ended = time.time()
            break
        if not data.endswith((b".\n", b"=\n")):  # "." (or "="): end of file comes next
            _nap(fd, READ_NAP_SECONDS)
        pending += data
        *lines, pending = pending.split(b"\n")
        heard.feed(lines)
    groups, starts, started = heard.groups, heard.starts, heard.started
    confirmed = confirm_starts(heard.bounds)
    for pgid in heard.bounds.keys() - confirmed.keys():  # its id names a later process:
        del groups[pgid]  # the group ended (its "-" line never came)
    starts.update(confirmed)
    for job in +heard.expected:  # the starter died between starting a task and registering it
        started[job] += 1
        for found, leader in groups_of_job(job).items():
            groups[found] = job
            starts.setdefault(found, leader)
    stopped = kill_groups(sorted(groups), grace, starts=starts) if groups else []
    alive = still_alive(stopped, starts=starts)
    started.update(began_queued(heard.queued, began_path, alive))
    return (stopped, alive, list(started.elements()), {} if heard.closing else heard.segments,
            ended)


def _nap(fd: int, seconds: float) -> None:
    """Sleep up to ``seconds``, ending as soon as the pipe ``fd`` reads from has no writer left:
    a poll for no event reports only the hang-up, whatever data is waiting (before: a plain
    sleep, so an owner's close that came just after a write waited out the nap, 20 ms of every
    launcher's and worker rank's exit)."""
    poller = select.poll()
    poller.register(fd, 0)
    poller.poll(seconds * 1000.0)


def began_queued(queued: Counter[str], began_path: str, alive: list[int]) -> Counter[str]:
    """Of the ``queued`` requests (job id -> times queued), those that began: as many as the
    began file at ``began_path`` names each (read once every process that could write it is
    dead, then removed; all of them while a group is ``alive``, with no file path, or if the
    file, made before any task started, cannot be read)."""
    if alive or not began_path:
        return Counter(queued)
    began: Counter[str] = Counter()
    try:
        if queued:
            with open(began_path) as fh:
                began = Counter(fh.read().split())
        os.unlink(began_path)
    except OSError:  # unreadable or gone: what may have begun counts as begun
        return Counter(queued)
    return queued & began


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    grace, owner = float(argv[1]), argv[2] if len(argv) > 2 else "?"
    report = argv[3] if len(argv) > 3 else ""
    stopped, alive, started, segments, ended = serve(0, grace, argv[4] if len(argv) > 4 else "")
    if report:
        try:  # its directory may be gone (read and removed: ensemble_restart, the lease sweep)
            write_report(report, {"state": "alive" if alive else "stopped",
                                  "host": os.uname().nodename, "owner": owner,
                                  "started": started, "alive": alive})
        except OSError as exc:  # the shared-memory files below must go all the same
            print(f"balsam watchdog: process {owner} died: its report {report} could not be "
                  f"written ({exc})", file=sys.stderr, flush=True)
    since = float(argv[5]) if len(argv) > 5 and argv[5] else None  # after the report (waited for)
    removed = (unlink_segments(segments) if segments is not None
               else [] if since is None else unlink_orphans(since, ended, ORPHAN_WAIT_SECONDS))
    if removed:
        print(f"balsam watchdog: process {owner} died: removed its shared-memory file(s) "
              f"{', '.join(removed)}", file=sys.stderr, flush=True)
    if stopped:
        print(f"balsam watchdog: process {owner} exited with {len(stopped)} task(s) still "
              f"running: stopped process group(s) {', '.join(map(str, stopped))}",
              file=sys.stderr, flush=True)
    return 0


def exit_now(status: int) -> None:
    """End the watchdog process with ``status`` at once: its report is written and closed and
    its messages flushed; the interpreter's teardown (~8 ms of CPU, 10-40 ms under load) would
    only delay its owner's exit, which waits for it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed or absent: nothing to flush
            pass
    os._exit(status)


if __name__ == "__main__":
    exit_now(main(sys.argv))
