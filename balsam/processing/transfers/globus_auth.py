"""Globus Auth for Balsam's Globus Transfer backend: login without a browser, tokens owner-only.

``balsam globus login`` runs the native-app flow (PKCE): it prints a URL, the user opens it in any
browser (a laptop will do), logs in and pastes back the code once. The refresh token that comes
back is stored under the DB directory in ``<DB>/globus/tokens.json`` (file 0600, directory 0700)
and every later use refreshes the access token through it, rewriting the file atomically.

globus-sdk is an optional dependency (``pip install 'balsam-classic[globus]'``): it is imported by
:func:`sdk`, never at module import, and its absence is one clear error.
"""
from __future__ import annotations

import json
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional

from balsam.errors import BalsamError

TOKEN_FILE = "tokens.json"
TRANSFER_RESOURCE_SERVER = "transfer.api.globus.org"
TRANSFER_SCOPE = "urn:globus:auth:scope:transfer.api.globus.org:all"
LOGIN_HINT = "run `balsam globus login`"
_UUID = re.compile(r"[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}")


class GlobusError(BalsamError):
    """A Globus login, submission, poll or cancel failed; the message is one line."""


def sdk() -> Any:
    """The ``globus_sdk`` module, or :class:`GlobusError` saying how to install it."""
    try:
        import globus_sdk
    except ImportError:
        raise GlobusError("Globus transfers need globus-sdk: "
                          "pip install 'balsam-classic[globus]' (or pip install globus-sdk)") from None
    return globus_sdk


def is_uuid(text: str) -> bool:
    """Whether ``text`` is a UUID (endpoints, collections, clients and tasks are named by one)."""
    return bool(_UUID.fullmatch(text))


def token_dir_for(db_path: str) -> str:
    """Where a DB directory keeps its Globus tokens (and the task item maps)."""
    return os.path.join(db_path, "globus")


def scopes(data_access: Sequence[str] = ()) -> str:
    """The Transfer scope, with a ``data_access`` dependency for each named collection (mapped
    GCSv5 collections that are not high-assurance need one; see the Globus Auth scope syntax)."""
    if not data_access:
        return TRANSFER_SCOPE
    deps = " ".join(f"*https://auth.globus.org/scopes/{c}/data_access" for c in data_access)
    return f"{TRANSFER_SCOPE}[{deps}]"


def private_dir(path: str) -> None:
    """Create ``path`` (and parents) if missing and make it owner-only (0700)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def write_private(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same directory, fsync, rename),
    mode 0600 from the first byte; a file system error is a one-line :class:`GlobusError`."""
    folder = os.path.dirname(path)
    try:
        private_dir(folder)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")  # mode 0600
    except OSError as exc:
        raise GlobusError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise GlobusError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def save_tokens(token_dir: str, client_id: str, token: dict[str, Any]) -> None:
    """Store the Transfer token record (``access_token``, ``refresh_token``,
    ``expires_at_seconds``, ``scope``) issued to ``client_id``."""
    record = {"client_id": client_id, "resource_server": TRANSFER_RESOURCE_SERVER,
              "access_token": token["access_token"], "refresh_token": token["refresh_token"],
              "expires_at_seconds": int(token["expires_at_seconds"]),
              "scope": token.get("scope", TRANSFER_SCOPE), "saved_at": int(time.time())}
    write_private(os.path.join(token_dir, TOKEN_FILE), json.dumps(record, indent=1) + "\n")


def load_tokens(token_dir: str) -> dict[str, Any]:
    """The stored token record; :class:`GlobusError` if there is none, it is unreadable, or
    others can read it (like ssh, a token file open to the group or the world is refused)."""
    path = os.path.join(token_dir, TOKEN_FILE)
    try:
        mode = os.stat(path).st_mode
        with open(path) as fh:
            record = json.load(fh)
    except FileNotFoundError:
        raise GlobusError(f"no Globus login for this Balsam DB (no {path}): {LOGIN_HINT}") from None
    except (OSError, ValueError) as exc:
        raise GlobusError(f"cannot read the Globus tokens in {path} ({exc}): {LOGIN_HINT}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise GlobusError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}): "
                          f"chmod 600 it, or {LOGIN_HINT} again")
    if not isinstance(record, dict) or not record.get("refresh_token"):
        raise GlobusError(f"{path} holds no refresh token: {LOGIN_HINT}")
    return record


