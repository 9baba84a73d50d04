"""The ``local`` scheduler: job scripts run as process groups on this machine (laptops, CI).

A submitted script runs at once, in its own session (``setsid``), stdout and stderr to the
output file, under a tiny ``sh`` wrapper that writes the script's exit status to
``local-<id>.exit`` when it ends. Jobs are recorded in ``local-jobs.json`` in the directory the
caller names (the DB's ``qsubmit/``), guarded by a lock file, so the service and
``balsam submit-launch`` can share it. A short-lived helper process starts the wrapper and exits,
so the wrapper is never a child (nor a zombie) of a long-running caller.

A job's state comes from whether its process group still has a live member and from its exit
file: running; ``finishing`` (the script ended or was cancelled but processes of its group
remain); ``finished``/``failed`` (exit status 0 / not 0); ``cancelled``; ``failed`` with raw
state ``VANISHED`` when the group died without an exit status (killed from outside). The group
id is the wrapper's pid; the record keeps the wrapper's start time too, and once that number
names a process started at another time (reused after the group ended) the job counts as ended
and that other group is never signalled. Cancel
sends SIGTERM to the group and SIGKILL once ``kill_grace`` seconds have passed (at the next
:meth:`~LocalScheduler.cancel` or :meth:`~LocalScheduler.status`). Ended jobs stay listed
``keep_seconds``. No walltime is enforced: the launcher's own time limit applies.
"""
from __future__ import annotations

import fcntl
import json
import os
import pwd
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

from balsam.platform.procgroup import live_members, signal_group
from balsam.platform.schedulers import command as cmd
from balsam.platform.schedulers.base import COMMAND_TIMEOUT, BatchJobStatus, CommandFailed, SchedulerError

NAME = "local"
STATE_FILE = "local-jobs.json"
LOCK_FILE = "local-jobs.lock"
KILL_GRACE = 30.0
"""Seconds between SIGTERM and SIGKILL: a launcher records its tasks RUN_TIMEOUT in this time."""
KEEP_SECONDS = 3600.0
"""Ended jobs stay in status answers this long (like LSF's CLEAN_PERIOD), then are dropped."""

WRAPPER = ('exitfile=$1; shift; "$@"; code=$?; '
           'printf "%s\\n" "$code" > "$exitfile.tmp" && mv -f "$exitfile.tmp" "$exitfile"; '
           'exit "$code"')
SPAWNER = """\
import subprocess, sys
wrapper, exit_file, output, cwd, *command = sys.argv[1:]
try:
    with open(output, "wb") as out:
        proc = subprocess.Popen(["/bin/sh", "-c", wrapper, "balsam-local-job", exit_file, *command],
                                cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
except OSError as exc:
    sys.exit(f"cannot start {command[-1]}: {exc}")
try:  # the wrapper's start time, read while it is our unreaped child: it names it for good
    with open(f"/proc/{proc.pid}/stat", "rb") as fh:
        print(proc.pid, int(fh.read().rpartition(b")")[2].split()[19]))
except (OSError, IndexError, ValueError):
    print(proc.pid)
"""


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def group_alive(pgid: int, leader_start: Optional[int] = None) -> bool:
    """True if process group ``pgid`` has a member that is not a zombie (and the id was not
    :func:`~balsam.platform.procgroup.reused` by a process started after ``leader_start``)."""
    return bool(live_members(pgid, leader_start))


