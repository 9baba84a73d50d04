"""The newer (0.6-style) API's client side, over the classic tables.

``from balsam.api import Job, BatchJob, App, Site``. Every name is translated to the classic
schema (:mod:`balsam.api.names`): jobs are ``BalsamJob`` rows, batch jobs ``QueuedLaunch`` rows,
apps ``ApplicationDefinition`` rows; states change only through :mod:`balsam.core.lifecycle`.
"""
from balsam.api.apps import App  # noqa: F401
from balsam.api.batchjobs import BatchJob  # noqa: F401
from balsam.api.jobs import Job  # noqa: F401
from balsam.api.sites import Site  # noqa: F401

__all__ = ["App", "BatchJob", "Job", "Site"]
