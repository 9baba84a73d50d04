"""Site apps as rows of the classic app table (``core_applicationdefinition``).

Registering a site app writes (or refreshes) the row named ``module.Class`` with its declared
parameters (JSON text), the SHA-256 of its source file, an empty ``executable`` (each job stores
its whole rendered command in ``args``), and as ``preprocess`` / ``postprocess`` the hook runner
command when the class overrides a hook that step runs -- so the classic processing steps run
the hooks, and a job whose app has no hooks moves through them without any subprocess. An app
with ``cleanup_files`` and no postprocess-step hook gets the stdlib-only cleanup script
(:mod:`balsam.processing.cleanup`) as ``postprocess`` instead of the hook runner. A
non-empty ``shell_preamble`` is written to ``<site>/apps/.preamble/<name>.sh`` and becomes the
row's ``envscript``, sourced before the command (and before the hooks).

The runner command is given by the caller (the client side, :mod:`balsam.api`, owns the runner),
so this module does not know the client. Works on any DB-API cursor (``%s`` parameters).
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence

from balsam.core import schema
from balsam.db.dbapi import Cursor
from balsam.errors import BalsamError
from balsam.site.app import AppDefinitionError
from balsam.site.loader import LoadedApp, apps_dir

PREAMBLE_DIR = ".preamble"
CLEANUP_MODULE = "balsam.processing.cleanup"
POSTPROCESS_HOOKS = ("postprocess", "handle_error", "handle_timeout")


class AppConflict(BalsamError):
    """A site app's name is taken by a classic app."""


def preamble_text(app: LoadedApp) -> str:
    """The app's ``shell_preamble()`` as text (evaluated without a job)."""
    try:
        value = app.cls(None).shell_preamble()
    except Exception as exc:  # noqa: BLE001 - user code: its failure is the app's error
        raise AppDefinitionError(f"{app.path}: app {app.name}: shell_preamble() raised "
                                 f"{type(exc).__name__}: {exc}")
    if isinstance(value, (list, tuple)):
        value = "\n".join(str(v) for v in value)
    if not isinstance(value, str):
        raise AppDefinitionError(f"{app.path}: app {app.name}: shell_preamble() must return a "
                                 "string or a list of strings")
    return value.strip()


def _write_preamble(site_path: str, app: LoadedApp) -> str:
    text = preamble_text(app)
    if not text:
        return ""
    folder = os.path.join(apps_dir(site_path), PREAMBLE_DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{app.name}.sh")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text + "\n")
    os.replace(tmp, path)
    return path


def app_row(site_path: str, app: LoadedApp, runner: str) -> dict[str, str]:
    """The app table row of a site app (``runner``: the hook runner command line, to which the
    step name is appended)."""
    cls = app.cls
    pre = cls.overrides("preprocess")
    post = any(cls.overrides(h) for h in POSTPROCESS_HOOKS)
    params = {p.name: (None if p.required else p.default) for p in cls.parameter_spec().values()}
    return {
        "name": app.name,
        "description": _description(app),
        "executable": "",
        "preprocess": f"{runner} preprocess" if pre else "",
        "envscript": _write_preamble(site_path, app),
        "postprocess": (f"{runner} postprocess" if post
                        else cleanup_command(cls.cleanup_files) if cls.cleanup_files else ""),
        "parameters": json.dumps(params, sort_keys=True, default=str),
        "source_hash": app.source_hash,
    }


def cleanup_command(patterns: Sequence[str], python: str = sys.executable) -> str:
    """The postprocess script of an app with ``cleanup_files`` and no postprocess-step hook:
    :mod:`balsam.processing.cleanup`, which imports only the standard library."""
    return " ".join([shlex.quote(python), "-m", CLEANUP_MODULE]
                    + [shlex.quote(p) for p in patterns])


def _description(app: LoadedApp) -> str:
    """``description``, else the first line of the class docstring."""
    if app.cls.description:
        return str(app.cls.description)
    lines = (app.cls.__doc__ or "").strip().splitlines()
    return lines[0] if lines else ""


def register(cursor: Cursor, site_path: str, app: LoadedApp, runner: str) -> dict[str, str]:
    """Insert or refresh the row of ``app``; returns it. :class:`AppConflict` if a classic app
    (no source hash) already has the name."""
    row = app_row(site_path, app, runner)
    cursor.execute(f"SELECT source_hash FROM {schema.APP_TABLE} WHERE name = %s FOR UPDATE",
                   [row["name"]])
    found = cursor.fetchone()
    if found is None:
        cols = ", ".join(row)
        cursor.execute(f"INSERT INTO {schema.APP_TABLE} ({cols}) VALUES "
                       f"({', '.join(['%s'] * len(row))})", list(row.values()))
        return row
    if not found[0]:
        raise AppConflict(f"app name {row['name']!r} is taken by a classic app (balsam app); "
                          "rename the class or its file")
    sets = ", ".join(f"{k} = %s" for k in row if k != "name")
    cursor.execute(f"UPDATE {schema.APP_TABLE} SET {sets} WHERE name = %s",
                   [v for k, v in row.items() if k != "name"] + [row["name"]])
    return row
