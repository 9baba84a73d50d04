"""Read and write a DB directory's ``server-info`` file.

``server-info`` is JSON readable by everyone who shares the DB (it holds no secret): where the
server listens (``host``, ``port``; empty while stopped), who owns it, and which PostgreSQL
binaries run it. Writes are atomic (temporary file + rename) so readers never see half a file.
"""
from __future__ import annotations

import json
import os
from typing import Any

from balsam.errors import NoActiveDatabase

FILENAME = "server-info"
DATABASE_NAME = "balsam"


def path_of(db_path: str) -> str:
    return os.path.join(db_path, FILENAME)


def read(db_path: str) -> dict[str, Any]:
    """Return the server-info dict of ``db_path``; :class:`NoActiveDatabase` if there is none."""
    try:
        with open(path_of(db_path)) as fh:
            info = json.load(fh)
    except FileNotFoundError:
        raise NoActiveDatabase(f"{db_path} is not a Balsam DB (no {FILENAME} file)")
    except (OSError, ValueError) as exc:
        raise NoActiveDatabase(f"cannot read {path_of(db_path)}: {exc}")
    if not isinstance(info, dict):
        raise NoActiveDatabase(f"{path_of(db_path)} is corrupt (not a JSON object)")
    _check(info, path_of(db_path))
    return info


def _check(info: dict[str, Any], where: str) -> None:
    """Where the server listens must be usable as it is: ``port`` empty (stopped) or a TCP
    port, ``host`` a string (a one-line error naming the key and the file otherwise)."""
    port = info.get("port")
    if port not in (None, "", 0) and (isinstance(port, bool) or not isinstance(port, int)
                                       or not 1 <= port <= 65535):
        raise NoActiveDatabase(f"{where}: `port` must be a whole number from 1 to 65535, "
                               f"not {port!r}")
    if not isinstance(info.get("host") or "", str):
        raise NoActiveDatabase(f"{where}: `host` must be a string, not {info['host']!r}")


def write(db_path: str, info: dict[str, Any]) -> None:
    """Atomically replace server-info with ``info`` (mode 0644)."""
    import tempfile  # here: every CLI command reads server-info, few write it (~1.5 ms)

    fd, tmp = tempfile.mkstemp(prefix=".server-info.", dir=db_path)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path_of(db_path))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def update(db_path: str, **changes: Any) -> dict[str, Any]:
    """Read, apply ``changes`` and write back; returns the new dict."""
    info = read(db_path)
    info.update(changes)
    write(db_path, info)
    return info


def is_db_dir(path: str) -> bool:
    return os.path.isfile(path_of(path)) and os.path.isdir(os.path.join(path, "balsamdb"))


def active_db_path() -> str:
    """The active DB directory from ``BALSAM_DB_PATH``, checked; read at call time, never at import."""
    path = os.environ.get("BALSAM_DB_PATH", "").strip()
    if not path:
        raise NoActiveDatabase(
            "no Balsam DB is active: run `source balsamactivate NAME` (or set BALSAM_DB_PATH)"
        )
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path_of(path)):
        raise NoActiveDatabase(f"BALSAM_DB_PATH={path} is not a Balsam DB directory (no server-info)")
    return path
