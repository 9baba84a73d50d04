"""Link a job's ``input_files`` from its parents' working directories (no database access).

For each parent, in the order given, and each space-separated glob pattern of the job's
``input_files`` (``*`` links everything but dot-files, as in a shell), every match in the
parent's working directory gets a symlink (to its absolute path) in the job's working
directory, named after the match's base name. A name already taken by something else (another
parent's file, staged-in data) gets the suffix ``_<first 8 characters of the parent id>``
(classic Balsam). A link that already exists and points to the same file is left alone, so a
retried stage-in is idempotent. A pattern that matches nothing, or a parent whose working
directory is gone, links nothing (classic behaviour: parents need not produce every file).
"""
from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Optional

from balsam.errors import BalsamError


class InputFilesError(BalsamError):
    """A parent's file cannot be linked: both its name and its suffixed name are taken."""


def link_input_files(workdir: str, patterns: str,
                     parents: Sequence[tuple[str, str]]) -> list[str]:
    """Symlink the files matching ``patterns`` in each ``(parent_id, parent_workdir)`` into
    ``workdir`` (created if missing); returns the names of the links created, in order
    (parents in the order given, each parent's matches sorted). Raises
    :class:`InputFilesError` when neither the plain nor the suffixed name is free.
    """
    words = patterns.split()
    if not words or not parents:
        return []
    os.makedirs(workdir, exist_ok=True)
    created = []
    for parent_id, parent_dir in parents:
        root = os.path.abspath(parent_dir)
        matches = sorted({os.path.normpath(path) for pattern in words
                          for path in glob.glob(os.path.join(glob.escape(root), pattern))})
        for target in matches:
            name = _link(workdir, target, str(parent_id)[:8])
            if name is not None:
                created.append(name)
    return created


def _link(workdir: str, target: str, suffix: str) -> Optional[str]:
    """Link ``target`` under its base name, or with ``_<suffix>`` if that is taken by another
    file; the name created, or None if a link to ``target`` already existed."""
    base = os.path.basename(target)
    names = [base, f"{base}_{suffix}"]
    for name in names:
        path = os.path.join(workdir, name)
        try:
            os.symlink(target, path)
            return name
        except FileExistsError:
            if os.path.islink(path) and os.readlink(path) == target:
                return None
    raise InputFilesError(f"cannot link {target} into {workdir}: {names[0]} and {names[1]} "
                          "both exist")
