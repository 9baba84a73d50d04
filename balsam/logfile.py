"""The log file of a long-running Balsam process (launcher, service): one per process.

``<db>/log/<kind>_<YYYY-mm-dd_HHMMSS>_<pid>.log``, lines ``time|pid|LEVEL|message``, on a
logger of its own that does not propagate (two launchers or services in one test process never
mix their lines). Nothing happens at import.
"""
from __future__ import annotations

import datetime
import logging
import os

FORMAT = "%(asctime)s|%(process)d|%(levelname)s|%(message)s"


def open_log(db_path: str, kind: str) -> tuple[logging.Logger, logging.Handler, str]:
    """(logger, its file handler, the file's path); the caller removes and closes the handler."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    log_dir = os.path.join(db_path, "log")
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, f"{kind}_{stamp}_{os.getpid()}.log")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT))
    log = logging.getLogger(f"balsam.{kind}.{os.getpid()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)
    return log, handler, path
