"""Starting an MPI-mode run cheaply: :class:`RunTask`, a :class:`procs.Task` started with
``os.posix_spawn`` by the launcher process itself.

Measured in the launcher (``bench_launcher_mpi.py``, 1,000 ``mpiexec`` runs): ``Popen`` cost
its main thread ~0.26 ms a start (its checks, an error pipe, ~80 ``os.fsencode`` calls to
encode the task's environment in Python), ``posix_spawn`` ~0.11 ms, and the caller is held for
less time by the ``vfork``. Behaviour is :class:`procs.Task`'s: a new session (the task leads
its own process group), stdin from ``/dev/null``, stdout and stderr to ``output_path``
(truncated), the working directory ``cwd`` (made if missing), the program looked up on the
PATH of the task's environment (:func:`balsam.launcher.spawn.resolve`), SIGPIPE and SIGXFSZ
back to their default unless ``ignore_sigpipe`` (``Popen``'s ``restore_signals``), and no
descriptor but 0-2 inherited (:func:`balsam.launcher.spawn.forbid_inheritance`, run once by
the caller: Python's, libpq's and pidfds are close-on-exec already).

``posix_spawn`` cannot set the child's working directory before Python 3.13, so the caller's
moves to ``cwd`` for the spawn and back right after (``fchdir`` to a descriptor of the one it
had): for those microseconds another thread of the launcher resolving a *relative* path would
resolve it in the task's directory. The launcher's other threads (its transaction, transition
and transfer workers) use absolute paths: the DB path is made absolute when the launcher starts
(:func:`balsam.db.serverinfo.active_db_path`) and every job directory is built from it.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Optional

from balsam.launcher import spawn

_DEFAULT_SIGNALS = spawn.RESTORED_SIGNALS
"""What ``Popen(restore_signals=True)`` resets: Python ignores them, a child must not."""


class RunTask(spawn.ReapedTask):
    """A run of MPI mode started with ``posix_spawn`` (see the module docstring); OSError if it
    cannot start (a missing program, a directory or output file that cannot be made).
    ``prepared``: ``cwd`` exists (a :class:`balsam.launcher.spawn.Preparer` made it and the
    output file while the job waited for a node; made again here if it vanished since)."""

    def __init__(self, job_id: str, argv: Sequence[str], env: dict[str, str], cwd: str,
                 output_path: str, ignore_sigpipe: bool = False, prepared: bool = False) -> None:
        self.job_id = job_id
        self.output_path = output_path
        self.started = time.time()
        self.kill_deadline: Optional[float] = None
        self._returncode: Optional[int] = None
        program = spawn.resolve(argv[0], env.get("PATH"))
        if not os.path.isabs(output_path):  # as Popen's parent opens it: from our directory
            output_path = os.path.abspath(output_path)
        if not prepared:
            try:
                os.mkdir(cwd)  # usually only the job's own directory is missing: one call
            except FileExistsError:
                pass
            except FileNotFoundError:
                os.makedirs(cwd, exist_ok=True)
        here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            spawn.enter(cwd, prepared)
            try:
                self.pid = spawn.spawn_to(program, argv, env, output_path,
                                          () if ignore_sigpipe else _DEFAULT_SIGNALS)
            finally:
                os.fchdir(here)
        finally:
            os.close(here)
        self.pgid = self.pid
