"""Where database passwords live, and which role a client connects as.

* The owner's superuser password is generated at ``balsam init`` and kept in
  ``<db>/.auth/<role>`` (directory 0700, file 0600): only the owner can read it.
* ``balsam server --add-user NAME`` writes NAME's password to ``<db>/.auth/NAME`` for the owner to
  hand over; the collaborator stores it with ``balsam server --save-credential``, which keeps it in
  ``~/.balsam/credentials.json`` (0600), keyed by the DB's absolute path.
* ``BALSAM_DB_PASSWORD`` overrides both (batch systems that inject secrets).
"""
from __future__ import annotations

import json
import os
import pwd
from typing import Any, Optional

AUTH_DIR = ".auth"


def generate_password() -> str:
    import secrets  # ~5 ms (random, hmac, hashlib) that every CLI command reading a credential skipped

    return secrets.token_urlsafe(24)


def login_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry (containers): the login variables
        import getpass  # with termios: ~1 ms every CLI command would pay for this rare case

        return getpass.getuser()


def _user_store() -> str:
    return os.path.join(os.path.expanduser("~"), ".balsam", "credentials.json")


def write_db_credential(db_path: str, role: str, password: str) -> str:
    """Store ``role``'s password under ``<db>/.auth`` readable by the owner only; returns the path."""
    auth = os.path.join(db_path, AUTH_DIR)
    os.makedirs(auth, mode=0o700, exist_ok=True)
    os.chmod(auth, 0o700)
    path = os.path.join(auth, role)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    os.chmod(path, 0o600)
    return path


def remove_db_credential(db_path: str, role: str) -> None:
    try:
        os.unlink(os.path.join(db_path, AUTH_DIR, role))
    except FileNotFoundError:
        pass


def save_user_credential(db_path: str, role: str, password: str) -> str:
    """Remember ``role``/``password`` for ``db_path`` in ``~/.balsam/credentials.json`` (0600)."""
    store = _user_store()
    os.makedirs(os.path.dirname(store), mode=0o700, exist_ok=True)
    data = _read_user_store()
    data[os.path.abspath(db_path)] = {"user": role, "password": password}
    fd = os.open(store + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(store + ".tmp", store)
    return store


def _read_user_store() -> dict[str, dict[str, str]]:
    try:
        with open(_user_store()) as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def client_role(db_path: str, info: dict[str, Any]) -> str:
    """The role to connect as: ``BALSAM_USER``, else the owner's superuser role for the owner (and
    root), else a saved credential's user, else the login name."""
    env = os.environ.get("BALSAM_USER", "").strip()
    if env:
        return env
    if os.getuid() in (0, info.get("owner_uid")):
        return str(info.get("superuser") or login_name())
    saved = _read_user_store().get(os.path.abspath(db_path))
    if saved and saved.get("user"):
        return str(saved["user"])
    return login_name()


def client_password(db_path: str, role: str) -> Optional[str]:
    """The password for ``role`` on ``db_path``, or None (libpq then tries ``~/.pgpass``)."""
    env = os.environ.get("BALSAM_DB_PASSWORD")
    if env:
        return env
    try:
        with open(os.path.join(db_path, AUTH_DIR, role)) as fh:
            return fh.read().strip()
    except OSError:
        pass
    saved = _read_user_store().get(os.path.abspath(db_path))
    if saved and saved.get("user") == role:
        return str(saved.get("password", "")) or None
    return None
