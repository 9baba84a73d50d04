"""File-system work a sweep must not wait on for ever: run it in a thread, wait a bounded time.

A read of a file on a hung NFS mount blocks in the kernel (no timeout, no signal helps), and
``O_NONBLOCK`` does nothing for regular files. The lease sweep reads dead sessions' report
files (:mod:`balsam.core.serial_reports`, :mod:`balsam.core.launch_reports`) and removes them
after its commit: each such step runs in a daemon thread (:func:`within`), and the sweep goes
on when the thread has not finished in time -- the thread stays blocked in the kernel until
the mount answers (a daemon thread: it does not keep the process alive), and its late result
is dropped.
"""
from __future__ import annotations

import threading
from typing import Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class Late(Exception):
    """The step did not finish within its bound (it may still be blocked)."""


class _Run(Generic[T]):
    """One step's outcome, set by its thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Optional[T] = None
        self.error: Optional[BaseException] = None


def within(seconds: float, step: Callable[[], T], name: str = "balsam-bounded-io") -> T:
    """``step()``'s result, or its exception; :class:`Late` if it has not returned within
    ``seconds`` (it goes on in its daemon thread; whatever it returns then is dropped)."""
    run: _Run[T] = _Run()

    def body() -> None:
        try:
            run.value = step()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as it is
            run.error = exc
        finally:
            run.done.set()

    threading.Thread(target=body, name=name, daemon=True).start()
    if not run.done.wait(max(0.0, seconds)):
        raise Late(f"not done within {seconds:g} s")
    if run.error is not None:
        raise run.error
    return run.value  # type: ignore[return-value]
