"""Counting a throwaway server's statements and transactions by ``application_name``, from its
own log: every statement is logged (``log_statement = 'all'``) with the epoch time, the server
process and the client's ``application_name`` (``log_line_prefix = '%n [%p] %a| '``) while a
:class:`StatementLog` is open, and :meth:`StatementLog.between` counts the lines of a time window.

A transaction is a ``BEGIN`` (psycopg2 opens one before the first statement of each; a statement
in autocommit mode counts as one too). A server process applies the settings when it next
reads a command: open the log before starting what is measured. For throwaway servers only
(benchmarks and tests): it changes the server's configuration (``ALTER SYSTEM``) and puts it
back on close.
"""
from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

PREFIX = "%n [%p] %a| "
_LINE = re.compile(r"^(\d+\.\d+) \[(\d+)\] (.*?)\| \w+:  (statement|execute [^:]*): (.*)$")
_SETTINGS = {"log_statement": "all", "log_line_prefix": PREFIX}


@dataclass
class Window:
    """What the server ran in a time window: per application, its statements by kind."""

    seconds: float
    statements: dict[str, Counter[str]] = field(default_factory=dict)
    transactions: Counter[str] = field(default_factory=Counter)
    """Per application: its BEGINs, and its statements outside any transaction (autocommit)."""

    def apps(self) -> list[str]:
        return sorted(self.statements)

    def per_second(self, app: str) -> float:
        return self.transactions[app] / self.seconds if self.seconds > 0 else 0.0

    def total_per_second(self, prefix: str = "") -> float:
        """Transactions per second of every application whose name starts with ``prefix``."""
        mine = sum(n for app, n in self.transactions.items() if app.startswith(prefix))
        return mine / self.seconds if self.seconds > 0 else 0.0


def kind(statement: str) -> str:
    """A statement's short name: its first words, identifiers and numbers kept, values dropped."""
    text = " ".join(statement.split())
    text = re.sub(r"'[^']*'", "?", text)
    text = re.sub(r"\b\d+(\.\d+)?\b", "N", text)
    return text[:90]


class StatementLog:
    """``log_statement = 'all'`` on the server of ``db_path`` until :meth:`close` (see the
    module docstring)."""

    def __init__(self, db_path: str) -> None:
        from balsam.db import cluster
        from balsam.db.roles import admin_connect

        self.path = os.path.join(db_path, cluster.SERVER_LOG)
        self.conn: Any = admin_connect(db_path)
        self.offset = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        self._set(_SETTINGS)

    def _set(self, values: dict[str, str]) -> None:
        with self.conn.cursor() as cur:
            for name, value in values.items():
                if value:
                    cur.execute(f"ALTER SYSTEM SET {name} = %s", [value])
                else:
                    cur.execute(f"ALTER SYSTEM RESET {name}")
            cur.execute("SELECT pg_reload_conf()")

    def close(self) -> None:
        try:
            self._set({name: "" for name in _SETTINGS})
        finally:
            self.conn.close()

    def __enter__(self) -> StatementLog:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def lines(self) -> list[tuple[float, int, str, str]]:
        """(epoch time, server pid, application, statement) of every statement logged so far."""
        with open(self.path, errors="replace") as fh:
            fh.seek(self.offset)
            text = fh.read()
        found: list[tuple[float, int, str, str]] = []
        for line in text.splitlines():
            m = _LINE.match(line)
            if m:
                found.append((float(m[1]), int(m[2]), m[3] or "(none)", m[5]))
            elif found and line.startswith(("\t", " ")):  # a statement's next line
                t, pid, app, stmt = found[-1]
                found[-1] = (t, pid, app, stmt + " " + line.strip())
        return found

    def between(self, start: float, end: float, pids: Optional[set[int]] = None) -> Window:
        """The statements and transactions logged from ``start`` to ``end`` (epoch seconds),
        by application (``pids``: of these server processes only)."""
        window = Window(end - start)
        open_tx: dict[int, bool] = {}
        for t, pid, app, stmt in self.lines():
            name = kind(stmt)
            upper = name.upper()
            if upper.startswith("BEGIN"):
                open_tx[pid] = True
            in_tx = open_tx.get(pid, False)
            if upper.startswith(("COMMIT", "ROLLBACK")):
                open_tx[pid] = False
            if not start <= t <= end or (pids is not None and pid not in pids):
                continue
            window.statements.setdefault(app, Counter())[name] += 1
            if upper.startswith("BEGIN") or not in_tx:
                window.transactions[app] += 1
        return window


def wait_until(what: str, check: Any, timeout: float, interval: float = 0.05) -> Any:
    """``check()``'s first true value within ``timeout`` s; SystemExit naming ``what`` if none."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= end:
            raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
