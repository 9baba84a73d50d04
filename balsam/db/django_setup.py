"""Django settings built in code, for library use, the CLI and tests alike.

Nothing is read at import time. :func:`ensure_django` configures Django once per process (no
database connection: the backend resolves the server when it first connects). The active DB is
``BALSAM_DB_PATH``, read when a connection is made, unless :func:`use_database` named one.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

from balsam.db.serverinfo import active_db_path

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


def allow_orm_in_notebook() -> bool:
    """Let Django's ORM run in a Jupyter/IPython cell; True if this process is such a shell.

    An IPython kernel runs every cell inside its asyncio event loop, and Django refuses any ORM
    call made while a loop runs in the calling thread (``SynchronousOnlyOperation``), so no
    documented Balsam call would work in a notebook. The refusal guards async code from blocking
    its loop; a notebook cell blocks the loop anyway, and its ORM connection belongs to the one
    thread cells run in, so the guard protects nothing there. Django's only switch is the
    ``DJANGO_ALLOW_ASYNC_UNSAFE`` variable: it is set here on the user's behalf, only in a process
    where an IPython shell is active (``get_ipython()``), never in scripts, launchers or other
    asyncio programs, and a value the user set is kept.
    """
    if "IPython" not in sys.modules:  # never import IPython: a script must not pay for it
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    if get_ipython() is None:
        return False
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    return True


def ensure_django() -> None:
    """Configure Django with Balsam's settings and load the apps, once; cheap when done.

    In an IPython shell the ORM is allowed in cells (:func:`allow_orm_in_notebook`). The
    PostgreSQL driver is chosen later, when Django creates its first connection object
    (:mod:`balsam.db.backend.base`).
    """
    from django.apps import apps
    from django.conf import settings

    allow_orm_in_notebook()
    if not settings.configured:
        settings.configure(**django_settings())
    if not apps.ready and not apps.loading:
        import django

        django.setup(set_prefix=False)
