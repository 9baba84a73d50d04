"""Link a job's ``input_files`` from its parents' working directories (no database access).

For each parent, in the order given, and each space-separated glob pattern of the job's
``input_files`` (``*`` links everything but dot-files, as in a shell), every match in the
parent's working directory gets a symlink (to its absolute path) in the job's working
directory, named after the match's base name. A base name that several parents provide (a
fan-in: 51 parents each writing ``result.json``) is linked for each of them as
``<first 8 characters of the parent id>_<name>`` (``3fa2b1c0_result.json``), so a reducer
globs ``*_result.json`` and the extension stays last; a name only one parent provides keeps
its base name, or gets the same prefix if something else (staged-in data) already has it.
(Classic Balsam appended ``_<id8>`` to the second and later parents' names, which defeated
``result*.json``.) A link that already exists and points to the same file is left alone, so a
retried stage-in is idempotent. A pattern that matches nothing, or a parent whose working
directory is gone, links nothing (classic behaviour: parents need not produce every file).

Links never reach outside: a pattern that is absolute or has a ``..`` component is refused
(jobs are checked when created, :func:`balsam.core.schema.check_input_patterns`; this catches
rows written otherwise), and every match's real path (symlinks resolved) must lie inside the
parent's working directory or one of ``trusted_roots`` (the DB's ``data`` directory, where
every job's default working directory lives, so a parent's own input links, which point at its
parents, pass on down a chain). Everything is checked before the first link is made: a refused
match links nothing and raises :class:`InputFilesError`.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Optional

from balsam.core import schema
from balsam.errors import BalsamError


class InputFilesError(BalsamError):
    """A parent's file cannot be linked: a pattern or a match leads outside the parent's working
    directory, or every name it may have is taken."""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _confined(target: str, root: str, trusted: Sequence[str], parent_id: str) -> str:
    """``target`` if its real path lies inside ``root``'s or a ``trusted`` directory's real
    path, else :class:`InputFilesError`."""
    real = os.path.realpath(target)
    if any(_inside(real, os.path.realpath(r)) for r in (root, *trusted)):
        return target
    raise InputFilesError(f"input file {target} of parent {parent_id[:8]} resolves to {real}, "
                          f"outside the parent's working directory {root}: nothing linked")


def link_input_files(workdir: str, patterns: str, parents: Sequence[tuple[str, str]],
                     trusted_roots: Sequence[str] = ()) -> list[str]:
    """Symlink the files matching ``patterns`` in each ``(parent_id, parent_workdir)`` into
    ``workdir`` (created if missing); returns the names of the links created, in order
    (parents in the order given, each parent's matches sorted). Raises
    :class:`InputFilesError` when a pattern or a match leads outside (see the module
    docstring; then nothing is linked) or no name it may have (see there) is free.
    """
    words = patterns.split()
    if not words or not parents:
        return []
    try:
        schema.check_input_patterns(patterns)
    except schema.FieldError as exc:
        raise InputFilesError(str(exc))
    planned = []
    for parent_id, parent_dir in parents:
        root = os.path.abspath(parent_dir)
        matches = sorted({os.path.normpath(path) for pattern in words
                          for path in glob.glob(os.path.join(glob.escape(root), pattern))})
        planned += [(_confined(t, root, trusted_roots, str(parent_id)), str(parent_id)[:8])
                    for t in matches]
    providers: dict[str, set[str]] = {}
    for target, prefix in planned:
        providers.setdefault(os.path.basename(target), set()).add(prefix)
    os.makedirs(workdir, exist_ok=True)
    created = []
    for target, prefix in planned:
        base = os.path.basename(target)
        names = [f"{prefix}_{base}"] if len(providers[base]) > 1 else [base, f"{prefix}_{base}"]
        name = _link(workdir, target, names)
        if name is not None:
            created.append(name)
    return created


def _link(workdir: str, target: str, names: Sequence[str]) -> Optional[str]:
    """Link ``target`` under the first of ``names`` not taken by another file; the name
    created, or None if a link to ``target`` already existed under one of them."""
    for name in names:
        path = os.path.join(workdir, name)
        try:
            os.symlink(target, path)
            return name
        except FileExistsError:
            if os.path.islink(path) and os.readlink(path) == target:
                return None
    taken = " and ".join(names)
    raise InputFilesError(f"cannot link {target} into {workdir}: {taken} "
                          f"{'both exist' if len(names) > 1 else 'exists'}")
