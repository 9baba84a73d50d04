"""Removing a finished run's scratch files: ``python -m balsam.processing.cleanup PATTERN...``.

A site app's ``cleanup_files`` (glob patterns, ``**`` recursive) name files to remove from the
job's working directory after a successful run. An app with a postprocess hook does it in the
hook runner (:mod:`balsam.api.hooks`) after the hook; an app with ``cleanup_files`` and no
postprocess-step hook gets this module as its postprocess script instead, which processing
runs in the job's working directory like any script. It imports nothing but the standard
library, so a job pays a bare interpreter start (~20 ms) instead of the hook runner's Django and
app imports (~0.4 s of CPU).
"""
from __future__ import annotations

import glob
import os
import sys
from collections.abc import Sequence
from typing import Optional


def remove_matching(workdir: str, patterns: Sequence[str]) -> int:
    """Remove the files in ``workdir`` matching ``patterns``, never outside it (a match whose
    real path leaves ``workdir``, e.g. through a symlink, is kept; directories are kept);
    returns how many were removed."""
    root = os.path.realpath(workdir)
    count = 0
    for pattern in patterns:
        for path in glob.glob(os.path.join(root, pattern), recursive=True):
            real = os.path.realpath(path)
            if real.startswith(root + os.sep) and os.path.isfile(real):
                os.remove(real)
                count += 1
    return count


def summary(removed: int) -> str:
    """What the log says about a cleanup."""
    return f"removed {removed} file(s) matching cleanup_files" if removed else ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Remove the matches of the patterns in argv from the current directory; exit 0, or 1
    (with the reason) if a file cannot be removed."""
    patterns = list(sys.argv[1:] if argv is None else argv)
    try:
        removed = remove_matching(os.getcwd(), patterns)
    except OSError as exc:
        print(f"balsam cleanup: cannot remove {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"# cleanup_files {' '.join(patterns)}: {summary(removed) or 'nothing to remove'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
