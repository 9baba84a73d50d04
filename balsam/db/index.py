"""The per-user index of known Balsam DBs: ``~/.balsam/databases.json`` (a JSON list of paths).

Paths that no longer hold a Balsam DB are pruned whenever the index is read. A file that is
not such a list is an error naming the file (it is never silently replaced: it may list DBs the
user still needs).
"""
from __future__ import annotations

import json
import os

from balsam.db import serverinfo
from balsam.errors import Ambiguous, BalsamError, NotFound


def index_path() -> str:
    """``~/.balsam/databases.json``."""
    return os.path.join(os.path.expanduser("~"), ".balsam", "databases.json")


def read() -> list[str]:
    """The indexed paths that still hold a Balsam DB; [] if there is no index yet (or it is empty).

    :class:`BalsamError` if the file cannot be read or is not a JSON list of paths.
    """
    path = index_path()
    try:
        with open(path) as fh:
            text = fh.read()
        paths = json.loads(text) if text.strip() else []  # an empty file lists nothing
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise BalsamError(f"cannot read the DB index {path}: {exc.strerror or exc}")
    except ValueError as exc:
        raise BalsamError(f"the DB index {path} is not valid JSON ({exc}): fix it, or remove it "
                          "and `balsam init PATH` each DB again to re-register it")
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise BalsamError(f"the DB index {path} is not a JSON list of paths: fix it, or remove "
                          "it and `balsam init PATH` each DB again to re-register it")
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
