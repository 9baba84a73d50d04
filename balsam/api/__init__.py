"""The newer (0.6-style) API's client side, over the classic tables.

``from balsam.api import Job, BatchJob, App, Site, wait, as_completed``. Every name is
translated to the classic schema (:mod:`balsam.api.names`): jobs are ``BalsamJob`` rows, batch
jobs ``QueuedLaunch`` rows, apps ``ApplicationDefinition`` rows; states change only through
:mod:`balsam.core.lifecycle`. Function jobs' results: :mod:`balsam.api.waiting`.
"""
from balsam.api.apps import App  # noqa: F401
from balsam.api.batchjobs import BatchJob  # noqa: F401
from balsam.api.jobs import Job  # noqa: F401
from balsam.api.sites import Site  # noqa: F401
from balsam.api.waiting import (  # noqa: F401
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    as_completed,
    wait,
)

__all__ = ["ALL_COMPLETED", "App", "BatchJob", "FIRST_COMPLETED", "FIRST_EXCEPTION", "Job", "Site",
           "as_completed", "wait"]
