"""Shared body of the recording fake copy programs in this directory (rsync, scp,
globus-url-copy).

Each fake appends one JSON line ``{"program", "argv", "pid"}`` to ``$BALSAM_FAKE_TRANSFER_LOG``,
then copies its sources into its destination on this machine: a ``[user@]host:`` prefix is
stripped from rsync/scp paths, ``gsiftp://host`` and ``file://`` from URLs. A directory source
is copied as a subdirectory, or its contents when the source ends with ``/`` (rsync and
globus-url-copy semantics). Test controls: ``BALSAM_FAKE_TRANSFER_SLEEP=S`` sleeps S seconds
first; ``BALSAM_FAKE_TRANSFER_FAIL=N`` writes two stderr lines and exits N without copying. An
unknown flag exits 97, a missing source 23 (rsync's "partial transfer" code).
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sys
import time
from typing import NoReturn


def fail(code: int, message: str) -> NoReturn:
    sys.stderr.write(f"{os.path.basename(sys.argv[0])} (fake): {message}\n")
    sys.exit(code)


def local_path(spec: str) -> str:
    """The path on this machine for a remote spec or URL."""
    match = re.match(r"(gsiftp|file)://[^/]*(/.*)$", spec)
    if match:
        return match.group(2)
    return re.sub(r"^[^/:]+:", "", spec)


def copy(source: str, dest: str) -> None:
    """Copy ``source`` into directory ``dest`` (or to ``dest`` if it is not a directory)."""
    paths = sorted(glob.glob(source)) if re.search(r"[*?\[]", source) else [source]
    if not paths or not os.path.lexists(paths[0]):
        fail(23, f"link_stat {source!r} failed: No such file or directory (2)")
    for path in paths:
        if os.path.isdir(path) and path.endswith("/"):
            shutil.copytree(path, dest, symlinks=True, dirs_exist_ok=True)
        elif os.path.isdir(path):
            shutil.copytree(path, os.path.join(dest, os.path.basename(path)), symlinks=True,
                            dirs_exist_ok=True)
        elif os.path.isdir(dest):
            shutil.copy2(path, os.path.join(dest, os.path.basename(path)))
        else:
            shutil.copy2(path, dest)


def main(switches: frozenset[str], create_dirs_flag: str = "", creates_last_dir: bool = False) -> None:
    """Record argv, honour the test controls, then copy every source into the last argument.

    A destination ending in ``/`` is created with its parents when ``create_dirs_flag`` was
    given (globus-url-copy ``-cd``), or only its last component when ``creates_last_dir`` (as
    rsync does)."""
    args = sys.argv[1:]
    with open(os.environ["BALSAM_FAKE_TRANSFER_LOG"], "a") as log:
        log.write(json.dumps({"program": os.path.basename(sys.argv[0]), "argv": args,
                              "pid": os.getpid()}) + "\n")
    time.sleep(float(os.environ.get("BALSAM_FAKE_TRANSFER_SLEEP", "0")))
    code = int(os.environ.get("BALSAM_FAKE_TRANSFER_FAIL", "0"))
    if code:
        sys.stderr.write("connecting to remote host\npermission denied on remote side\n")
        sys.exit(code)
    flags = [a for a in args if a.startswith("-")]
    paths = [local_path(a) for a in args if not a.startswith("-")]
    for flag in flags:
        if flag not in switches:
            fail(97, f"unknown option {flag!r}")
    if len(paths) < 2:
        fail(97, "needs a source and a destination")
    *sources, dest = paths
    if create_dirs_flag and create_dirs_flag in flags and dest.endswith("/"):
        os.makedirs(dest, exist_ok=True)
    elif creates_last_dir and dest.endswith("/") and not os.path.isdir(dest):
        os.mkdir(dest)
    for source in sources:
        copy(source, dest)
