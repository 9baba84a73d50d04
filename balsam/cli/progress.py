"""A one-line progress indicator on stderr for long CLI operations, shown only on a terminal.

Pipes, files and tests see nothing (unless ``force``): the indicator never mixes into output
that a script reads.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Steps:
    """``step(label)`` shows ``PREFIX: label (i/n)`` on one rewritten stderr line; ``done()``
    erases it. Inactive unless stderr is a terminal or ``force`` is given."""

    def __init__(self, prefix: str, total: int, *, force: bool = False,
                 stream: Optional[TextIO] = None) -> None:
        self.stream = stream or sys.stderr
        self.active = force or self.stream.isatty()
        self.prefix, self.total, self.count, self.width = prefix, total, 0, 0
        self.started = time.monotonic()

    def step(self, label: str) -> None:
        self.count += 1
        if self.active:
            text = f"{self.prefix}: {label} ({self.count}/{self.total})"
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)

    def done(self) -> None:
        if self.active and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
