"""The MPI-mode loop's helper thread: :class:`Flight` runs one database transaction at a time
off the loop's thread (the loop goes on reaping and starting tasks while it commits) and makes
its end a readable file descriptor, so that the loop waits for it, task exits and notifications
in one poll(2) (:func:`readable`). Used by :class:`balsam.launcher.mpi_mode.MPIMode`."""
from __future__ import annotations

import os
import queue
import select
import threading
from typing import Any, Callable, Optional


def readable(fds: list[int], timeout: float) -> bool:
    """Wait until one of ``fds`` is readable (True) or ``timeout`` seconds pass (poll(2): no
    FD_SETSIZE limit on the pidfds of a thousand tasks)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000 + 0.999))))


class Flight:
    """Runs the loop's transactions on one helper thread, one at a time; ``fd`` is readable
    when the one in flight is done. While :attr:`busy`, the database connection belongs to
    the thread: the loop must not use it."""

    def __init__(self) -> None:
        self.fd, self._done_fd = os.pipe()
        self.busy = False
        self._requests: queue.SimpleQueue[Optional[tuple[Callable[..., Any], tuple[Any, ...]]]]
        self._requests = queue.SimpleQueue()
        self._result: tuple[Any, Optional[BaseException]] = (None, None)
        self._thread = threading.Thread(target=self._serve, name="balsam-mpi-cycle", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            self._call(*request)

    def _call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._result = (fn(*args), None)
        except BaseException as exc:  # noqa: BLE001 - raised again in the loop by land()
            self._result = (None, exc)
        os.write(self._done_fd, b"x")

    def submit(self, fn: Callable[..., Any], *args: Any, inline: bool = False) -> None:
        """Run ``fn(*args)`` on the thread (nothing may be in flight); ``inline``: here and
        now (nothing to overlap it with: two thread switches saved)."""
        assert not self.busy
        self.busy = True
        if inline:
            self._call(fn, args)
        else:
            self._requests.put((fn, args))

    def done(self) -> bool:
        """Whether the transaction in flight has finished (its result can land at once)."""
        return self.busy and readable([self.fd], 0.0)

    def land(self) -> Any:
        """Wait for the transaction in flight; its result, or raise what it raised."""
        os.read(self.fd, 1)
        self.busy = False
        (result, exc), self._result = self._result, (None, None)
        if exc is not None:
            raise exc
        return result

    def close(self) -> None:
        """Stop the thread (after landing what is in flight) and close the pipe."""
        if self.busy:
            try:
                self.land()
            except BaseException:  # noqa: BLE001 - closing: the caller already failed or stopped
                pass
        self._requests.put(None)
        self._thread.join()
        os.close(self.fd)
        os.close(self._done_fd)
