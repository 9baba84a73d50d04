"""Loading site app classes from ``<site>/apps/*.py``.

Each file is imported on its own (as module ``balsam_site_apps.<site hash>.<stem>``, never
placed in ``sys.modules`` under its bare name, so two sites' ``demo.py`` do not collide). A file
that fails to import -- a syntax error, an exception at import time -- is recorded as one error
naming the file (and line) and does not stop the other files from loading. Every
:class:`~balsam.site.app.ApplicationDefinition` subclass *defined* in a file is an app, named
``<stem>.<ClassName>``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import traceback
from dataclasses import dataclass, field

from balsam.errors import BalsamError, NotFound
from balsam.site.app import AppDefinitionError, ApplicationDefinition

APPS_DIR = "apps"


class AppFileError(BalsamError):
    """A site app file that cannot be imported (syntax error, exception at import)."""


@dataclass
class LoadedApp:
    """One app class with where it came from."""

    name: str
    cls: type[ApplicationDefinition]
    path: str
    source_hash: str


@dataclass
class SiteApps:
    """What loading a site's ``apps/`` folder found: apps by name, and errors by file."""

    apps: dict[str, LoadedApp] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def apps_dir(site_path: str) -> str:
    return os.path.join(os.path.abspath(site_path), APPS_DIR)


def _source_hash(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def load_file(site_path: str, path: str) -> list[LoadedApp]:
    """The apps defined in one file (:class:`AppFileError` naming file and line if it cannot be
    imported, :class:`AppDefinitionError` if a class in it is invalid)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    site_key = hashlib.sha256(os.path.abspath(site_path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"balsam_site_apps.s{site_key}.{stem}", path)
    if spec is None or spec.loader is None:
        raise AppFileError(f"{path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        source_hash = _source_hash(path)
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise AppFileError(f"{path} line {exc.lineno}: syntax error: {exc.msg}")
    except OSError as exc:
        raise AppFileError(f"{path}: cannot read it: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001 - any failure of user code at import is its error
        line = _user_line(exc, path)
        raise AppFileError(f"{path}{line}: importing it raised {type(exc).__name__}: {exc}")
    found = []
    for obj in vars(module).values():
        if (isinstance(obj, type) and issubclass(obj, ApplicationDefinition)
                and obj is not ApplicationDefinition and obj.__module__ == module.__name__):
            name = f"{stem}.{obj.__name__}"
            try:
                obj.check()
            except AppDefinitionError as exc:
                raise AppDefinitionError(f"{path}: app {name}: {exc}")
            found.append(LoadedApp(name, obj, path, source_hash))
    return found


def _user_line(exc: BaseException, path: str) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    return f" line {frames[-1].lineno}" if frames else ""


def load_site(site_path: str) -> SiteApps:
    """Every app of the site; a file that fails is in ``errors`` and the others still load."""
    result = SiteApps()
    folder = apps_dir(site_path)
    if not os.path.isdir(folder):
        return result
    for entry in sorted(os.listdir(folder)):
        if not entry.endswith(".py") or entry.startswith((".", "_")):
            continue
        path = os.path.join(folder, entry)
        try:
            for app in load_file(site_path, path):
                result.apps[app.name] = app
        except (AppFileError, AppDefinitionError) as exc:
            result.errors[path] = str(exc)
    return result


def load_app(site_path: str, name: str) -> LoadedApp:
    """The app ``module.Class`` of the site, loading only its file. :class:`NotFound` if the
    file or class does not exist; the file's own error if it cannot be imported."""
    stem, dot, cls_name = name.partition(".")
    if not dot or not stem or not cls_name or "." in cls_name or os.sep in stem:
        raise NotFound(f"app name {name!r} must be module.Class (a class in "
                       f"{apps_dir(site_path)}/<module>.py)")
    path = os.path.join(apps_dir(site_path), f"{stem}.py")
    if not os.path.isfile(path):
        raise NotFound(f"no app file {path} for app {name!r}")
    for app in load_file(site_path, path):
        if app.name == name:
            return app
    raise NotFound(f"{path} defines no ApplicationDefinition subclass {cls_name!r}")
