"""Entry point of the ``balsam`` command: builds the parser and maps errors to exit codes.

Every expected failure is a :class:`balsam.errors.BalsamError` (or an argparse usage error):
it is printed as one line on stderr and the exit status is 2. ``--traceback`` shows the rest.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, Optional

import balsam
from balsam.cli.aliases import canonical_argv
from balsam.cli.version import VersionAction

COMMANDS = [
    "init", "server", "which", "app", "site",
    "job", "dep", "ls", "modify", "rm", "killjob", "make_dummies", "wait",
    "mkchild", "launcher", "submit_launch",
    "service", "globus",
    "top",
    "report", "log",
    "web",
    "completion",
]
"""Command modules under ``balsam.cli`` (``cmd_<name>``), in help order."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line (with a pointer to --help), exit 2, and
    accepts the hidden classic flag spellings of :mod:`balsam.cli.aliases`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        formatter = kwargs.get("formatter_class", argparse.HelpFormatter)
        kwargs["formatter_class"] = functools.partial(formatter, width=help_width())
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override]
                         namespace: Optional[argparse.Namespace] = None) -> tuple[Any, list[str]]:
        argv = sys.argv[1:] if args is None else args
        return super().parse_known_args(canonical_argv(argv), namespace)

    def error(self, message: str) -> NoReturn:  # type: ignore[name-defined]  # noqa: F821
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def help_width() -> int:
    """The width argparse's formatter takes from ``shutil.get_terminal_size()`` (``COLUMNS``, else
    stdout's terminal, else 80; minus 2), without importing shutil: argparse makes a formatter
    for every ``add_argument``, and shutil (with zlib, bz2, lzma) costs every command ~1.5 ms."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    stdout = sys.__stdout__
    if columns <= 0 and stdout is not None:
        try:
            columns = os.get_terminal_size(stdout.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns or 80) - 2


TOP_LEVEL_FLAGS = ("--traceback",)
"""Top-level flags that may come before the command without changing what it prints."""


def command_of(argv: Sequence[str]) -> Optional[str]:
    """The command ``argv`` runs, when it names one of :data:`COMMANDS` and nothing before it
    but :data:`TOP_LEVEL_FLAGS`; else None (help, version, an unknown command: the full parser
    answers those)."""
    for token in argv:
        if token in TOP_LEVEL_FLAGS:
            continue
        return token if token in COMMANDS and token != "completion" else None
    return None


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``balsam`` parser with every command, or with only the command ``only``.

    Loading and registering all command modules costs ~30 ms (their imports, and argparse
    looking up translations for each sub-parser): a run of one command registers only that one.
    Its parsing, help and errors are the same either way (a sub-parser knows nothing of its
    siblings); ``balsam --help``, ``--version``, unknown commands and ``completion`` (which
    reads the whole parser) get the full one.
    """
    parser = OneLineParser(
        prog="balsam",
        description=f"Balsam {balsam.__version__}: a database-backed HPC workflow engine",
        epilog="Run `balsam COMMAND --help` for the options of a command.",
    )
    parser.add_argument("-V", "--version", action=VersionAction)
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, show the full Python traceback")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMANDS if only is None else [only]:
        importlib.import_module(f"balsam.cli.cmd_{name}").register(sub)
    # A command that needs the whole parser (completion) gets it here, not by importing this
    # module, which loads every command module.
    parser.set_defaults(parser=parser)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(command_of(canonical_argv(argv)))
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    from balsam.errors import BalsamError

    try:
        return int(handler(args) or 0)
    except BalsamError as exc:
        if args.traceback:
            raise
        print(f"balsam {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if args.traceback:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"balsam {args.command}: internal error: {type(exc).__name__}: {message} "
              "(run with --traceback and report it)", file=sys.stderr)
        return 3


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
