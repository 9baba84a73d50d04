"""Local copies (``local:``, ``file://``, bare paths), the items of a batch in parallel threads.

Stage-in copies what the source names into the job's working directory with the classic rules
(:func:`balsam.processing.transfer.stage_in`: a glob copies every match, a directory arrives as
a subdirectory); stage-out copies one file or directory into its destination directory (created
when its parent exists). A transfer slot's item (``item.slot``) is copied to exactly its
destination path, under that name.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from balsam.processing import transfer
from balsam.processing.transfers import Context, Item, Result


def send(items: Sequence[Item], ctx: Context) -> dict[int, Result]:
    """Copy every item; its :class:`Result` by item id."""
    with ThreadPoolExecutor(max_workers=max(1, min(ctx.threads, len(items)))) as pool:
        results = list(pool.map(lambda item: _one(item, ctx.timeout), items))
    return {item.id: result for item, result in zip(items, results)}


def _one(item: Item, timeout: float) -> Result:
    try:
        if item.slot:
            return _exact(item)
        if item.direction == "in":
            arrived = transfer.stage_in(f"local:{item.source}", item.destination, timeout=timeout)
            return Result(files=len(arrived),
                          size=sum(size_of(os.path.join(item.destination, a)) for a in arrived))
        dest = transfer.local_destination(item.destination, f"stage-out to {item.destination}")
        target = os.path.join(dest, os.path.basename(item.source))
        if os.path.isdir(item.source):
            shutil.copytree(item.source, target, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(item.source, target)
        return Result(size=size_of(target))
    except transfer.TransferError as exc:
        return Result(str(exc), final=not os.path.lexists(os.path.expanduser(item.source)))
    except OSError as exc:
        return Result(f"copy of {item.source} to {item.destination} failed: "
                      f"{exc.strerror or exc}")


def _exact(item: Item) -> Result:
    """Copy a slot item's source (a file, or a directory: its tree) to exactly its
    destination path; the parent of a stage-out's destination directory must exist."""
    source = os.path.expanduser(item.source.rstrip("/") or "/")
    target = item.destination
    what = (f"stage-in from {item.source}" if item.direction == "in"
            else f"stage-out to {item.destination}")
    if not os.path.lexists(source):
        return Result(f"{what}: {item.source} does not exist", final=True)
    if item.direction == "in":
        os.makedirs(os.path.dirname(target), exist_ok=True)
    else:
        transfer.local_destination(os.path.dirname(target), what)
    if os.path.isdir(source):
        shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)
    return Result(size=size_of(target))


def size_of(path: str) -> int:
    """Bytes of a file, or of every file under a directory (symlinks not followed)."""
    try:
        if not os.path.isdir(path) or os.path.islink(path):
            return os.lstat(path).st_size
    except OSError:
        return 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total
