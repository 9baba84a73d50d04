"""A :class:`balsam.db.database.Database` that counts statements by the function run (the
serial master's exit log line: the benchmark's statements-per-task breakdown)."""
from __future__ import annotations

import time
from typing import Any, Callable

from balsam.db.connect import driver
from balsam.db.database import Database


class MeteredDatabase(Database):
    """A :class:`Database` that also counts statements by the function run (``by_work``),
    for the master's exit log line (the benchmark's statements-per-task breakdown)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        # Rank 0 makes this in its main thread before its boot thread starts: psycopg2 loads
        # now, without ``ssl`` (:func:`driver`; ~5 ms of CPU), and the thread only connects.
        driver()
        super().__init__(*args, **kw)
        self.by_work: dict[str, int] = {}
        self.seconds_by_work: dict[str, float] = {}
        """Wall seconds spent in each kind of transaction (waiting for the server included)."""

    def _metered(self, fn: Callable[..., Any], call: Callable[[], Any]) -> Any:
        before = self.statements
        t0 = time.perf_counter()
        try:
            return call()
        finally:
            name = getattr(fn, "__name__", "other")
            self.by_work[name] = self.by_work.get(name, 0) + self.statements - before
            self.seconds_by_work[name] = (self.seconds_by_work.get(name, 0.0)
                                          + time.perf_counter() - t0)

    def run(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self._metered(fn, lambda: super(MeteredDatabase, self).run(fn, *args, **kw))

    def run_before(self, deadline: float, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self._metered(fn, lambda: super(MeteredDatabase, self).run_before(
            deadline, fn, *args, **kw))

    def try_run(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return self._metered(fn, lambda: super(MeteredDatabase, self).try_run(fn, *args, **kw))

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.by_work.items(), key=lambda kv: -kv[1]))
