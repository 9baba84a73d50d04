"""rsync and scp over SSH: one SSH connection per batch, whatever its number of items.

**rsync** stage-in: one ``rsync -a -r --files-from=LIST host:/ STAGING/`` brings every item's
source (a file or a directory) into the batch's staging directory under its full path, then
each item is moved (or, when several jobs want the same source, copied) into its job's working
directory; a source that did not arrive fails its item with rsync's line about it. Stage-out
mirrors the destinations as symlinks under the staging directory and sends them with one
``rsync -a -r -L --files-from=LIST STAGING/ host:/``. Paths relative to the remote home go in a
second list rooted at ``host:``. rsync is idempotent: a batch sent again after a crash costs
only the files not yet there.

**scp** has no file list, so a batch's scp commands share one SSH connection
(``ControlMaster``), closed when the batch ends.

A source with glob characters is sent on its own (through the classic per-URL copy), over the
same connection for scp. A transfer slot's item (``item.slot``) names an exact destination: it
is placed (stage-in) or sent (stage-out) under that path's name, and its source is never a glob.
``ctx.ssh_config_file`` (settings ``transfers.ssh_config_file``) becomes ``ssh -F``.
"""
from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Sequence

from balsam.processing import transfer
from balsam.processing.transfers import Context, Item, Result
from balsam.processing.transfers.local import size_of

_GLOB = ("*", "?", "[")


def send(items: Sequence[Item], ctx: Context) -> dict[int, Result]:
    """Send a batch (all items share one endpoint and direction); a :class:`Result` per item."""
    opts = ["-F", ctx.ssh_config_file] if ctx.ssh_config_file else []
    endpoint = items[0].endpoint
    results: dict[int, Result] = {}
    control = ""  # scp's shared connection socket (rsync needs none: a kill leaves no directory)
    if ctx.protocol == "scp":
        control = tempfile.mkdtemp(prefix="balsam-ssh-")  # short: a socket path has ~100 bytes
        opts += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control}/cm",
                 "-o", "ControlPersist=120"]
    ssh = ["ssh", *opts]
    try:
        plain = [i for i in items if i.slot or not any(c in i.source for c in _GLOB)]
        for item in items:
            if item not in plain:
                results[item.id] = _single(item, ctx, opts)
        if plain and ctx.protocol == "rsync":
            results.update(_rsync(plain, ctx, ssh, endpoint))
        elif plain:
            for item in plain:
                results[item.id] = _single(item, ctx, opts)
    finally:
        if control and endpoint and os.path.exists(f"{control}/cm"):
            try:
                transfer.run_argv([*ssh, "-O", "exit", endpoint], 30, None, "closing scp's link")
            except transfer.TransferError:
                pass
        if control:
            shutil.rmtree(control, ignore_errors=True)
    return results


def _remote(endpoint: str, path: str) -> str:
    return f"{endpoint}:{path}" if endpoint else path


def _single(item: Item, ctx: Context, opts: list[str]) -> Result:
    """One item by itself: with scp, or with the classic per-URL rsync (a glob)."""
    ssh = ["ssh", *opts]
    env = dict(os.environ, RSYNC_RSH=shlex.join(ssh))
    try:
        if ctx.protocol == "scp":
            return _scp_one(item, ctx, opts)
        if item.direction == "in":
            arrived = transfer.stage_in(f"rsync:{_remote(item.endpoint, item.source)}",
                                        item.destination, timeout=ctx.timeout, env=env)
            return Result(files=len(arrived))
        transfer.run_argv(["rsync", "-a", "-e", shlex.join(ssh), item.source,
                           _remote(item.endpoint, item.destination.rstrip("/") + "/")],
                          ctx.timeout, env, f"stage-out to {item.destination}")
        return Result(size=size_of(item.source))
    except transfer.TransferError as exc:
        return Result(str(exc), final="No such file" in str(exc))


def _scp_one(item: Item, ctx: Context, opts: list[str]) -> Result:
    """scp one item over the batch's shared connection (``opts``: -F and -o options)."""
    if item.slot:
        return _scp_exact(item, ctx, opts)
    if item.direction == "in":
        os.makedirs(item.destination, exist_ok=True)
        before = set(os.listdir(item.destination))
        transfer.run_argv(["scp", "-p", "-r", *opts, _remote(item.endpoint, item.source),
                           item.destination + "/"], ctx.timeout, None,
                          f"stage-in from {_remote(item.endpoint, item.source)}")
        arrived = set(os.listdir(item.destination)) - before
        name = os.path.basename(item.source.rstrip("/"))
        return Result(files=len(arrived) or 1,
                      size=size_of(os.path.join(item.destination, name)))
    transfer.run_argv(["scp", "-p", "-r", *opts, item.source,
                       _remote(item.endpoint, item.destination.rstrip("/") + "/")],
                      ctx.timeout, None, f"stage-out to {item.destination}")
    return Result(size=size_of(item.source))


