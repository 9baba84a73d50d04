"""The launcher tunables as one checked object: every reader of ``settings.yml`` ``launcher:``
goes through :class:`Tunables`. Most are positive numbers; :data:`SWITCHES` are true/false.

The values and why they are what they are live in :mod:`balsam.defaults`; ``settings.yml`` may
override them under ``launcher:`` (same names, lower case; the schema of
:mod:`balsam.db.settings_schema` checks them first). Launchers (:mod:`balsam.launcher.main`,
the serial ranks), the service (its processing pass and transition workers) and the transition
workers' factory (:func:`balsam.processing.pools.start_transition_pool`) read them only here.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from balsam import defaults
from balsam.core.retries import RetryPolicy
from balsam.errors import BalsamError

ZERO_ALLOWED = frozenset({"max_retries", "retry_backoff_seconds", "status_writers"})
"""Numeric tunables for which 0 means something (no retries, no back-off, automatic)."""
SWITCHES = frozenset({"warm_hooks", "pin_single_core_tasks"})
"""Tunables that are true or false, not numbers."""


@dataclass(frozen=True)
class Tunables:
    """Launcher tunables: :mod:`balsam.defaults`, overridden by ``settings.yml`` ``launcher:``."""

    heartbeat_seconds: float
    lease_seconds: int
    claim_batch: int
    serial_prefetch_per_slot: int
    status_flush_seconds: float
    status_writers: int
    kill_check_seconds: float
    kill_grace_seconds: float
    shutdown_grace_seconds: float
    walltime_margin_seconds: float
    idle_exit_seconds: float
    idle_wait_seconds: float
    idle_poll_max_seconds: float
    processing_batch: int
    max_retries: int
    retry_backoff_seconds: float
    output_tail_lines: int
    reconnect_max_seconds: float
    max_concurrent_runs: int
    script_timeout_seconds: float
    transfer_timeout_seconds: float
    warm_hooks: bool
    """Site app hooks run in a warm runner (:mod:`balsam.processing.warm_hooks`); False: as
    scripts, a new interpreter each."""
    pin_single_core_tasks: bool
    """Serial mode: pin a task whose share is one core to it (shares of more are always)."""

    @classmethod
    def from_settings(cls, launcher: Mapping[str, Any]) -> Tunables:
        """From the merged ``launcher:`` mapping; BalsamError naming a non-positive value (a
        negative one for :data:`ZERO_ALLOWED`) or a :data:`SWITCHES` value that is not a bool."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = launcher.get(f.name, getattr(defaults, f.name.upper()))
            if f.name in SWITCHES:
                if not isinstance(value, bool):
                    raise BalsamError(f"settings.yml launcher.{f.name} must be true or false, "
                                      f"not {value!r}")
                values[f.name] = value
                continue
            low_ok = f.name in ZERO_ALLOWED and value == 0
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    value <= 0 and not low_ok):
                raise BalsamError(f"settings.yml launcher.{f.name} must be a positive number, "
                                  f"not {value!r}")
            values[f.name] = int(value) if f.type in ("int", int) else float(value)
        return cls(**values)

    def retry_policy(self) -> RetryPolicy:
        """The retry limit and back-off of jobs that have no limit of their own."""
        return RetryPolicy(self.max_retries, self.retry_backoff_seconds)
