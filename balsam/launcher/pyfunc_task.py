"""The task runner of Python-function jobs (:mod:`balsam.site.pyfunc`).

Two ways to run:

* ``python -m balsam.launcher.pyfunc_task`` -- the command stored with every function job, so
  MPI mode (and serial mode for an app with a ``shell_preamble``) starts it like any command:
  it runs the job named by ``BALSAM_JOB_ID`` in the current directory (the job's workdir, output
  already going to ``<name>.out``) and exits 0 if ``run()`` returned, 1 if it raised. Under an
  MPI launcher with several ranks every rank runs the function; only rank 0 records the outcome.
* ``python -m balsam.launcher.pyfunc_task --warm FD [BEGAN]`` -- a *warm worker* of serial
  mode (:mod:`balsam.launcher.warm_pool`): started once per core, it imports Balsam and
  cloudpickle once, then serves requests ``(job_id, environment changes, workdir,
  output_path, row, queued)`` read from the channel
  (:class:`balsam.launcher.warm_channel.Channel`) on descriptor FD, one at a time: the job's
  environment set, the workdir made current, stdout and stderr sent to the output file for
  the task's duration; it replies ``(job_id, exit status, outcome, next, cancelled)``
  (``outcome``: a str, the reason, when the task could not start: exit status 2).
  Requests may wait in the channel behind the running one (the launcher queues up to two
  behind a short task, so that the worker never waits for it between tasks); right after a
  task, before its reply, the worker takes what is waiting: a ``(CANCEL, [job ids])``
  removes those requests (listed in ``cancelled``), and ``next`` names the request it starts
  next (None: it waits, and starts the next request as it arrives). While a task runs long,
  a watcher thread takes cancels at once (reply ``(None, None, None, None, cancelled)``;
  :class:`balsam.launcher.warm_channel.Inbox`, which also notes a queued request in the
  BEGAN file before it begins). ``row``
  is the job's fields and arguments as the master read them with its claim
  (:func:`balsam.core.payloads.inline_tasks`), or None; with a row, the outcome goes back in
  the reply (``outcome``, a :data:`balsam.core.payloads.OutcomeRow`) for the master to write
  with the task's end, so a small task costs the warm worker no database statement; without
  one, or when the outcome is too big (:data:`balsam.defaults.PYFUNC_INLINE_BYTES`), it is
  read and written here and ``outcome`` is None. It exits when the channel closes.

Either way a :class:`Runner` holds the site's app classes, loaded once per source file content
(the SHA-256 of the file: an edited file is loaded again), and one database connection, opened
at the first task that needs it. It reads the job and its arguments (unless given), calls
``run()`` with ``self.job`` bound, writes the outcome (or returns it, see above), and prints a
failing task's traceback to stderr (so the launcher's RUN_ERROR message tail shows it). Exit
statuses: 0 returned, 1 raised, 2 the task could not be loaded or started (no such job, app
file error, database unreachable; a warm worker: its directory or output file), 3 the outcome
could not be written.
"""
from __future__ import annotations

import hashlib
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import cloudpickle  # noqa: F401  (imported once, at the warm worker's start, not at its first task)
import psycopg2

from balsam import defaults
from balsam.core.payloads import OutcomeRow, TaskRow
from balsam.db.connect import connect
from balsam.errors import BalsamError, DatabaseUnavailable
from balsam.launcher.libc_spawn import open_output
from balsam.launcher.warm_channel import Channel, Inbox
from balsam.site import loader, pyfunc

RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID", "ALPS_APP_PE",
                  "PALS_RANKID", "JSM_NAMESPACE_RANK")
"""Where MPI launchers put a process's rank: only rank 0 writes the outcome."""