def _scp_exact(item: Item, ctx: Context, opts: list[str]) -> Result:
    """scp a slot item to exactly its destination path."""
    if item.direction == "in":
        target = item.destination
        _clear(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        transfer.run_argv(["scp", "-p", "-r", *opts, _remote(item.endpoint, item.source.rstrip("/")),
                           target], ctx.timeout, None,
                          f"stage-in from {_remote(item.endpoint, item.source)}")
        return Result(size=size_of(target))
    transfer.run_argv(["scp", "-p", "-r", *opts, item.source,
                       _remote(item.endpoint, item.destination)],
                      ctx.timeout, None, f"stage-out to {item.destination}")
    return Result(size=size_of(item.source))


def _clear(target: str) -> None:
    """Remove a directory left at ``target`` by an earlier attempt (the new copy wins; a copy
    onto an existing directory would land inside it)."""
    if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target)


def _rsync(items: Sequence[Item], ctx: Context, ssh: list[str], endpoint: str
           ) -> dict[int, Result]:
    results: dict[int, Result] = {}
    for root in ("/", ""):
        group = [i for i in items if (i.source if i.direction == "in" else i.destination)
                 .startswith("/") == (root == "/")]
        if group:
            stage = tempfile.mkdtemp(prefix=f"{'abs' if root else 'home'}-", dir=ctx.staging)
            fn = _rsync_in if group[0].direction == "in" else _rsync_out
            results.update(fn(group, ctx, ssh, _remote(endpoint, root), stage))
    return results


def _rsync_in(items: Sequence[Item], ctx: Context, ssh: list[str], remote_root: str,
              stage: str) -> dict[int, Result]:
    paths = sorted({_rel(i.source) for i in items})
    listing = os.path.join(ctx.staging, "files-in.txt")
    with open(listing, "w") as fh:
        fh.write("".join(p + "\n" for p in paths))
    error = _rsync_run(["rsync", "-a", "-r", "--no-implied-dirs", "-e", shlex.join(ssh),
                        f"--files-from={listing}", remote_root, stage + "/"], ctx,
                       f"stage-in from {remote_root}")
    users: dict[str, int] = {}
    for i in items:
        users[i.source] = users.get(i.source, 0) + 1
    results = {}
    for item in items:
        rel = _rel(item.source)
        staged = os.path.join(stage, rel)
        if not os.path.lexists(staged):
            line = next((ln.strip() for ln in error.splitlines()[1:] if rel in ln), "")
            summary = error.splitlines()[0] if error else ""
            results[item.id] = Result(
                f"stage-in from {_remote(item.endpoint, item.source)}: "
                + (line or summary or "did not arrive"), final="No such file" in line)
            continue
        results[item.id] = _place(staged, item, last=users[item.source] == 1)
        users[item.source] -= 1
    return results


def _rel(path: str) -> str:
    """A source path relative to its root ("/" or the remote home, ``~/`` dropped)."""
    return (path[2:] if path.startswith("~/") else path).lstrip("/").rstrip("/")


def _place(staged: str, item: Item, last: bool) -> Result:
    """Move (the last user) or copy a staged source into the item's working directory (a
    slot item: to exactly its destination path)."""
    target = item.destination if item.slot else os.path.join(item.destination,
                                                              os.path.basename(staged))
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        _clear(target)  # a re-sent batch: the new copy wins
        if last:
            shutil.move(staged, target)  # a rename, or a copy across filesystems
        elif os.path.isdir(staged):
            shutil.copytree(staged, target, symlinks=True)
        else:
            shutil.copy2(staged, target)
    except OSError as exc:
        return Result(f"cannot place {os.path.basename(staged)} as {target}: "
                      f"{exc.strerror or exc}")
    return Result(size=size_of(target))


def _rsync_out(items: Sequence[Item], ctx: Context, ssh: list[str], remote_root: str,
               stage: str) -> dict[int, Result]:
    paths = []
    for item in items:
        rel = (_rel(item.destination) if item.slot
               else os.path.join(item.destination.lstrip("/"), os.path.basename(item.source)))
        os.makedirs(os.path.dirname(os.path.join(stage, rel)), exist_ok=True)
        link = os.path.join(stage, rel)
        if not os.path.lexists(link):
            os.symlink(item.source, link)
        paths.append(rel)
    listing = os.path.join(ctx.staging, "files-out.txt")
    with open(listing, "w") as fh:
        fh.write("".join(p + "\n" for p in sorted(set(paths))))
    # --no-implied-dirs: the directories above each file (the staging mirror's /, /tmp, /home,
    # ...) are not sent: with them, -a would set the remote ones' modes and owners to the
    # mirror's (a run as root turned the remote /tmp into 0755; a user's rsync fails on them)
    error = _rsync_run(["rsync", "-a", "-r", "-L", "--no-implied-dirs", "-e", shlex.join(ssh),
                        f"--files-from={listing}", stage + "/", remote_root],
                       ctx, f"stage-out to {remote_root}")
    summary = error.splitlines()[0] if error else ""
    return {i.id: Result(f"stage-out to {_remote(i.endpoint, i.destination)}: {summary}")
            if error else Result(size=size_of(i.source)) for i in items}


def _rsync_run(argv: list[str], ctx: Context, what: str) -> str:
    """Run rsync; "" on success, else its one-line failure followed by its stderr (a partial
    transfer, code 23 or 24, is sorted out per item by the caller)."""
    try:
        transfer.run_argv(argv, ctx.timeout, None, what)
        return ""
    except transfer.TransferError as exc:
        return f"{exc}\n{exc.stderr}"
