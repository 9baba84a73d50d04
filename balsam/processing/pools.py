"""The one factory of transition workers: launchers and the service build their pools here.

:func:`start_transition_pool` turns a thread count and the :class:`~balsam.core.tunables.Tunables`
into a started :class:`~balsam.processing.worker.TransitionPool` (``threads`` transition workers
plus a transfer worker), so a launcher (:mod:`balsam.launcher.main`, ``--num-transition-threads``)
and the service (:mod:`balsam.service.service`, ``service.transition_threads``) give their
workers the same limits, lease and waits from the same ``launcher:`` settings.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Optional

from balsam.core.tunables import Tunables
from balsam.processing.steps import Limits
from balsam.processing.worker import TransitionPool


def start_transition_pool(threads: int, db_path: str, tunables: Tunables, *,
                          wf_filter: Optional[str], base_env: Mapping[str, str],
                          log: logging.Logger, draining: threading.Event
                          ) -> Optional[TransitionPool]:
    """Start ``threads`` transition workers (stage-in/out, pre/postprocess, handlers) for the
    jobs of ``wf_filter`` (None: every workflow); None when ``threads`` <= 0. Their scripts
    start from ``base_env``; once ``draining`` is set they claim nothing new. The caller stops
    the pool (:meth:`TransitionPool.stop`)."""
    if threads <= 0:
        return None
    t = tunables
    pool = TransitionPool(
        threads, db_path, wf_filter=wf_filter, base_env=base_env,
        limits=Limits(t.script_timeout_seconds,
                      kill_grace=t.shutdown_grace_seconds, tail_lines=t.output_tail_lines),
        log=log, heartbeat_seconds=t.heartbeat_seconds, lease_seconds=t.lease_seconds,
        idle_wait_seconds=t.idle_wait_seconds, idle_poll_max_seconds=t.idle_poll_max_seconds,
        reconnect_max_seconds=t.reconnect_max_seconds,
        draining=draining, max_retries=t.max_retries, warm_hooks=t.warm_hooks)
    pool.start()
    return pool
