"""The link between a serial worker rank and its warm processes, and the warm process's side of it.

:class:`Channel` frames pickled messages over a socketpair (both ends). In the warm process
(:func:`balsam.launcher.pyfunc_task.serve`) an :class:`Inbox` holds the requests waiting behind
the running task and decides, under one lock, which request begins and which a
``(CANCEL, [job ids])`` takes back: each request has exactly one fate, and the reply that says
it goes out under the same lock, so the rank reads the fates in the order they happened.

Between tasks the warm process's main thread reads the channel itself (no thread hand-off on
the hot path). A task that runs longer than ``WATCH_SECONDS`` is long: a watcher thread then
reads the channel while it runs, so requests queued behind it can be taken back at once (the
reply ``(None, None, None, None, [job ids])`` says which) and run elsewhere when a place frees
(:mod:`balsam.launcher.serial_warm`), instead of waiting for its whole run. The watcher looks
every ``WATCH_SECONDS`` while a task runs and sleeps while the process is idle.

A request the rank queued behind a running one (its ``queued`` flag) is noted in the *began
file* (the rank's watchdog report path + ``.began``, one line per begin) before it begins: if
the rank dies, its watchdog counts such a request as started only if the file names it
(:func:`balsam.launcher.watchdog.serve`), so a request that never began uses no retry.
"""
from __future__ import annotations

import os
import pickle
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from typing import Any, Optional

CANCEL = "cancel"
"""``(CANCEL, [job ids])``: take back requests queued behind the running task, those not begun
(a request that began is not affected; the reply lists the ones taken back)."""
WATCH_SECONDS = 0.005
"""A task still running after this long (and at most twice this) has the watcher read the
channel for it (under ``warm_pool.SHORT_TASK_SECONDS``: the rank recalls only from older ones)."""
SELECT_SECONDS = 0.05
"""Longest wait of the watcher for a message before it looks whether its task still runs."""

Request = tuple[Any, ...]
"""``(job_id, environment changes, workdir, output_path, row, queued)``."""


