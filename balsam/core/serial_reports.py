"""What a dead serial-mode session started: its worker watchdogs' reports, read at its sweep.

A serial-mode worker records RUNNING a few ms after it started a task (the master writes in
batches). Each worker rank's watchdog reports every job the rank started and was not told was
recorded (``<launcher dir>/<ensemble>/rank<N>.json``, :mod:`balsam.launcher.ensemble_watch`),
and the launcher records the starts its database lacks once an ensemble ended. When the
launcher died with its ranks, nobody did: so the lease sweep (:func:`balsam.core.leases.sweep`,
given the database directory, which is on a file system every node of a site sees) reads them
too and records the starts the history lacks as the launcher would have
(:func:`balsam.core.leases.record_lost_starts`: RUNNING "recorded after the run", RUN_TIMEOUT
"outcome unknown"; a job whose RUNNING events already count its starts gets nothing, so a run
the launcher recorded is never recorded again).

*Whose reports.* A launcher's directory is ``<db>/log/serial_<host>_<pid>.watch/<instance>``
(:func:`launcher_dir`): ``<instance>`` names the process beyond its host and pid -- the boot
id, the PID namespace and the process's start time (:func:`instance`) -- so a later launcher of
the same host and pid (pid 1 in every container) never takes, removes or re-marks a dead one's
directory, nor a sweep a live one's. The launcher writes ``session.json`` there
(:func:`mark_session`) once it knows its session id, before a task of it can start: the session
and the database (its directory: several databases may share one ``log/``); the sweep lists
the directories of the session row's host and pid and reads only the one marked as this
session of this database (:func:`same_database`). Only final reports ("stopped", "alive")
count; one still "running" (its watchdog died with its node), unreadable or missing leaves that
rank's jobs to the sweep, as before. Only regular files are read (opened without blocking and
without following a last symlink), at most :data:`MAX_FILES` of :data:`MAX_BYTES` each, and the
whole read runs in a thread given :data:`MAX_SECONDS` (:mod:`balsam.core.bounded_io`: a read on
a hung NFS mount blocks in the kernel): what was not read in time is skipped and named
(``Reported.unread``), and a directory not wholly read is not removed.

*Which ensemble.* A session's ensembles run one after the other
(:mod:`balsam.launcher.ensemble_restart`), each in a directory of its own (its number). The
mark says, for each (``since``), the last job event written before it began: only the RUNNING
events after it count as that ensemble's starts' records (a run of the job in an earlier
ensemble of the session is another run). An ensemble's reports are removed once it ended and
its lost starts were recorded -- except those of ranks whose watchdogs had not reported: they
stay, with the claims of the session (:func:`balsam.launcher.ensemble_restart.run_serial`), for
the sweep to read once they did. Once the sweep that read them committed, :func:`discard`
removes the directory.

The launcher's own first tasks (its warm start, :mod:`balsam.launcher.warm_start`) have no
worker watchdog: the launcher notes them (:func:`note_own_starts`, ``launcher.json``) before it
starts them (then those that started) and clears the note once their RUNNING is written. Its
watchdog stops them if it dies (well within the lease), so a note left is read as a "stopped"
report of the first ensemble (``since`` 0).
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from collections import Counter
from typing import NamedTuple, Optional

from balsam.core.bounded_io import Late, within

MARK_NAME = "session.json"
OWN_NAME = "launcher.json"
"""The launcher's own first tasks (its warm start) started, their RUNNING not yet written."""
LOST_MESSAGE = ("started by the serial-mode ensemble, whose launcher died before the start was "
                "recorded (its watchdog's report, read by the lease sweep): outcome unknown")
MAX_FILES = 4096
"""Most report files read for one session (a rank per node, an ensemble per restart)."""
MAX_BYTES = 4 << 20
"""Most bytes read from one file (a report lists a rank's unrecorded starts: a few ids)."""
MAX_SECONDS = 5.0
"""Longest a sweep spends reading one session's reports (a slow or hung shared file system)."""


def start_message(session_id: int) -> str:
    """The message of the RUNNING events a serial-mode session records."""
    return f"serial-mode session {session_id}"


def watch_dir(db_path: str, host: str, pid: int) -> str:
    """Where the serial-mode launchers of process id ``pid`` on ``host`` have their
    directories (one each: :func:`launcher_dir`)."""
    return os.path.join(db_path, "log", f"serial_{host}_{pid}.watch")


def launcher_dir(db_path: str, host: str, pid: int, name: str) -> str:
    """The directory of the launcher ``pid`` on ``host`` whose :func:`instance` is ``name``."""
    return os.path.join(watch_dir(db_path, host, pid), name)


