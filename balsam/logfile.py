"""The log file of a long-running Balsam process (launcher, service): one per process.

``<db>/log/<kind>_<YYYY-mm-dd_HHMMSS>_<pid>.log``, lines ``time|pid|LEVEL|message``, on a
logger of its own that does not propagate (two launchers or services in one test process never
mix their lines). Nothing happens at import.
"""
from __future__ import annotations

import datetime
import logging
import os

from balsam.errors import BalsamError

FORMAT = "%(asctime)s|%(process)d|%(levelname)s|%(message)s"


def open_log(db_path: str, kind: str) -> tuple[logging.Logger, logging.Handler, str]:
    """(logger, its file handler, the file's path); the caller removes and closes the handler.

    :class:`BalsamError` if the log directory cannot be made or written (e.g. ``log`` is a file).
    """
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    log_dir = os.path.join(db_path, "log")
    path = os.path.join(log_dir, f"{kind}_{stamp}_{os.getpid()}.log")
    try:
        os.makedirs(log_dir, exist_ok=True)
        handler = logging.FileHandler(path)
    except OSError as exc:
        what = "is not a directory" if os.path.lexists(log_dir) and not os.path.isdir(log_dir) \
            else f"cannot be written: {exc.strerror or exc}"
        raise BalsamError(f"the log directory {log_dir} {what}")
    handler.setFormatter(logging.Formatter(FORMAT))
    log = logging.getLogger(f"balsam.{kind}.{os.getpid()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    return log, handler, path