def login(token_dir: str, client_id: str, *, read_code: Callable[[str], str] = input,
          show: Callable[[str], None] = print, data_access: Sequence[str] = (),
          auth_client: Any = None) -> dict[str, Any]:
    """Run the native-app flow once: show the authorize URL, read the code the user pastes,
    exchange it for Transfer tokens (with a refresh token) and store them. Returns the record."""
    if not client_id.strip():
        raise GlobusError("no Globus client id: set transfers: globus_client_id in settings.yml "
                          "or pass --client-id (register a native app at app.globus.org)")
    for what, value in [("client id", client_id.strip())] + [("collection", c) for c in data_access]:
        if not is_uuid(value):
            raise GlobusError(f"the Globus {what} must be a UUID, not {value!r}")
    g = sdk()
    client = auth_client or g.NativeAppAuthClient(client_id.strip())
    # The named grant is how this login is listed among the user's Globus consents.
    client.oauth2_start_flow(requested_scopes=scopes(data_access), refresh_tokens=True,
                             prefill_named_grant=f"Balsam on {socket.gethostname()}")
    show("Open this URL in any browser, log in, and paste the authorization code below:")
    show(client.oauth2_get_authorize_url())
    try:
        code = read_code("Authorization code: ").strip()
    except EOFError:
        code = ""
    if not code:
        raise GlobusError("no authorization code was entered: run `balsam globus login` again")
    try:
        tokens = client.oauth2_exchange_code_for_tokens(code)
    except g.GlobusAPIError as exc:
        raise GlobusError(f"Globus rejected the authorization code ({api_error_text(exc)}): "
                          f"run `balsam globus login` again") from None
    except g.NetworkError as exc:
        raise GlobusError(f"cannot reach Globus Auth: {one_line(exc)}") from None
    token = tokens.by_resource_server.get(TRANSFER_RESOURCE_SERVER)
    if not token or not token.get("refresh_token"):
        raise GlobusError("Globus returned no Transfer refresh token: run `balsam globus login` again")
    save_tokens(token_dir, client_id.strip(), token)
    return load_tokens(token_dir)


def authorizer(token_dir: str, client_id: str, auth_client: Any = None) -> Any:
    """A ``RefreshTokenAuthorizer`` over the stored tokens that writes each refreshed token back
    (atomically). A refresh that Globus refuses surfaces, at the call that needed it, as an
    ``AuthAPIError`` that :func:`api_error` turns into "run `balsam globus login`"."""
    record = load_tokens(token_dir)
    issued_to = record.get("client_id")
    if client_id and issued_to and issued_to != client_id:
        raise GlobusError(f"the stored Globus tokens were issued to client {issued_to}, not "
                          f"{client_id} (transfers: globus_client_id): {LOGIN_HINT}")
    g = sdk()
    client = auth_client or g.NativeAppAuthClient(issued_to or client_id)

    def on_refresh(response: Any) -> None:
        fresh = dict(response.by_resource_server[TRANSFER_RESOURCE_SERVER])
        # Globus may rotate the refresh token; keep the old one only if none came back.
        fresh["refresh_token"] = fresh.get("refresh_token") or record["refresh_token"]
        record.update(fresh)
        save_tokens(token_dir, issued_to or client_id, fresh)

    return g.RefreshTokenAuthorizer(record["refresh_token"], client,
                                    access_token=record.get("access_token"),
                                    expires_at=record.get("expires_at_seconds"),
                                    on_refresh=on_refresh)


def logout(token_dir: str, auth_client: Any = None) -> Optional[str]:
    """Revoke the stored tokens with Globus (best effort) and delete the file. Returns a warning
    when the revocation could not be confirmed (the local tokens are deleted anyway)."""
    record = load_tokens(token_dir)
    g = sdk()
    client = auth_client or g.NativeAppAuthClient(record["client_id"])
    warning = None
    for key in ("refresh_token", "access_token"):
        try:
            if record.get(key):
                client.oauth2_revoke_token(record[key])
        except (g.GlobusAPIError, g.NetworkError) as exc:
            warning = f"could not revoke the {key.replace('_', ' ')} with Globus: {one_line(exc)}"
    os.unlink(os.path.join(token_dir, TOKEN_FILE))
    return warning


def describe(token_dir: str) -> str:
    """One line on the stored login: client id and until when the access token is valid."""
    record = load_tokens(token_dir)
    left = int(record.get("expires_at_seconds", 0)) - int(time.time())
    when = (f"access token valid {left // 60} more minutes" if left > 0
            else "access token expired (it is refreshed at the next use)")
    return f"logged in to Globus (client {record.get('client_id')}); {when}"


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's text (or its type name)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def api_error_text(exc: Any) -> str:
    """``HTTP-status code: message`` of a ``GlobusAPIError``, on one line."""
    lines = [ln.strip() for ln in str(getattr(exc, "message", "") or "").splitlines() if ln.strip()]
    message = lines[0] if lines else "no message"
    return f"{getattr(exc, 'http_status', '?')} {getattr(exc, 'code', '')}: {message}"


def api_error(exc: Exception, doing: str) -> GlobusError:
    """A :class:`GlobusError` for a globus-sdk exception raised while ``doing`` something:
    login problems (refused refresh, invalid token, missing consent) say to log in again."""
    g = sdk()
    if isinstance(exc, g.NetworkError):
        return GlobusError(f"cannot reach Globus to {doing}: {one_line(exc)}")
    if isinstance(exc, g.AuthAPIError) or getattr(exc, "http_status", None) == 401:
        return GlobusError(f"the Globus login has expired or was revoked ({api_error_text(exc)}) "
                           f"while trying to {doing}: {LOGIN_HINT}")
    if getattr(exc, "code", "") == "ConsentRequired":
        return GlobusError(f"Globus needs more consent to {doing} ({api_error_text(exc)}): "
                           "run `balsam globus login --data-access COLLECTION_ID` for each mapped "
                           "collection")
    return GlobusError(f"Globus refused to {doing}: {api_error_text(exc)}")
