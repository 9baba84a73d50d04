"""Django settings built in code, for library use, the CLI and tests alike.

Nothing is read at import time. :func:`ensure_django` configures Django once per process (no
database connection: the backend resolves the server when it first connects). The active DB is
``BALSAM_DB_PATH``, read when a connection is made, unless :func:`use_database` named one.
"""
from __future__ import annotations

import os
from typing import Any, Optional

_explicit_path: Optional[str] = None


def use_database(db_path: Optional[str]) -> None:
    """Point this process at ``db_path`` (overrides ``BALSAM_DB_PATH``); None to undo.

    Open connections are closed so the next query goes to the new database.
    """
    global _explicit_path
    _explicit_path = os.path.abspath(db_path) if db_path else None
    from django.conf import settings

    if settings.configured:
        from django.db import connections

        connections.close_all()


def active_path() -> str:
    """The DB directory this process talks to."""
    from balsam.db.serverinfo import active_db_path

    if _explicit_path:
        return _explicit_path
    return active_db_path()


def django_settings() -> dict[str, Any]:
    return {
        "INSTALLED_APPS": ["balsam.core.apps.CoreConfig"],
        "DATABASES": {
            "default": {
                "ENGINE": "balsam.db.backend",
                "NAME": "balsam",
                "CONN_MAX_AGE": None,
                "OPTIONS": {},
            }
        },
        "USE_TZ": True,
        "TIME_ZONE": "UTC",
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
        "LOGGING_CONFIG": None,
        "SECRET_KEY": "balsam-has-no-web-sessions-here",
    }


def ensure_django() -> None:
    """Configure Django with Balsam's settings and load the apps, once; cheap when done."""
    from django.apps import apps
    from django.conf import settings

    if not settings.configured:
        settings.configure(**django_settings())
    if not apps.ready and not apps.loading:
        import django

        django.setup(set_prefix=False)
