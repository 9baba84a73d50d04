"""Helpers shared by CLI commands: the active DB, Django-free connections, job lookup, prompts."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Optional

from balsam.errors import BalsamError

if TYPE_CHECKING:
    from balsam.db.dbapi import PlainCursor


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                handler: Callable[[argparse.Namespace], int], help: str,
                **kwargs: Any) -> argparse.ArgumentParser:
    """Add a sub-command whose ``args.handler`` is ``handler`` and ``args.command`` its name."""
    parser = sub.add_parser(name, help=help, description=help, **kwargs)
    parser.set_defaults(handler=handler, command=name)
    return parser


def db_path() -> str:
    """The active DB directory (``BALSAM_DB_PATH``), checked."""
    from balsam.db.serverinfo import active_db_path

    return active_db_path()


@contextmanager
def transaction(path: Optional[str] = None) -> Iterator[tuple[str, PlainCursor]]:
    """(db_path, cursor) inside one transaction on a plain psycopg2 connection (no Django).

    Commits on success, rolls back on any error: a failed command writes nothing.
    """
    from balsam.db.connect import connect

    path = path or db_path()
    conn = connect(path, application_name="balsam-cli")
    try:
        with conn.cursor() as cur:
            yield path, cur
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()


def add_yes_flag(p: argparse.ArgumentParser, text: str = "do not ask for confirmation") -> None:
    """The one confirmation flag, ``--yes``, with ``--force`` as its alias (``args.yes``).

    For commands where ``--force`` means more than "do not ask" (``rm``, ``modify``), add
    ``--yes`` alone with ``p.add_argument``; those commands document their ``--force``."""
    p.add_argument("--yes", "--force", dest="yes", action="store_true", help=text)


def confirm(question: str, assume_yes: bool) -> bool:
    """Ask a y/n question; ``assume_yes`` (``--yes``/``--force``) skips it.

    On a terminal the question is asked there. Otherwise, as in classic Balsam, the answer is
    the first line of standard input (``yes | balsam killjob ...``), the question going to stderr
    so stdout stays clean; a closed or empty stdin is refused with a one-line error naming ``--yes``.
    """
    if assume_yes:
        return True
    stream = sys.stdin
    if stream is None or stream.closed:
        raise _no_answer(question, "standard input is closed")
    if stream.isatty():
        try:
            answer = input(f"{question} [y/n] ")
        except EOFError:
            return False
    else:
        answer = stream.readline()
        if not answer:
            raise _no_answer(question, "standard input is empty")
        print(f"{question} [y/n] {answer.strip()}", file=sys.stderr)
    return answer.strip().lower() in ("y", "yes")


def _no_answer(question: str, why: str) -> BalsamError:
    return BalsamError(f"{question.rstrip('? ')}: confirmation needed; no terminal to ask and "
                       f"{why}, so pass --yes (or --force)")