def rank() -> int:
    """This process's MPI rank as its launcher set it (0 when not under one)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 0


class Runner:
    """Runs function tasks of one site (see the module docstring)."""

    def __init__(self, db_path: str) -> None:
        self.db_path = db_path
        self._conn: Any = None
        self._classes: dict[tuple[str, str], type] = {}
        self._digests: dict[str, tuple[tuple[int, int, int], str]] = {}
        self.loads = 0
        """How many times an app file was imported (once per content)."""

    def _cursor(self) -> Any:
        if self._conn is not None and self._conn.closed:
            self._conn = None
        if self._conn is None:
            self._conn = connect(self.db_path, f"balsam-pyfunc pid={os.getpid()}", autocommit=True)
            with self._conn.cursor() as cur:
                # An outcome's commit need not wait for its WAL flush: the launcher records the
                # task's end (RUN_DONE/RUN_ERROR) only after the reply, in a synchronous commit,
                # which flushes the WAL up to and including this earlier write.
                cur.execute("SET synchronous_commit = off")
        return self._conn.cursor()

    def _execute(self, action: Any, *args: Any) -> Any:
        """``action(cursor, *args)``; once more on a new connection if the connection broke
        (the server restarted since the last task); BalsamError saying why if it fails."""
        for attempt in (1, 2):
            try:
                with self._cursor() as cur:
                    return action(cur, *args)
            except (psycopg2.OperationalError, psycopg2.InterfaceError, DatabaseUnavailable) \
                    as exc:
                self.close()
                if attempt == 2:
                    raise BalsamError(f"database unavailable: {exc}")
            except psycopg2.Error as exc:
                raise BalsamError(f"database error: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")

    def app_class(self, name: str) -> type:
        """The class of app ``module.Class``, imported once per content of its file (the file
        is hashed again only when its size, mtime or inode changed)."""
        path = os.path.join(loader.apps_dir(self.db_path), f"{name.partition('.')[0]}.py")
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            digest = self._digests.get(path)
            if digest is None or digest[0] != stamp:
                with open(path, "rb") as fh:
                    digest = self._digests[path] = (stamp, hashlib.sha256(fh.read()).hexdigest())
        except OSError as exc:
            raise BalsamError(f"cannot read the app file {path}: {exc.strerror or exc}")
        cls = self._classes.get((name, digest[1]))
        if cls is None:
            app = loader.load_app(self.db_path, name)
            self.loads += 1
            cls = self._classes[(name, app.source_hash)] = app.cls
            self._classes.setdefault((name, digest[1]), cls)
        return cls

    def run(self, job_id: str, workdir: str) -> int:
        """Run one task, reading it and writing its outcome here; its exit status (see the
        module docstring)."""
        return self.run_task(job_id, workdir)[0]

    def run_task(self, job_id: str, workdir: str, row: Optional[TaskRow] = None
                 ) -> tuple[int, Optional[OutcomeRow]]:
        """Run one task; its exit status and, if ``row`` (the job's fields and arguments as the
        launcher read them: no read here) was given, its outcome for the launcher to write
        (None: written here, being too big for the launcher's batch)."""
        try:
            if row is None:
                job, kwargs = self._execute(pyfunc.load_task, job_id, workdir)
            else:
                job, kwargs = pyfunc.task_from_row(job_id, workdir, row)
            if kwargs is None:
                raise BalsamError(f"job {job_id} has no stored arguments: is {job.app_name} a "
                                  "function app (run() method)?")
            cls = self.app_class(job.app_name)
            if not getattr(cls, "is_function", lambda: False)():
                raise BalsamError(f"app {job.app_name} has no run() method (any more?)")
        except Exception as exc:  # noqa: BLE001 - app files run user code at import
            print(f"balsam: cannot run function task {job_id}: {exc}", file=sys.stderr)
            return 2, None
        outcome = pyfunc.call(cls, job, kwargs)
        if outcome.failed:
            sys.stdout.flush()
            print(outcome.traceback, file=sys.stderr, end="")
        rc = 1 if outcome.failed else 0
        if rank() != 0:
            return rc, None
        if row is not None:
            inline = pyfunc.inline_outcome(job_id, outcome, defaults.PYFUNC_INLINE_BYTES)
            if inline is not None:
                return rc, inline
        try:
            self._execute(pyfunc.store_outcome, job_id, outcome)
        except BalsamError as exc:
            print(f"balsam: cannot record the outcome of function task {job_id}: {exc}",
                  file=sys.stderr)
            return 3, None
        return rc, None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - already broken
                pass
            self._conn = None


# ---- the warm worker ----------------------------------------------------------------------

class _Environment:
    """``os.environ`` as the worker wants it for each task: the process's environment at start
    with the task's delta applied (None: removed), the previous task's delta undone."""

    def __init__(self) -> None:
        self.base = dict(os.environ)
        self.changed: set[str] = set()

    def apply(self, delta: Mapping[str, Optional[str]]) -> None:
        for key in self.changed - set(delta):
            if key in self.base:
                os.environ[key] = self.base[key]
            else:
                os.environ.pop(key, None)
        for key, value in delta.items():
            if value is None:
                os.environ.pop(key, None)
            elif os.environ.get(key) != value:
                os.environ[key] = value
        self.changed = set(delta)


def _redirect(path: Optional[str], saved: tuple[int, int]) -> None:
    """Point descriptors 1 and 2 at ``path`` (truncated), or back to ``saved`` (None). The
    output file is opened as a shell task's (:func:`balsam.launcher.libc_spawn.open_output`):
    a FIFO at the path without a reader is an OSError naming it, never a process blocked in
    ``open`` with its task's place held."""
    sys.stdout.flush()
    sys.stderr.flush()
    if path is None:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        return
    fd = open_output(path, os.getcwd(), path)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def serve(conn: Channel, began_path: str = "") -> int:
    """The warm worker's loop (see the module docstring); returns when ``conn`` closes. The
    database is the one the job's ``BALSAM_DB_PATH`` names; ``began_path``: the began file
    (:mod:`balsam.launcher.warm_channel`)."""
    runners: dict[str, Runner] = {}
    environment = _Environment()
    saved = (os.dup(1), os.dup(2))
    inbox = Inbox(conn, began_path)
    try:
        request = inbox.first()
        while request is not None:
            job_id, env, workdir, output_path, row = request[:5]
            rc, outcome = _run_one(runners, environment, saved, job_id, env, workdir,
                                   output_path, row)
            # What comes next is decided before the reply, which says so: the launcher then
            # knows whether a request queued behind this one began or was cancelled.
            request = inbox.finish(job_id, rc, outcome)
            if request is None and inbox.open:
                request = inbox.first()
        return 0
    finally:
        inbox.close()
        for runner in runners.values():
            runner.close()


def _run_one(runners: dict[str, Runner], environment: _Environment, saved: tuple[int, int],
             job_id: str, env: Mapping[str, Optional[str]], workdir: str, output_path: str,
             row: Optional[TaskRow]) -> tuple[int, Union[OutcomeRow, str, None]]:
    """One request: environment, directory, output redirected, the task run; its exit status
    and outcome, or 2 and why it could not start (the output file cannot hold that: the
    rank reports it as the task's failure)."""
    environment.apply(env)
    try:
        try:
            os.mkdir(workdir)  # the usual case: a new directory whose parent exists
        except OSError:
            os.makedirs(workdir, exist_ok=True)
        os.chdir(workdir)
        _redirect(output_path, saved)
    except OSError as exc:
        print(f"balsam: cannot start function task {job_id}: {exc}", file=sys.stderr)
        return 2, f"cannot start: {exc}"
    try:
        db_path = os.environ.get("BALSAM_DB_PATH", "")
        runner = runners.get(db_path) or runners.setdefault(db_path, Runner(db_path))
        return runner.run_task(job_id, workdir, row)
    finally:
        _redirect(None, saved)


def main(argv: Sequence[str]) -> int:
    """Entry point (see the module docstring)."""
    job_id, db_path = os.environ.get("BALSAM_JOB_ID"), os.environ.get("BALSAM_DB_PATH")
    if list(argv[:1]) == ["--warm"] and len(argv) in (2, 3) and argv[1].isdigit():
        fd = int(argv[1])
        os.set_inheritable(fd, False)  # what run() starts must not hold the channel open
        return serve(Channel(socket.socket(fileno=fd)), argv[2] if len(argv) == 3 else "")
    if argv or not job_id or not db_path:
        print("usage: python -m balsam.launcher.pyfunc_task  (with BALSAM_JOB_ID and "
              "BALSAM_DB_PATH set, as the launcher does)", file=sys.stderr)
        return 2
    runner = Runner(db_path)
    try:
        return runner.run(job_id, os.getcwd())
    finally:
        runner.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
