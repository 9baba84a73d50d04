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
from typing import TYPE_CHECKING, Any

from balsam import defaults
from balsam.errors import BalsamError

if TYPE_CHECKING:
    from balsam.core.retries import RetryPolicy

ZERO_ALLOWED = frozenset({"max_retries", "retry_backoff_seconds", "status_writers"})
"""Numeric tunables for which 0 means something (no retries, no back-off, automatic)."""
SWITCHES = frozenset({"warm_hooks", "pin_single_core_tasks"})
"""Tunables that are true or false, not numbers."""


class Tunables:
    """Launcher tunables: :mod:`balsam.defaults`, overridden by ``settings.yml`` ``launcher:``.
    Immutable, compared by value. A plain class, not a dataclass: every serial rank and the
    launcher import it before their first task, and ``dataclasses`` (with ``inspect``) and the
    class it builds cost ~5-10 ms of each one's start (issue 16, session 20)."""

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

    def __init__(self, **values: Any) -> None:
        names = self.names()
        if set(values) != set(names):
            raise TypeError(f"Tunables needs exactly {sorted(names)}")
        for name in names:
            object.__setattr__(self, name, values[name])

    @classmethod
    def names(cls) -> list[str]:
        """The tunables' names, in the order they are declared above."""
        return list(cls.__annotations__)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Tunables are immutable: use replace({name}=...)")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.names())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tunables) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return "Tunables(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.names()) + ")"

    def replace(self, **changes: Any) -> Tunables:
        """A copy with ``changes`` (names of tunables) applied."""
        return Tunables(**{n: changes.get(n, getattr(self, n)) for n in self.names()})

    @classmethod
    def from_settings(cls, launcher: Mapping[str, Any]) -> Tunables:
        """From the merged ``launcher:`` mapping; BalsamError naming a non-positive value (a
        negative one for :data:`ZERO_ALLOWED`) or a :data:`SWITCHES` value that is not a bool."""
        values: dict[str, Any] = {}
        for name, kind in cls.__annotations__.items():
            value = launcher.get(name, getattr(defaults, name.upper()))
            if name in SWITCHES:
                if not isinstance(value, bool):
                    raise BalsamError(f"settings.yml launcher.{name} must be true or false, "
                                      f"not {value!r}")
                values[name] = value
                continue
            low_ok = name in ZERO_ALLOWED and value == 0
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    value <= 0 and not low_ok):
                raise BalsamError(f"settings.yml launcher.{name} must be a positive number, "
                                  f"not {value!r}")
            values[name] = int(value) if kind in ("int", int) else float(value)
        return cls(**values)

    def retry_policy(self) -> RetryPolicy:
        """The retry limit and back-off of jobs that have no limit of their own."""
        from balsam.core.retries import RetryPolicy  # (schema, states: not needed at a start)

        return RetryPolicy(self.max_retries, self.retry_backoff_seconds)
