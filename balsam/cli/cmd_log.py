"""``balsam log``: the DB's logs (``<db>/log``): services, launchers and the PostgreSQL server.

Without a kind, the newest ``*.log`` file is shown; ``--service``/``--launcher`` pick the newest
log of that kind, ``--server`` the server's log, ``--all`` every log (oldest first, each under a
``==> path <==`` header). ``--follow`` keeps printing what is appended, like ``tail -F``: it also
picks up a new log of the kind chosen (a restarted service or a new launcher) and a log that was
truncated or replaced. Ctrl-C ends it (exit 0). Needs no running server.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from typing import Any, Optional

from balsam.cli.common import add_command, db_path
from balsam.errors import BalsamError

PATTERNS = {"service": "service_*.log", "launcher": "launcher_*.log", "server": "server.log",
            "all": "*.log", "newest": "*.log"}
POLL_SECONDS = 0.3


def register(sub: Any) -> None:
    p = add_command(sub, "log", run, "show the DB's logs (newest log by default), or follow them")
    kind = p.add_mutually_exclusive_group()
    for name, what in (("service", "the newest service log"), ("launcher", "the newest launcher log"),
                       ("server", "the PostgreSQL server's log"), ("all", "every log")):
        kind.add_argument(f"--{name}", dest="kind", action="store_const", const=name, help=what)
    p.add_argument("-n", "--lines", type=int, default=20, metavar="N",
                   help="last N lines of each log (default 20; 0 = none)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing appended lines until Ctrl-C (like tail -F)")


def pick(log_dir: str, kind: str) -> list[str]:
    """The log files of ``kind``, oldest modification first (only the newest unless ``all``)."""
    files = [p for p in glob.glob(os.path.join(log_dir, PATTERNS[kind])) if os.path.isfile(p)]
    files.sort(key=lambda p: (os.path.getmtime(p), p))
    return files if kind == "all" else files[-1:]


def tail_lines(path: str, n: int) -> tuple[list[str], int]:
    """The last ``n`` lines of ``path`` and its size (reads at most the last 1 MiB)."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - (1 << 20)))
            data = fh.read(size)
    except OSError as exc:
        raise BalsamError(f"cannot read {path}: {exc.strerror or exc}")
    lines = data.decode(errors="replace").splitlines(keepends=True)
    return (lines[-n:] if n > 0 else []), size


def run(args: argparse.Namespace) -> int:
    if args.lines < 0:
        raise BalsamError("-n must be 0 or more")
    log_dir = os.path.join(db_path(), "log")
    if os.path.lexists(log_dir) and not os.path.isdir(log_dir):
        raise BalsamError(f"the log directory {log_dir} is not a directory: move that file away")
    kind = args.kind or "newest"
    files = pick(log_dir, kind)
    if not files and not args.follow:
        raise BalsamError(f"no {'' if kind in ('all', 'newest') else kind + ' '}log in {log_dir}")
    offsets: dict[str, tuple[int, int]] = {}
    shown: Optional[str] = None
    for path in files:
        lines, size = tail_lines(path, args.lines)
        if len(files) > 1:
            sys.stdout.write(f"{'' if shown is None else chr(10)}==> {path} <==\n")
        sys.stdout.write("".join(lines))
        shown = path
        offsets[path] = (os.stat(path).st_ino, size)
    sys.stdout.flush()
    if not args.follow:
        return 0
    try:
        follow(log_dir, kind, offsets, shown)
    except KeyboardInterrupt:
        sys.stdout.flush()
    return 0


def follow(log_dir: str, kind: str, offsets: dict[str, tuple[int, int]],
           shown: Optional[str]) -> None:
    """Print what is appended to the logs of ``kind`` (new files of the kind included) forever."""
    for path in glob.glob(os.path.join(log_dir, PATTERNS[kind])):
        if path not in offsets and os.path.isfile(path):  # existing, unshown logs: only news
            st = os.stat(path)
            offsets[path] = (st.st_ino, st.st_size)
    while True:
        for path in pick(log_dir, "all" if kind in ("all", "service", "launcher") else kind):
            if kind in ("service", "launcher") and not os.path.basename(path).startswith(kind):
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            ino, pos = offsets.get(path, (st.st_ino, 0))
            if st.st_ino != ino or st.st_size < pos:
                pos = 0  # replaced or truncated: start over
            if st.st_size > pos:
                with open(path, "rb") as fh:
                    fh.seek(pos)
                    data = fh.read(st.st_size - pos)
                if shown != path and (shown is not None or kind in ("all", "service", "launcher")):
                    sys.stdout.write(f"\n==> {path} <==\n")
                sys.stdout.write(data.decode(errors="replace"))
                sys.stdout.flush()
                shown, pos = path, st.st_size
            offsets[path] = (st.st_ino, pos)
        time.sleep(POLL_SECONDS)