def launcher_dirs(db_path: str, host: str, pid: int) -> list[str]:
    """The directories of the launchers of ``pid`` on ``host`` (none if there are none)."""
    parent = watch_dir(db_path, host, pid)
    try:
        return sorted(os.path.join(parent, name) for name in os.listdir(parent))
    except OSError:
        return []


def instance() -> str:
    """This process beyond its host and pid: the kernel's boot id, the PID namespace's inode
    and the process's start time (clock ticks after boot). Parts that cannot be read are
    empty: the name is then less unique, never wrong for this process."""
    def read(path: str) -> str:
        try:
            with open(path) as fh:
                return fh.read().strip()
        except OSError:
            return ""

    boot = read("/proc/sys/kernel/random/boot_id").replace("-", "")[:12]
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = ""
    ticks = read("/proc/self/stat").rpartition(")")[2].split()[19:20]
    return f"{boot or 'noboot'}-{pidns or 'nons'}-{ticks[0] if ticks else 'nostart'}"


def remove_launcher_dir(directory: str) -> None:
    """Remove a launcher's directory, and its host-and-pid parent if no other launcher has one
    there."""
    shutil.rmtree(directory, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(directory))
    except OSError:  # another launcher's directory is there (or it is gone)
        pass


class Generation(NamedTuple):
    """What the final reports of one ensemble of a dead session name."""

    since: int
    """The last job event id before the ensemble began (the mark's ``since`` of it)."""
    dead: Counter[str]
    """Starts (job id -> count) named by final reports whose tasks are dead."""
    alive: Counter[str]
    """Those named by reports saying a task outlived SIGKILL."""


class Reported(NamedTuple):
    """What a dead session's worker watchdogs reported (:func:`unrecorded_starts`)."""

    generations: list[Generation]
    directory: str
    """The launcher directory read ("" if none was found)."""
    unread: list[str]
    """Files not read within :data:`MAX_SECONDS` (the directory is then left in place)."""


def same_database(recorded: object, db_path: str) -> bool:
    """Whether the database directory ``recorded`` in a mark is ``db_path`` (its real path, or
    the same directory reached another way, e.g. another mount point of it)."""
    if not isinstance(recorded, str) or not recorded:
        return False
    if recorded == os.path.realpath(db_path):
        return True
    try:
        return os.path.samefile(recorded, db_path)
    except OSError:
        return False


def mark_session(directory: str, session_id: int, *, database: str, since: int = 0,
                 generation: int = 0) -> None:
    """Say that the reports in ``directory`` are session ``session_id``'s of the database in
    directory ``database``, and that its ensemble ``generation`` began after job event
    ``since`` (the earlier ensembles' are kept; atomic replace)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, MARK_NAME)
    database = os.path.realpath(database)
    sinces: dict[str, int] = {}
    try:
        old = read_report(path)
        if isinstance(old, dict) and (old.get("session"), old.get("database")) == (
                session_id, database) and isinstance(old.get("since"), dict):
            sinces = {str(k): v for k, v in old["since"].items() if isinstance(v, int)}
    except (OSError, ValueError):
        pass
    sinces[str(generation)] = since
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump({"session": session_id, "database": database, "since": sinces}, fh)
    os.replace(tmp, path)


def note_own_starts(directory: str, job_ids: list[str]) -> None:
    """The launcher starts (or started) its own tasks of ``job_ids`` (its warm start, before the
    ensemble has the session: no worker watchdog knows them) and will write their RUNNING;
    :func:`clear_own_starts` once written. Its watchdog stops them if it dies, well within the
    lease, so the sweep takes them as stopped starts."""
    path = os.path.join(directory, OWN_NAME)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:  # (not written: those starts are not covered, as before; the launcher goes on)
        with open(tmp, "w") as fh:
            json.dump({"state": "stopped", "started": job_ids}, fh)
        os.replace(tmp, path)
    except OSError:
        pass


def clear_own_starts(directory: str) -> None:
    """The starts :func:`note_own_starts` noted are written."""
    try:
        os.unlink(os.path.join(directory, OWN_NAME))
    except OSError:  # a note left behind records nothing twice (their RUNNING is written)
        pass


def read_report(path: str, max_bytes: int = MAX_BYTES) -> object:
    """The JSON in the regular file ``path`` (ValueError if it is something else -- a FIFO, a
    device, a directory, a symlink --, larger than ``max_bytes`` or not JSON; OSError if it
    cannot be opened). Never blocks on what it opens (a hung mount blocks any read: callers
    that must not wait bound it, :mod:`balsam.core.bounded_io`)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: not a regular file")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path}: larger than {max_bytes} bytes")
    return json.loads(data)