class Channel:
    """Pickled messages, each prefixed by its length, over a stream socket (what
    ``multiprocessing.connection`` does, without its ~30 ms import in every worker rank)."""

    _HEADER = struct.Struct("!I")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: object) -> None:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        self.sock.sendall(self._HEADER.pack(len(data)) + data)

    def recv(self) -> Any:
        """The next message (blocking); EOFError once the other end is closed."""
        (size,) = self._HEADER.unpack(self._read(self._HEADER.size))
        return pickle.loads(self._read(size))

    def poll(self) -> bool:
        """Whether :meth:`recv` would not block (a message or the end is there)."""
        return bool(select.select([self.sock], [], [], 0)[0])

    def _read(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            chunk = self.sock.recv(left)
            if not chunk:
                raise EOFError("the other end closed the channel")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


class Inbox:
    """The warm process's requests (see the module docstring). The main thread calls
    :meth:`first` when idle and :meth:`finish` after each task; ``began_path`` names the began
    file ("" : none)."""

    def __init__(self, conn: Channel, began_path: str = "") -> None:
        self.conn = conn
        self.began_path = began_path
        self._began_fd = -1
        self._note_failed = False
        self.lock = threading.Lock()
        self.waiting: deque[Request] = deque()
        self.current: Optional[str] = None  # the job id of the task running
        self.begun = 0  # requests begun so far: the watcher's measure of one task's run
        self.open = True
        self._busy = threading.Event()  # set while a task runs (the watcher sleeps otherwise)
        self._watcher: Optional[threading.Thread] = None

    def first(self) -> Optional[Request]:
        """Idle: the next request, which begins now; None once the channel ends. No lock while
        waiting: nothing runs, so the watcher does not read."""
        while True:
            try:
                message: Request = self.conn.recv()
            except (EOFError, OSError):
                self.open = False
                return None
            if message[0] != CANCEL:  # a cancel here is for a request that began already
                with self.lock:  # the rank counts it begun: it runs even if its note failed
                    self._note(message)
                    self._begin(message)
                return message

    def finish(self, job_id: str, rc: int, outcome: Any) -> Optional[Request]:
        """The running task ended: take what waits in the channel, pick the request that begins
        next, reply (which says it, and what cancels took back); that request, or None (idle,
        or the channel ended)."""
        cancelled: list[str] = []
        with self.lock:
            self.current = None
            while self.open and self.conn.poll():
                self._take(cancelled)
            following = self.waiting.popleft() if self.waiting and self.open else None
            if following is not None and not self._note(following):  # it must not begin
                cancelled += [following[0]] + [r[0] for r in self.waiting]  # unnoted: all
                self.waiting.clear()                                         # go back
                following = None
            if following is not None:
                self._begin(following)
            try:
                self.conn.send((job_id, rc, outcome, following and following[0], cancelled))
            except OSError:  # the rank closed the pool, or died
                self.open = False
            return following if self.open else None

    def _begin(self, request: Request) -> None:
        """Under the lock: ``request`` begins."""
        self.current = request[0]
        self.begun += 1
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="balsam-warm-watch",
                                             daemon=True)
            self._watcher.start()
        if not self._busy.is_set():
            self._busy.set()

    def _note(self, request: Request) -> bool:
        """Note a queued ``request`` in the began file (which the rank's watchdog made) before
        it begins; False if that failed (one line on stderr the first time)."""
        if not (len(request) > 5 and request[5] and self.began_path):
            return True
        line = f"{request[0]}\n".encode()
        try:
            if self._began_fd < 0:
                self._began_fd = os.open(self.began_path, os.O_WRONLY | os.O_APPEND)
            if os.write(self._began_fd, line) == len(line):
                return True
        except OSError as exc:
            if not self._note_failed:
                print(f"balsam warm worker: cannot note a queued task's start in "
                      f"{self.began_path} ({exc}): queued tasks go back unrun",
                      file=sys.stderr, flush=True)
        self._note_failed = True
        return False

    def _take(self, cancelled: list[str]) -> bool:
        """Under the lock: read one message; a request waits, a cancel takes its requests out
        of ``waiting`` (their ids added to ``cancelled``). False once the channel ended."""
        try:
            message: Request = self.conn.recv()
        except (EOFError, OSError):
            self.open = False
            return False
        if message[0] != CANCEL:
            self.waiting.append(message)
            return True
        ids = set(message[1])
        for request in [r for r in self.waiting if r[0] in ids]:
            self.waiting.remove(request)
            cancelled.append(request[0])
        return True

    def _watch(self) -> None:
        """The watcher thread: while one task runs longer than ``WATCH_SECONDS``, read for it."""
        seen = -1
        while True:
            self._busy.wait()
            time.sleep(WATCH_SECONDS)
            with self.lock:
                if not self.open:
                    return
                if self.current is None:
                    self._busy.clear()
                    continue
                if self.begun != seen:  # another task since the last look: look again
                    seen = self.begun
                    continue
            self._read_while(seen)

    def _read_while(self, begun: int) -> None:
        """Take messages while the task that was running at ``begun`` still runs; a cancel
        that takes requests back is answered at once."""
        while True:
            try:
                ready = select.select([self.conn.sock], [], [], SELECT_SECONDS)[0]
            except (OSError, ValueError):
                return
            with self.lock:
                if not self.open or self.current is None or self.begun != begun:
                    return
                if not ready or not self.conn.poll():
                    continue
                cancelled: list[str] = []
                if not self._take(cancelled):
                    return
                if cancelled:
                    try:
                        self.conn.send((None, None, None, None, cancelled))
                    except OSError:
                        self.open = False
                        return

    def close(self) -> None:
        """The loop ends: the watcher stops at its next look."""
        with self.lock:
            self.open = False
        self._busy.set()
        if self._began_fd >= 0:
            os.close(self._began_fd)
            self._began_fd = -1
