"""A reconnecting connection for long-running processes (launchers, transition workers, the
service): transactions that survive a server restart.

:class:`Database` owns one psycopg2 connection (no Django). Every piece of work is a function
``fn(cursor, *args, **kw)`` run in one transaction and committed:

* :meth:`Database.run` retries until it succeeds: a lost connection (the server stopped,
  restarted on another port, the network dropped) is re-opened with back-off capped at
  ``RECONNECT_MAX_SECONDS``, re-reading ``server-info`` each time, and ``fn`` runs again. It
  gives up only when ``stop`` (an event) is set or the optional deadline passes, raising
  :class:`DatabaseUnavailable`.
* :meth:`Database.try_run` makes one attempt (re-opening a broken connection once, unless a
  reconnection failed less than the current back-off ago) and raises
  :class:`DatabaseUnavailable` at once otherwise: a launcher's main loop keeps watching its
  tasks while the database is away and keeps its state changes pending.

Retrying ``fn`` after a commit whose outcome is unknown must be safe: every state change goes
through :func:`balsam.core.lifecycle.transition`, which only moves jobs from the expected source
states, so writing the same change twice is a no-op. Deadlocks and serialization failures are
rolled back and retried at once. Any other error rolls back and propagates.

:meth:`listen` subscribes to :data:`balsam.defaults.NOTIFY_CHANNEL` (re-subscribed after every
reconnection); :meth:`wait` blocks on the connection's socket until another session changes
jobs or the timeout passes. Notifications caused by this connection's own statements are
ignored; :meth:`runnable` says whether another session's announced jobs left claimable
(payload ``... runnable``, migration 0024; an unknown payload counts as such; an app change,
``APP``, migration 0025, does not). ``statements``
counts executed statements and ``transactions`` committed transactions (for benchmarks);
``reconnects`` counts re-opened connections (a caller compares it to learn that a commit
outcome may have been lost).
"""
from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional, TypeVar

from balsam import defaults
from balsam.db.connect import connect, driver
from balsam.errors import BalsamError, DatabaseUnavailable

T = TypeVar("T")

CONNECT_TIMEOUT_SECONDS = 3
"""A launcher waits at most this long for a connection: its tasks need watching meanwhile."""
FIRST_BACKOFF_SECONDS = 0.05
_NOT_RUNNABLE = frozenset({"INSERT", "UPDATE", "APP"})
"""Payloads that announce no claimable job: job changes (migration 0024) and app changes
(``APP``, migration 0025: what a processing pass or a worker may do changed, not what a
launcher may claim)."""
ROLLBACK_RETRIES = 20
"""Deadlock/serialization failures retried at once before the error propagates."""


class _CountingCursor:
    """A cursor proxy that counts ``execute`` calls on its :class:`Database`."""

    def __init__(self, cursor: Any, owner: Database) -> None:
        self._cursor = cursor
        self._owner = owner

    def execute(self, sql: Any, params: Any = None) -> Any:
        self._owner.statements += 1
        return self._cursor.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class WakeEvent(threading.Event):
    """A stop event that ``select`` can wait on: its :meth:`fileno` turns readable once it is
    set. A :class:`Database` whose ``stop`` is one returns from :meth:`Database.wait` at once
    when it is set (threads waiting for notifications stop without sitting out their timeout).
    :meth:`close` its pipe once no thread waits on it any more."""

    def __init__(self) -> None:
        super().__init__()
        self._read, self._write = os.pipe()

    def set(self) -> None:
        if not self.is_set() and self._write >= 0:
            os.write(self._write, b"x")  # never read: readable for every waiter, for good
        super().set()

    def fileno(self) -> int:
        return self._read

    def close(self) -> None:
        for fd in (self._read, self._write):
            if fd >= 0:
                os.close(fd)
        self._read = self._write = -1


