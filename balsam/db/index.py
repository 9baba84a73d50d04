"""The per-user index of known Balsam DBs: ``~/.balsam/databases.json`` (a JSON list of paths).

Paths that no longer hold a Balsam DB are pruned whenever the index is read.
"""
from __future__ import annotations

import json
import os

from balsam.db import serverinfo
from balsam.errors import Ambiguous, NotFound


def index_path() -> str:
    return os.path.join(os.path.expanduser("~"), ".balsam", "databases.json")


def read() -> list[str]:
    try:
        with open(index_path()) as fh:
            paths = json.load(fh)
    except (OSError, ValueError):
        paths = []
    if not isinstance(paths, list):
        paths = []
    return [p for p in dict.fromkeys(str(p) for p in paths) if serverinfo.is_db_dir(p)]


def _write(paths: list[str]) -> None:
    path = index_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(paths, fh, indent=2)
    os.replace(tmp, path)


def register(db_path: str) -> None:
    """Add ``db_path`` (absolute, resolved) to the index if it is not there."""
    db_path = os.path.realpath(db_path)
    paths = read()
    if db_path not in paths:
        _write(paths + [db_path])


def resolve(name: str) -> str:
    """The DB path for ``name``: an indexed path, or the unique indexed path whose last component
    equals ``name``, or else the unique indexed path containing ``name``."""
    paths = read()
    full = os.path.realpath(os.path.expanduser(name))
    if full in paths or serverinfo.is_db_dir(full):
        return full
    for candidates in ([p for p in paths if os.path.basename(p) == name], [p for p in paths if name in p]):
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise Ambiguous(f"{name!r} matches several Balsam DBs: {', '.join(candidates)}")
    raise NotFound(f"no Balsam DB named {name!r} (known: {', '.join(paths) or 'none'}); "
                   "create one with `balsam init PATH`")
