"""``balsam -V``: the version, and which implementation of each accelerated kernel is in use.

The Cython kernels are built when the install finds a working C compiler; without one Balsam
runs their pure-Python references (same results, slower). This is where a user sees which.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, NoReturn, Optional

import balsam

KERNELS = (
    ("COPY encoder", "balsam.core.copyfmt", "balsam.core._copyfmt"),
    ("job packer", "balsam.service.packing", "balsam.service.packing._packer"),
    ("task starter", "balsam.launcher.spawn_native", "balsam.launcher._spawner"),
)
"""(what it does, module that picks the implementation, the compiled kernel's module)."""


def kernel_lines() -> list[str]:
    """One line per kernel: ``"<what>: compiled (Cython)"`` or ``"<what>: pure Python (...)"``."""
    width = max(len(what) for what, _, _ in KERNELS) + 1
    lines = []
    for what, module, kernel in KERNELS:
        if importlib.import_module(module).KERNEL == "cython":
            used = "compiled (Cython)"
        else:
            used = f"pure Python (no compiled {kernel}: it is built at install when a C compiler works)"
        lines.append(f"{what + ':':<{width}} {used}")
    return lines


def version_text() -> str:
    """What ``balsam -V`` prints."""
    return "\n".join([f"balsam {balsam.__version__}", *kernel_lines()]) + "\n"


class VersionAction(argparse.Action):
    """``-V/--version``: print :func:`version_text` and exit 0 (the kernels are looked up only
    then, not on every command)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: Optional[str] = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0,
                         help=help or "print the version and which kernels (compiled or pure "
                                      "Python) are in use, then exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: Optional[str] = None) -> NoReturn:
        sys.stdout.write(version_text())
        parser.exit(0)