class LocalScheduler:
    """The local scheduler keeping its records in ``state_dir`` (created when first needed)."""

    NAME = NAME

    def __init__(self, state_dir: str, kill_grace: float = KILL_GRACE,
                 keep_seconds: float = KEEP_SECONDS):
        self.state_dir = os.path.abspath(state_dir)
        self.kill_grace = kill_grace
        self.keep_seconds = keep_seconds

    @contextmanager
    def _records(self) -> Iterator[dict[str, Any]]:
        """The job records, locked; changes are written back atomically on exit."""
        os.makedirs(self.state_dir, exist_ok=True)
        path = os.path.join(self.state_dir, STATE_FILE)
        with open(os.path.join(self.state_dir, LOCK_FILE), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(path) as fh:
                    data = json.load(fh)
            except FileNotFoundError:
                data = {"next_id": 1, "jobs": {}}
            except (OSError, ValueError) as exc:
                raise SchedulerError(f"cannot read {path}: {exc}")
            yield data
            tmp = f"{path}.tmp"
            with open(tmp, "w") as fh:
                json.dump(data, fh, indent=1)
            os.replace(tmp, path)

    def submit(self, script: str, cwd: str, job_name: str, output: str,
               timeout: float = COMMAND_TIMEOUT) -> str:
        """Start ``script`` now (directly if executable, else with ``/bin/sh``); its local id."""
        script = os.path.abspath(script)
        if not os.path.isfile(script) or not os.access(script, os.R_OK):
            raise SchedulerError(f"job script {script} does not exist or cannot be read")
        if not os.path.isdir(cwd):
            raise SchedulerError(f"working directory {cwd} does not exist")
        command = [script] if os.access(script, os.X_OK) else ["/bin/sh", script]
        with self._records() as data:
            job_id = str(data["next_id"])
            data["next_id"] += 1
            exit_file = os.path.join(self.state_dir, f"local-{job_id}.exit")
            argv = [sys.executable, "-c", SPAWNER, WRAPPER, exit_file, os.path.abspath(output),
                    cwd, *command]
            try:
                out = cmd.run(argv, timeout).stdout.strip()
            except CommandFailed as exc:
                raise SchedulerError(f"local job {job_name}: {cmd.first_line(exc.stderr) or exc}")
            words = out.split()
            if not 1 <= len(words) <= 2 or not all(w.isdigit() for w in words):
                raise SchedulerError(f"the local job starter printed no process id: {out[:200]!r}")
            data["jobs"][job_id] = {
                "pid": int(words[0]), "started": int(words[1]) if len(words) > 1 else None,
                "name": job_name, "owner": _user(), "script": script,
                "output": output, "exit_file": exit_file, "submitted": time.time(),
                "cancelled_at": None, "ended_at": None}
        return job_id

    def _observe(self, job_id: str, rec: dict[str, Any], now: float) -> BatchJobStatus:
        """The job's state now; records its end and escalates an overdue cancel to SIGKILL."""
        # Liveness first, then the exit file: the wrapper writes the file before its group ends,
        # so a group seen dead has its file already. (Read the other way round, a job ending
        # between the two reads looked VANISHED: 'failed' although it exited 0.)
        alive = rec["ended_at"] is None and group_alive(rec["pid"], rec.get("started"))
        code: Optional[int] = None
        try:
            with open(rec["exit_file"]) as fh:
                code = int(fh.read().strip())
        except (OSError, ValueError):
            pass
        cancelled = rec["cancelled_at"] is not None
        if alive:
            if cancelled and now >= rec["cancelled_at"] + self.kill_grace:
                signal_group(rec["pid"], signal.SIGKILL, rec.get("started"))
            state, raw = ("finishing", "CANCELLING" if cancelled else "EXITING") \
                if cancelled or code is not None else ("running", "RUNNING")
        else:
            if rec["ended_at"] is None:
                rec["ended_at"] = now
            if code is not None:
                state, raw = ("finished" if code == 0 else "failed"), "EXITED"
            else:
                state, raw = ("cancelled", "CANCELLED") if cancelled else ("failed", "VANISHED")
        return BatchJobStatus(job_id, state, raw, queue="local", project="", name=rec["name"],
                              owner=rec["owner"], exit_code=code if rec["ended_at"] else None)

    def status(self, user: str, timeout: float = COMMAND_TIMEOUT) -> dict[str, BatchJobStatus]:
        """``user``'s local jobs, including those ended in the last ``keep_seconds``."""
        now = time.time()
        found = {}
        with self._records() as data:
            for job_id, rec in list(data["jobs"].items()):
                job = self._observe(job_id, rec, now)
                if rec["ended_at"] is not None and now - rec["ended_at"] > self.keep_seconds:
                    del data["jobs"][job_id]
                    if os.path.exists(rec["exit_file"]):
                        os.unlink(rec["exit_file"])
                elif rec["owner"] == user:
                    found[job_id] = job
        return found

    def cancel(self, scheduler_id: str, timeout: float = COMMAND_TIMEOUT) -> None:
        """SIGTERM the job's process group (SIGKILL if a cancel is overdue). An ended or
        unknown job is not an error."""
        now = time.time()
        with self._records() as data:
            rec = data["jobs"].get(scheduler_id)
            if rec is None or self._observe(scheduler_id, rec, now).is_final:
                return
            if rec["cancelled_at"] is None:
                rec["cancelled_at"] = now
                signal_group(rec["pid"], signal.SIGTERM, rec.get("started"))
            elif now >= rec["cancelled_at"] + self.kill_grace:
                signal_group(rec["pid"], signal.SIGKILL, rec.get("started"))

    def final_status(self, scheduler_id: str,
                     timeout: float = COMMAND_TIMEOUT) -> Optional[BatchJobStatus]:
        """The job's record while it is kept (see ``keep_seconds``), else None."""
        with self._records() as data:
            rec = data["jobs"].get(scheduler_id)
            return None if rec is None else self._observe(scheduler_id, rec, time.time())
