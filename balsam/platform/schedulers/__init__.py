"""Batch scheduler plug-ins: one small pure module each (local, slurm, pbs, cobalt, lsf).

Every plug-in normalises its scheduler into the same records. The cluster plug-ins are modules
with pure argv builders and parsers (``submit_argv``, ``parse_submit``, ``status_argv``,
``parse_status``, ``cancel_argv``, ``STATE_MAP``) plus the high-level calls of
:class:`Scheduler`, which run commands through :mod:`.command` (argv lists, always a timeout).
The ``local`` plug-in runs job scripts as process groups on this machine and keeps its records
in a directory the caller names. :func:`get` returns the object the service talks to; plug-in
modules are imported only by :func:`get`, so importing this package loads none of them.

Normalised states (:data:`STATES`): ``queued``, ``running``, ``finishing`` (the scheduler is
tearing the job down), ``finished``, ``failed``, ``cancelled`` (the three :data:`FINAL_STATES`),
``held`` (will not start until released) and ``unknown`` (a state this plug-in does not know;
the raw string is kept in :attr:`BatchJobStatus.raw_state`).
"""
from __future__ import annotations

import importlib
from typing import Optional, cast

from balsam.platform.schedulers.base import (  # noqa: F401  (the package's public names)
    ACTIVE_STATES,
    COMMAND_TIMEOUT,
    DIRECTIVES,
    FINAL_STATES,
    SCHEDULERS,
    STATES,
    BatchJobStatus,
    CommandFailed,
    CommandNotFound,
    CommandTimeout,
    ParseError,
    Scheduler,
    SchedulerError,
    UnknownScheduler,
    normalise,
)

__all__ = ["ACTIVE_STATES", "COMMAND_TIMEOUT", "DIRECTIVES", "FINAL_STATES", "SCHEDULERS", "STATES",
           "BatchJobStatus", "CommandFailed", "CommandNotFound", "CommandTimeout", "ParseError",
           "Scheduler", "SchedulerError", "UnknownScheduler", "get", "normalise"]


def get(name: str, state_dir: Optional[str] = None) -> Scheduler:
    """The scheduler called ``name`` (one of :data:`SCHEDULERS`).

    ``state_dir`` is where the ``local`` scheduler keeps its job records (the DB's
    ``qsubmit/``); the other schedulers ignore it. Unknown names raise :class:`UnknownScheduler`.
    """
    if name not in SCHEDULERS:
        raise UnknownScheduler(f"unknown scheduler {name!r} (one of {', '.join(SCHEDULERS)})")
    module = importlib.import_module(f"{__name__}.{name}")
    if name == "local":
        if not state_dir:
            raise SchedulerError("the local scheduler needs a directory for its job records "
                                 "(the DB's qsubmit/)")
        return cast(Scheduler, module.LocalScheduler(state_dir))
    return cast(Scheduler, module)
