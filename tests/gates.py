"""Bounded waits for the tasks tests start: a task waiting for a gate file the test creates, or
running until it is killed, gives up after :data:`CAP_SECONDS` of naps at least.

A test interrupted or failed midway (Ctrl-C, a pytest timeout, a kill of the test process)
never creates the gate and may never kill the task; an unbounded loop then ran for hours beside
later tests and benchmarks. The cap is counted in naps, so a loaded machine only makes the wait
longer: no test waits anywhere near it. ``tests/test_bounded_task_loops.py`` keeps the test
tree free of unbounded loops in task commands.
"""
from __future__ import annotations

CAP_SECONDS = 600.0
"""A task's wait ends after at least this long (ten minutes: far beyond any test's wait)."""


def _naps(nap: float) -> int:
    return max(1, round(CAP_SECONDS / nap))


def gate_sh(path: str, nap: float = 0.05) -> str:
    """A POSIX ``sh`` loop that waits until ``path`` exists (a shell word, quoted by the caller:
    ``'"$GATE"'``, ``shlex.quote(...)``), napping ``nap`` seconds, at most :data:`CAP_SECONDS`."""
    return (f'_i=0; while [ ! -e {path} ] && [ "$_i" -lt {_naps(nap)} ]; do sleep {nap}; '
            '_i=$((_i + 1)); done')


def forever_sh(nap: float = 0.1) -> str:
    """A POSIX ``sh`` loop that runs until it is killed, at most :data:`CAP_SECONDS`."""
    return f'_i=0; while [ "$_i" -lt {_naps(nap)} ]; do sleep {nap}; _i=$((_i + 1)); done'