class Database:
    """One connection to the Balsam DB at ``db_path`` (see the module docstring)."""

    def __init__(self, db_path: str, application_name: str = "balsam-launcher", *,
                 stop: Optional[threading.Event] = None,
                 reconnect_max_seconds: float = defaults.RECONNECT_MAX_SECONDS,
                 log: Optional[Callable[[str], None]] = None) -> None:
        self.db_path = db_path
        self.application_name = application_name
        self.stop = stop or threading.Event()
        self.reconnect_max_seconds = reconnect_max_seconds
        self.log = log or (lambda _msg: None)
        self.statements = 0
        self.transactions = 0
        self.reconnects = 0
        self._conn: Any = None
        self._backend_pid = 0
        self.peer_pids: set[int] = set()
        """Server processes of connections writing for the same launcher (its status
        writers): their job changes are its own, so they wake no :meth:`wait`."""
        self._listening = False
        self._channel = defaults.NOTIFY_CHANNEL
        self._backoff = FIRST_BACKOFF_SECONDS
        self._next_attempt = 0.0
        self._notified = False
        self._runnable = False
        self._also: dict[str, bool] = {}
        """Channels listened to besides the job changes' (:meth:`listen_also`): heard yet?"""

    # ---- connection -------------------------------------------------------------------------
    @property
    def backend_pid(self) -> int:
        """The server process of the current connection (0: none)."""
        return self._backend_pid

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def _open(self) -> None:
        """Open a connection now (one attempt); DatabaseUnavailable if it fails."""
        self._drop()
        try:
            conn = connect(self.db_path, self.application_name,
                           connect_timeout=CONNECT_TIMEOUT_SECONDS)
        except BalsamError as exc:  # DatabaseUnavailable, or server-info missing/half-moved
            self._next_attempt = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.reconnect_max_seconds)
            raise DatabaseUnavailable(str(exc))
        had_connection = self._backend_pid != 0
        self._conn = conn
        self._backend_pid = conn.get_backend_pid()
        self._backoff = FIRST_BACKOFF_SECONDS
        self._next_attempt = 0.0
        if had_connection:
            self.reconnects += 1
            self.log(f"reconnected to the database (connection {self.reconnects})")
        if self._listening:
            self._subscribe()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - a dead connection may fail to close
                pass
        self._conn = None

    def _ensure(self, deadline: float, stop: Optional[threading.Event]) -> None:
        """Connected when this returns; DatabaseUnavailable once ``deadline`` (monotonic) passed
        or ``stop`` is set."""
        while not self.connected:
            now = time.monotonic()
            if now < self._next_attempt:
                if now >= deadline or (stop is not None and stop.is_set()):
                    raise DatabaseUnavailable(f"the database of {self.db_path} is unreachable")
                (stop or threading.Event()).wait(min(self._next_attempt, deadline) - now)
                continue
            try:
                self._open()
            except DatabaseUnavailable as exc:
                if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                    raise
                self.log(f"database unavailable, retrying in {self._backoff:.2f} s: {exc}")

    def sever(self) -> None:
        """Shut the connection's socket down, from any thread: a statement blocked on it (a
        server or network that stopped answering) fails at once, as after a lost connection
        (:class:`balsam.launcher.fence.LeaseFence` uses it to free a hung launcher)."""
        import socket  # ~2 ms: not for every CLI command that imports this module

        conn = self._conn
        try:
            sock = socket.socket(fileno=os.dup(conn.fileno()))
        except Exception:  # noqa: BLE001 - no connection, or closed meanwhile: nothing blocks
            return
        with sock:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        """Close the connection (a later call reconnects)."""
        self._drop()
        self._backend_pid = 0

    # ---- transactions -----------------------------------------------------------------------
    def run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """``fn(cursor, *args, **kw)`` in one committed transaction, retried across lost
        connections until it succeeds or ``stop`` is set (DatabaseUnavailable)."""
        return self._call(float("inf"), self.stop, fn, args, kw)

    def run_before(self, deadline: float, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """As :meth:`run`, giving up (DatabaseUnavailable) at ``deadline`` (time.monotonic()),
        whether or not ``stop`` is set (used to record the last states while stopping)."""
        return self._call(deadline, None, fn, args, kw)

    def try_run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """As :meth:`run` but without waiting: DatabaseUnavailable if the server cannot be
        reached right now (a broken connection is re-opened once, back-off permitting)."""
        return self._call(time.monotonic(), None, fn, args, kw)

    def _call(self, deadline: float, stop: Optional[threading.Event], fn: Callable[..., T],
              args: tuple[Any, ...], kw: dict[str, Any]) -> T:
        psycopg2 = driver()  # (the first call's import, before connecting: without ssl if it can)
        from psycopg2 import errors

        rollbacks = 0
        lost = 0
        while True:
            self._ensure(deadline, stop)
            conn = self._conn
            try:
                with conn.cursor() as raw:
                    result = fn(_CountingCursor(raw, self), *args, **kw)
                conn.commit()
                self.transactions += 1
                self._collect()
                return result
            except errors.TransactionRollbackError:
                self._rollback()
                rollbacks += 1
                if rollbacks > ROLLBACK_RETRIES:
                    raise
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                if conn.closed == 0 and self._rollback():
                    raise  # the connection is fine: a real error of this statement
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                self.log(f"lost the database connection: {first}")
                self._drop()
                lost += 1
                # One immediate reconnection even past the deadline: a connection that broke
                # long ago (the server restarted while we were idle) is re-opened at once.
                if lost > 1 and (time.monotonic() >= deadline
                                 or (stop is not None and stop.is_set())):
                    raise DatabaseUnavailable(f"lost the connection to the database of "
                                              f"{self.db_path}: {first}")
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> bool:
        """Roll back; False if the connection is unusable (then it is dropped)."""
        try:
            self._conn.rollback()
            return True
        except Exception:  # noqa: BLE001 - any failure here means the connection is gone
            self._drop()
            return False

    # ---- notifications ----------------------------------------------------------------------
    def listen(self, channel: str = defaults.NOTIFY_CHANNEL) -> None:
        """Subscribe to job-change notifications (kept across reconnections); ``channel``:
        another one (:data:`balsam.defaults.TRANSFER_NOTIFY_CHANNEL`)."""
        self._channel = channel
        self._listening = True
        if self.connected:
            self._subscribe()

    def listen_also(self, channel: str) -> None:
        """Also subscribe to ``channel`` (with :meth:`listen`, kept across reconnections): its
        notifications wake no :meth:`wait` and set no :meth:`notified`; :meth:`heard` says
        whether one came from another session since the last call."""
        if channel in self._also:
            return
        self._also[channel] = False
        if self.connected and self._listening:
            with self._conn.cursor() as cur:
                cur.execute(f"LISTEN {channel}")
            self._conn.commit()

    def heard(self, channel: str) -> bool:
        """Whether another session notified ``channel`` (:meth:`listen_also`) since the last
        call; notifications are collected by :meth:`notified` and :meth:`wait`."""
        hit = self._also.get(channel, False)
        if hit:
            self._also[channel] = False
        return hit

    def unlisten(self) -> None:
        """Stop the notifications :meth:`listen` subscribed to (pending ones are dropped), so
        a connection that no longer waits does not let them pile up."""
        self._listening = False
        self._notified = self._runnable = False
        if self.connected:
            with self._conn.cursor() as cur:
                for channel in (self._channel, *self._also):
                    cur.execute(f"UNLISTEN {channel}")
            self._conn.commit()
            self._conn.notifies.clear()

    def _subscribe(self) -> None:
        with self._conn.cursor() as cur:
            for channel in (self._channel, *self._also):
                cur.execute(f"LISTEN {channel}")
        self._conn.commit()

    def _collect(self) -> None:
        """Move notifications from other sessions into the pending flag (ours are dropped)."""
        conn = self._conn
        if conn is None or not conn.notifies:
            return
        own = self.peer_pids | {self._backend_pid}
        for note in conn.notifies:
            if note.pid in own:
                continue
            if note.channel in self._also:
                self._also[note.channel] = True
            else:
                self._notified = True
                self._runnable = self._runnable or note.payload not in _NOT_RUNNABLE
        conn.notifies.clear()

    def runnable(self) -> bool:
        """Whether a notification collected since the last call (by :meth:`notified` or
        :meth:`wait`) announced jobs left claimable by another session."""
        hit, self._runnable = self._runnable, False
        return hit

    def notified(self) -> bool:
        """Whether another session changed jobs since the last call (non-blocking)."""
        if self.connected:
            try:
                self._conn.poll()
            except Exception:  # noqa: BLE001 - the next transaction reconnects
                self._drop()
            self._collect()
        hit, self._notified = self._notified, False
        return hit

    def wait(self, timeout: float, extra_fds: Sequence[Any] = ()) -> bool:
        """Sleep until another session changes jobs (True), one of ``extra_fds`` is readable
        (e.g. pidfds of tasks: False), ``timeout`` seconds pass or ``stop``, if a
        :class:`WakeEvent`, is set (False). Without a connection it waits on ``extra_fds`` only
        (the next transaction reconnects)."""
        if self.notified():
            return True
        listening = self.connected and self._listening
        fds = list(extra_fds) + ([self._conn] if listening else [])
        if isinstance(self.stop, WakeEvent) and self.stop.fileno() >= 0:
            if self.stop.is_set():
                return False
            fds.append(self.stop)
        end = time.monotonic() + max(0.0, timeout)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return False
            if not fds:
                self.stop.wait(left)
                return False
            try:
                ready, _, _ = select.select(fds, [], [], left)
            except (OSError, ValueError):
                self._drop()
                return False
            if not ready:
                return False
            if listening and self._conn in ready:
                if self.notified():
                    return True
                if not self.connected:
                    return False
            if any(fd is not self._conn for fd in ready):
                return False
