"""``balsam top``: a live view of the DB in the terminal (plain ANSI redraw, no curses).

Refreshes every ``--interval`` seconds; ``q`` or Ctrl-C quits with status 0 and the terminal
restored (its mode, the main screen and the cursor). ``--once`` prints one frame and exits.
The data and the drawing are in :mod:`balsam.cli.top`.
"""
from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import time
from typing import Any, Optional

from balsam.cli.common import add_command, db_path, transaction
from balsam.cli.top import Snapshot, collect, render
from balsam.errors import BalsamError

RATE_SPAN = 60.0
"""Live rates compare with the oldest snapshot of about the last minute."""
ENTER, LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"
"""Alternate screen and hidden cursor on; and back."""


def register(sub: Any) -> None:
    p = add_command(sub, "top", run, "live view of job counts, launchers, batch jobs and failures")
    p.add_argument("--interval", type=float, default=2.0, metavar="S",
                   help="seconds between refreshes (default 2)")
    p.add_argument("--once", action="store_true",
                   help="print one frame to stdout and exit (for scripts)")


def snapshot(first: bool, states: Any) -> Snapshot:
    """One snapshot with the batch jobs' live states from ``states`` (a
    :class:`balsam.service.live.Cached`: the scheduler is asked at most every 30 s)."""
    with transaction() as (_, cur):
        snap = collect(cur, with_flow=first)
    return snap.with_live(states.get())


def run(args: argparse.Namespace) -> int:
    if not args.interval > 0:
        raise BalsamError(f"--interval must be a positive number of seconds, not {args.interval}")
    live = not args.once
    if live and not sys.stdout.isatty():
        raise BalsamError("standard output is not a terminal: use --once for a single frame")
    from balsam.db import dbsettings
    from balsam.service import live as live_states

    path = db_path()
    scheduler = dbsettings.load(path)["scheduler"]
    states = live_states.Cached(lambda: live_states.ask(path, scheduler, set()))
    snap = snapshot(True, states)
    if not live:
        width = os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() else 80
        print("\n".join(render(snap, None, width=width, title=os.path.basename(path))))
        return 0
    return Screen(args.interval, os.path.basename(path), states).loop(snap)


class _Stop(Exception):
    """Raised on SIGTERM/SIGHUP to leave the loop through the cleanup."""


class Screen:
    """The live loop: owns the terminal modes while it runs and always gives them back."""

    def __init__(self, interval: float, name: str, states: Any) -> None:
        self.interval = interval
        self.states = states
        self.title = f"{name}  every {interval:g}s  q: quit"
        self.resized = False
        self.out = sys.stdout

    def size(self) -> tuple[int, int]:
        try:
            cols, rows = os.get_terminal_size(self.out.fileno())
        except OSError:
            cols, rows = 80, 24
        return max(cols, 20), max(rows, 5)

    def draw(self, snap: Snapshot, prev: Optional[Snapshot]) -> None:
        width, height = self.size()
        lines = render(snap, prev, width=width, height=height, title=self.title)
        # Clear each line before writing it, so a full-width line never wraps.
        self.out.write("\x1b[H" + "\n".join("\x1b[K" + ln for ln in lines) + "\x1b[J")
        self.out.flush()

    def loop(self, snap: Snapshot) -> int:
        fd: Optional[int] = sys.stdin.fileno() if sys.stdin.isatty() else None
        saved = None
        handlers = {}

        def on_winch(signum: int, frame: Any) -> None:
            self.resized = True

        def on_stop(signum: int, frame: Any) -> None:
            raise _Stop()

        try:
            handlers[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, on_winch)
            handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_stop)
            handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_stop)
            if fd is not None:
                import termios
                import tty

                saved = termios.tcgetattr(fd)
                tty.setcbreak(fd)  # keys unbuffered, no echo; Ctrl-C still sends SIGINT
            self.out.write(ENTER)
            history = [snap]
            while True:
                self.draw(snap, history[0] if len(history) > 1 else None)
                deadline = time.monotonic() + self.interval
                while (key := self.wait(fd, deadline)) == "resize":
                    self.draw(snap, history[0] if len(history) > 1 else None)
                if key == "quit":
                    return 0
                if key == "eof":
                    fd = None  # stdin closed: no more keys, Ctrl-C still works
                try:
                    snap = snapshot(False, self.states)
                except Exception as exc:  # noqa: BLE001 - BalsamError, psycopg2: the DB went away
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    snap.notes = [f"refresh failed, retrying: {first}"]
                else:
                    history.append(snap)
                    while len(history) > 2 and (snap.now - history[1].now).total_seconds() >= RATE_SPAN:
                        history.pop(0)
        except (KeyboardInterrupt, _Stop):
            return 0
        finally:
            self.out.write(LEAVE)
            self.out.flush()
            if saved is not None:
                import termios

                termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
            for sig, old in handlers.items():
                signal.signal(sig, old)

    def wait(self, fd: Optional[int], deadline: float) -> str:
        """Until ``deadline``: "quit" (``q`` pressed), "resize", "eof" (stdin closed) or "tick"."""
        while True:
            if self.resized:
                self.resized = False
                return "resize"
            left = deadline - time.monotonic()
            if left <= 0:
                return "tick"
            ready, _, _ = select.select([fd] if fd is not None else [], [], [], min(left, 0.1))
            if ready and fd is not None:
                data = os.read(fd, 64)
                if not data:
                    return "eof"
                if b"q" in data.lower():
                    return "quit"
