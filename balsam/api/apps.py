"""``balsam.api.App``: the site apps registered in the classic app table.

An App is read from its ``core_applicationdefinition`` row (name, description, parameters,
source hash); ``App.objects.sync()`` loads ``<site>/apps/*.py`` and registers every app (a file
that fails is reported, the others still register).
"""
from __future__ import annotations

import json
from typing import Any, Optional

from balsam.api.sites import Site, registered_apps
from balsam.errors import NotFound
from balsam.site.loader import SiteApps


class App:
    """One registered site app."""

    objects: AppManager

    def __init__(self, site: Site, name: str, description: str, parameters: dict[str, Any],
                 source_hash: str) -> None:
        self.site_id = site.site_id
        self.name = name
        self.description = description
        self.parameters = parameters
        """{name: default, or None for a required parameter}."""
        self.source_hash = source_hash

    @property
    def class_path(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"App({self.name!r}, parameters={self.parameters})"


class AppManager:
    """``App.objects``: ``all``, ``get(name=...)``, ``sync``."""

    def all(self, site_path: Optional[str] = None) -> list[App]:
        site = Site(site_path)
        return [App(site, r.name, r.description, json.loads(r.parameters or "{}"), r.source_hash)
                for r in registered_apps()]

    def get(self, site_path: Optional[str] = None, *, name: str) -> App:
        for app in self.all(site_path):
            if app.name == name:
                return app
        raise NotFound(f"no registered site app {name!r}")

    def sync(self, site_path: Optional[str] = None) -> SiteApps:
        """Load and register every app of the site's ``apps/`` folder."""
        return Site(site_path).sync_apps()


App.objects = AppManager()
