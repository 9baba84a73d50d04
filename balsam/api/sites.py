"""``Site``: one Balsam database directory with an ``apps/`` folder, seen from the newer API.

A site's ``site_id`` is its absolute path (classic Balsam has no site table; the path is what
every process uses to find the database). Making a :class:`Site` points this process's Django
connection at it (:func:`balsam.db.django_setup.use_database`), so the managers of :mod:`balsam.api`
act on that database. Apps are loaded from ``apps/`` when first needed and registered in the
app table (:mod:`balsam.site.registry`) in their own transaction.
"""
from __future__ import annotations

import os
import shlex
import sys
from typing import Any, Optional

from balsam.core.models import ApplicationDefinition as AppRow
from balsam.db import dbsettings
from balsam.db.django_setup import active_path, use_database
from balsam.db.serverinfo import is_db_dir
from balsam.errors import NotFound
from balsam.site import loader, registry

HOOK_RUNNER = f"{shlex.quote(sys.executable)} -m balsam.api.hooks"
"""The command processing runs for a site app's hooks (the step name is appended)."""


class Site:
    """A site (see the module docstring). ``Site()`` is the active database
    (``BALSAM_DB_PATH``); ``Site("my-site")`` names one."""

    def __init__(self, site_path: Optional[str] = None) -> None:
        path = os.path.abspath(site_path) if site_path else active_path()
        if not is_db_dir(path):
            raise NotFound(f"{path} is not a Balsam site (create one with `balsam site init "
                           f"{site_path or path}`)")
        self.site_path = path
        self.activate()

    def activate(self) -> None:
        """Point this process's Django connection at this site (if it is not already)."""
        if _current.get("path") != self.site_path:
            use_database(self.site_path)
            _current["path"] = self.site_path

    @property
    def site_id(self) -> str:
        return self.site_path

    @property
    def data_path(self) -> str:
        """Where jobs' working directories are (``workdir`` is relative to it)."""
        return os.path.join(self.site_path, "data")

    def gpus_per_node(self) -> int:
        """``gpus_per_node`` of the site's settings.yml (read again when the file changes)."""
        return int(self.settings()["gpus_per_node"])

    def transfer_locations(self) -> dict[str, str]:
        """The endpoint aliases of transfer slots (settings.yml ``transfers: locations:``)."""
        return dict(self.settings()["transfers"]["locations"])

    def settings(self) -> dict[str, Any]:
        """The site's settings.yml, checked (kept while the file is unchanged)."""
        path = os.path.join(self.site_path, "settings.yml")
        try:
            stamp: Optional[int] = os.stat(path).st_mtime_ns
        except OSError:
            stamp = None
        cached = _settings.get(self.site_path)
        if cached is None or cached[0] != stamp:
            cached = (stamp, dbsettings.load(self.site_path))
            _settings[self.site_path] = cached
        return cached[1]

    def load_apps(self) -> loader.SiteApps:
        """Every app in ``apps/`` and every file that failed (none registered)."""
        return loader.load_site(self.site_path)

    def app(self, name: str) -> loader.LoadedApp:
        """The app ``module.Class``, loaded and registered (cached while its file is unchanged)."""
        key = (self.site_path, name)
        path = os.path.join(loader.apps_dir(self.site_path), f"{name.partition('.')[0]}.py")
        try:
            st = os.stat(path)
            stamp: Optional[tuple[int, int]] = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        cached = _loaded.get(key)
        if stamp is not None and cached is not None and cached[0] == stamp:
            found = cached[1]  # creating many jobs imports the file once
        else:
            found = loader.load_app(self.site_path, name)
            _loaded[key] = (stamp, found)
        if _registered.get(key) != found.source_hash:
            register_app(self.site_path, found)
            _registered[key] = found.source_hash
        return found

    def sync_apps(self) -> loader.SiteApps:
        """Load and register every app of ``apps/``; returns what loaded and what failed."""
        result = self.load_apps()
        for app in result.apps.values():
            try:
                register_app(self.site_path, app)
                _registered[(self.site_path, app.name)] = app.source_hash
            except registry.AppConflict as exc:
                result.errors[app.path] = str(exc)
        return result

    def __repr__(self) -> str:
        return f"Site({self.site_path!r})"


def register_app(site_path: str, app: loader.LoadedApp) -> dict[str, str]:
    """Write the app table row of ``app`` in its own transaction."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cur:
        return registry.register(cur, site_path, app, HOOK_RUNNER)


def site_for(site_path: Optional[str] = None, site_id: Optional[Any] = None) -> Site:
    """The site a call names by ``site_path`` or ``site_id`` (the same thing here)."""
    if site_path and site_id and os.path.abspath(str(site_path)) != os.path.abspath(str(site_id)):
        raise NotFound(f"site_path {site_path!r} and site_id {site_id!r} name different sites")
    return Site(site_path or (str(site_id) if site_id else None))


def registered_apps() -> list[AppRow]:
    """The app table rows of site apps (those with a source hash), by name."""
    return list(AppRow.objects.exclude(source_hash="").order_by("name"))


def forget_apps() -> None:
    """Forget which apps this process loaded and registered (the next use reloads them)."""
    _loaded.clear()
    _registered.clear()


_current: dict[str, str] = {}
_loaded: dict[tuple[str, str], tuple[Optional[tuple[int, int]], loader.LoadedApp]] = {}
_registered: dict[tuple[str, str], str] = {}
_settings: dict[str, tuple[Optional[int], dict[str, Any]]] = {}
