"""Data movement for stage-in and stage-out behind one small interface (no database access).

The protocol is chosen by the text before the first colon of the URL:

* a bare path, ``local:PATH`` or ``file:///PATH`` -> ``cp -p -r`` (``-H`` on stage-in: a named
  symlink is copied as what it points to; relative paths are relative to the current
  directory); the source may be a glob and must match something;
* ``rsync:SPEC`` -> ``rsync -a``; ``scp:SPEC`` (e.g. ``scp:user@host:/path``) -> ``scp -p -r``;
* ``gsiftp://...`` or ``globus:URL`` -> ``globus-url-copy -r`` (when installed).

Stage-in copies the named path itself: a directory arrives as a subdirectory of the working
directory, ``dir/*`` copies its contents. Stage-out sends the files matching the patterns, flat
(under their base names), into the destination directory.

Every command is an argv list (never a shell) run with a time limit in its own session (a
timeout kills the whole group, e.g. scp's ssh); any failure raises :class:`TransferError` with
one line naming the program, its exit code and the last line it wrote on stderr.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Optional

from balsam.core import jobenv
from balsam.errors import BalsamError
from balsam.platform.procgroup import kill_and_reap

LOCAL, RSYNC, SCP, GLOBUS = "local", "rsync", "scp", "globus"
_GLOB_CHARS = re.compile(r"[*?\[]")


class TransferError(BalsamError):
    """A stage-in or stage-out failed (bad URL, nothing to copy, a copy command failed).
    ``stderr``: what the copy program wrote on stderr ("" if none ran); ``code``: its exit
    code (None if it did not exit by itself)."""

    def __init__(self, message: str, stderr: str = "", code: Optional[int] = None) -> None:
        super().__init__(message)
        self.stderr = stderr
        self.code = code


def parse_url(url: str) -> tuple[str, str]:
    """(protocol, spec) for a stage-in/out URL; raises :class:`TransferError` if unsupported.

    ``spec`` is a local path for ``local``, the rsync/scp source or destination argument
    (``[user@]host:path`` or a path) for ``rsync``/``scp``, and a full URL for ``globus``.
    """
    url = url.strip()
    scheme, colon, rest = url.partition(":")
    if not url:
        raise TransferError("empty transfer URL")
    if not colon or "/" in scheme:
        return LOCAL, url
    if scheme == "local":
        return LOCAL, rest
    if scheme == "file":
        if not rest.startswith("//"):
            return LOCAL, rest
        host, slash, path = rest[2:].partition("/")
        if host not in ("", "localhost"):
            raise TransferError(f"{url}: file:// URLs must name a local path (file:///PATH)")
        return LOCAL, slash + path
    if scheme in (RSYNC, SCP):
        return scheme, rest
    if scheme == "gsiftp":
        return GLOBUS, url
    if scheme == "globus":
        return GLOBUS, rest
    raise TransferError(f"{url}: unsupported transfer scheme {scheme!r} "
                        "(use a path, local:, file://, rsync:, scp:, gsiftp:// or globus:)")


def stage_in(url: str, workdir: str, *, timeout: float,
             env: Optional[Mapping[str, str]] = None) -> list[str]:
    """Copy what ``url`` names into ``workdir`` (created if missing) within ``timeout`` seconds.

    Returns the names (relative to ``workdir``, sorted) of the top-level entries that arrived:
    exact for local copies and for a remote path without glob characters or trailing slash,
    otherwise the entries that are new or were rewritten. ``env`` is the environment of the copy
    command (default: this process's).
    """
    protocol, spec = parse_url(url)
    what = f"stage-in from {url}"
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as exc:
        raise TransferError(f"{what}: cannot create {workdir}: {exc.strerror}")
    dest = os.path.abspath(workdir)
    if protocol == LOCAL:
        sources = _local_matches(spec, what)
        run_argv(["cp", "-p", "-r", "-H", "--", *sources, dest + "/"], timeout, env, what)
        return sorted({os.path.basename(s.rstrip("/")) for s in sources})
    before = _snapshot(dest)
    if protocol == RSYNC:
        run_argv(["rsync", "-a", spec, dest + "/"], timeout, env, what)
    elif protocol == SCP:
        run_argv(["scp", "-p", "-r", spec, dest + "/"], timeout, env, what)
    else:
        run_argv(["globus-url-copy", "-r", spec, f"file://{dest}/"], timeout, env, what)
    path = spec.split(":", 1)[1] if protocol != GLOBUS and ":" in spec else spec
    name = os.path.basename(path)
    if name and not _GLOB_CHARS.search(path) and os.path.lexists(os.path.join(dest, name)):
        return [name]
    after = _snapshot(dest)
    return sorted(n for n, stamp in after.items() if before.get(n) != stamp)


def stage_out(workdir: str, patterns: str, url: str, *, timeout: float,
              env: Optional[Mapping[str, str]] = None) -> list[str]:
    """Send the files matching ``patterns`` (space-separated globs in ``workdir``) to ``url``.

    Returns the matched names relative to ``workdir`` (sorted); they arrive under their base
    names in the destination directory. Empty ``patterns`` sends nothing and returns [].
    Raises :class:`TransferError` when no pattern matches anything, when two matches share a
    base name, when a local destination's parent does not exist (the destination itself is
    created), or when the copy fails.
    """
    what = f"stage-out to {url}"
    if not patterns.split():
        return []
    protocol, spec = parse_url(url)
    root = os.path.abspath(workdir)
    matches = sorted({os.path.relpath(path, root)
                      for pattern in patterns.split()
                      for path in glob.glob(os.path.join(glob.escape(root), pattern))})
    if not matches:
        raise TransferError(f"{what}: the stage-out files {patterns!r} match nothing in {workdir}")
    sources = [os.path.join(root, m) for m in matches]
    names = [os.path.basename(s) for s in sources]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise TransferError(f"{what}: several stage-out files are named {clash[0]!r}")
    if protocol == LOCAL:
        run_argv(["cp", "-p", "-r", "--", *sources, local_destination(spec, what) + "/"],
             timeout, env, what)
    elif protocol in (RSYNC, SCP):
        argv = ["rsync", "-a"] if protocol == RSYNC else ["scp", "-p", "-r"]
        run_argv([*argv, *sources, spec.rstrip("/") + "/"], timeout, env, what)
    else:
        # globus-url-copy takes one source and one destination per call; -cd creates the
        # destination directories.
        for source, name in zip(sources, names):
            pair = ([f"file://{source}/", f"{spec.rstrip('/')}/{name}/"] if os.path.isdir(source)
                    else [f"file://{source}", f"{spec.rstrip('/')}/"])
            run_argv(["globus-url-copy", "-r", "-cd", *pair], timeout, env, what)
    return matches


def _local_matches(spec: str, what: str) -> list[str]:
    """Absolute paths the local source ``spec`` names (a glob must match something)."""
    path = os.path.abspath(os.path.expanduser(spec))
    if _GLOB_CHARS.search(spec):
        found = sorted(glob.glob(path))
    else:
        found = [path] if os.path.lexists(path) else []
    if not found:
        raise TransferError(f"{what}: {spec} does not exist" if not _GLOB_CHARS.search(spec)
                            else f"{what}: {spec} matches nothing")
    return found


def local_destination(spec: str, what: str) -> str:
    """The destination directory for a local stage-out, created if its parent exists."""
    path = os.path.abspath(os.path.expanduser(spec))
    if os.path.isdir(path):
        return path
    if os.path.lexists(path):
        raise TransferError(f"{what}: {spec} is not a directory")
    if not os.path.isdir(os.path.dirname(path)):
        raise TransferError(f"{what}: the parent directory of {spec} does not exist")
    try:
        os.mkdir(path)
    except OSError as exc:
        raise TransferError(f"{what}: cannot create {spec}: {exc.strerror}")
    return path


def _snapshot(directory: str) -> dict[str, tuple[int, int]]:
    """name -> (inode, ctime_ns) of each top-level entry of ``directory``: a copy that rewrites
    an entry changes its ctime even when it restores the mtime (``-p``)."""
    stamps = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            stamps[entry.name] = (st.st_ino, st.st_ctime_ns)
    return stamps


def run_argv(argv: Sequence[str], timeout: float, env: Optional[Mapping[str, str]],
             what: str) -> None:
    """Run ``argv`` with a time limit in a new session; TransferError on any failure.

    The program never sees Balsam's credentials (:func:`jobenv.without_credentials`): scp and
    rsync run the user's SSH configuration, which may run anything."""
    environ = jobenv.without_credentials(os.environ if env is None else env)
    program = argv[0]
    found = shutil.which(program, path=environ.get("PATH", os.defpath))
    if found is None:
        raise TransferError(f"{what}: {program} is not installed (not found on PATH)")
    try:
        proc = subprocess.Popen([found, *argv[1:]], env=environ, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, close_fds=True)
    except OSError as exc:
        raise TransferError(f"{what}: cannot run {program}: {exc.strerror or exc}")
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_and_reap(proc)
        raise TransferError(f"{what}: {program} timed out after {timeout:g} s")
    except BaseException:
        kill_and_reap(proc)
        raise
    if proc.returncode != 0:
        text = (err or out).decode("utf-8", "replace")
        lines = [ln.strip() for ln in text.splitlines()]
        last = next((ln for ln in reversed(lines) if ln), "(no error output)")
        raise TransferError(f"{what}: {program} exited with code {proc.returncode}: {last}",
                            text, proc.returncode)