class _Walk:
    """One session's reports, read in a thread of their own (:func:`unrecorded_starts`):
    what it has read so far stays usable when the thread is stuck in a read."""

    def __init__(self, db_path: str, session_id: int, host: str, pid: int) -> None:
        self.db_path, self.session_id, self.host, self.pid = db_path, session_id, host, pid
        self.lock = threading.Lock()
        self.at = ""  # the file being read
        self.directory = ""
        self.sinces: dict[str, int] = {}
        self.read: list[tuple[str, object]] = []  # (generation, report)
        self.cancelled = False

    def _look(self, path: str) -> object:
        with self.lock:
            if self.cancelled:
                raise Late("cancelled")
            self.at = path
        return read_report(path)

    def run(self) -> None:
        parent = watch_dir(self.db_path, self.host, self.pid)
        for name in sorted(os.listdir(parent))[:MAX_FILES]:
            mark = self._look_quietly(os.path.join(parent, name, MARK_NAME))
            if (isinstance(mark, dict) and mark.get("session") == self.session_id
                    and isinstance(mark.get("since"), dict)
                    and same_database(mark.get("database"), self.db_path)):
                self.directory = os.path.join(parent, name)
                self.sinces = {str(g): s for g, s in mark["since"].items()
                               if isinstance(s, int) and s >= 0}
                break
        if not self.directory:
            return
        paths = _report_paths(self.directory)
        if self.sinces.get("0") == 0:  # the warm start's (the first ensemble's only)
            paths.append(("0", os.path.join(self.directory, OWN_NAME)))
        for generation, path in paths:
            report = self._look_quietly(path)
            with self.lock:
                if not self.cancelled:
                    self.read.append((generation, report))

    def _look_quietly(self, path: str) -> object:
        try:
            return self._look(path)
        except (OSError, ValueError):
            return None  # being replaced, gone or not a report: its rank's jobs swept as before

    def stop(self) -> str:
        """Cancel the walk (stuck in a read); returns the file it is stuck on."""
        with self.lock:
            self.cancelled = True
            return self.at


def _report_paths(directory: str) -> list[tuple[str, str]]:
    """(ensemble number, report file) in ``directory``'s ensemble directories (ValueError past
    MAX_FILES)."""
    paths: list[tuple[str, str]] = []
    with os.scandir(directory) as generations:
        for g in generations:
            if not (g.name.isdigit() and g.is_dir(follow_symlinks=False)):
                continue
            with os.scandir(g.path) as names:
                for entry in names:
                    if entry.name.startswith("rank") and entry.name.endswith(".json"):
                        paths.append((g.name, entry.path))
                        if len(paths) > MAX_FILES:
                            raise ValueError(f"{directory}: more than {MAX_FILES} reports")
    return sorted(paths)


def unrecorded_starts(db_path: str, session_id: int, host: str, pid: int
                      ) -> Optional[Reported]:
    """What the final reports of session ``session_id`` (launcher ``pid`` on ``host``, as its
    session row says) of the database in ``db_path`` name, by ensemble; None if no directory
    is marked as this session's or it cannot be listed (past :data:`MAX_FILES`). Reads for
    :data:`MAX_SECONDS` at most: the files not read by then are in ``unread``."""
    walk = _Walk(db_path, session_id, host, pid)
    try:
        within(MAX_SECONDS, walk.run, "balsam-sweep-read")
        unread: list[str] = []
    except Late:
        unread = [walk.stop()]
    except (OSError, ValueError):
        return None
    with walk.lock:
        read = list(walk.read)
    if not walk.directory and not unread:
        return None
    groups: dict[str, Generation] = {}
    for generation, report in read:
        since = walk.sinces.get(generation)
        if since is None or not isinstance(report, dict) or not isinstance(
                report.get("started"), list) or report.get("state") not in ("stopped", "alive"):
            continue
        group = groups.setdefault(generation, Generation(since, Counter(), Counter()))
        (group.dead if report["state"] == "stopped" else group.alive).update(
            str(j) for j in report["started"])
    return Reported([groups[g] for g in sorted(groups, key=int)], walk.directory, unread)


def discard(directory: str) -> bool:
    """Remove the launcher directory ``directory`` of a swept session (read wholly by the sweep
    that committed, :func:`unrecorded_starts`), within :data:`MAX_SECONDS`. Returns whether it
    is gone."""
    if not directory:
        return False
    try:
        return within(MAX_SECONDS, lambda: _removed(directory), "balsam-sweep-remove")
    except Late:
        return False


def _removed(directory: str) -> bool:
    remove_launcher_dir(directory)
    return not os.path.exists(directory)
