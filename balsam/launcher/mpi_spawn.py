"""Starting an MPI-mode run cheaply: :class:`RunTask`, a :class:`procs.Task` started with
``posix_spawn`` by the launcher process itself.

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

The run enters ``cwd`` in the child only (:mod:`balsam.launcher.libc_spawn`: glibc's
``posix_spawn_file_actions_addchdir_np``, or ``Popen(cwd=...)`` where it is missing): the
launcher's own working directory never changes, so its other threads (the transaction, the
preparer, transition and transfer workers) may use relative paths at any time.
"""
from __future__ import annotations

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
        self.pid = spawn.launch(argv, env, cwd, output_path, prepared,
                                () if ignore_sigpipe else _DEFAULT_SIGNALS)
        self.pgid = self.pid
