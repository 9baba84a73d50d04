"""Whether a task's command is a function task's runner: read by the serial master (its
claims) and the launcher's first tasks, which do not start warm processes themselves. Moved out
of :mod:`balsam.launcher.warm_pool` (issue 16, session 20): importing the pool for these
lines cost rank 0 its process, ``ctypes`` and ``pickle`` imports (~10 ms) before its first task.
"""
from __future__ import annotations

from collections.abc import Sequence

RUNNER_MODULE = "balsam.launcher.pyfunc_task"
"""The function-task runner (:data:`balsam.site.pyfunc.RUNNER_MODULE`, spelled again here so
that a serial worker rank does not import the site package, Jinja2 and cloudpickle)."""


def is_runner_argv(argv: Sequence[str]) -> bool:
    """True if ``argv`` is a function task's runner command (``python -m RUNNER_MODULE``)."""
    return len(argv) == 3 and argv[1] == "-m" and argv[2] == RUNNER_MODULE
