"""Django database backend for a Balsam DB: PostgreSQL whose address is resolved at connect time.

Settings name no host or port. Each new connection reads ``server-info`` of the active DB
(:func:`balsam.db.django_setup.active_path`), so importing Django models does no work, and a client
that reconnects after the server moved to another port or node finds it.

Django's PostgreSQL backend binds itself to one driver when it is imported, so it is imported
only when Django first asks for :class:`DatabaseWrapper` (when it creates the first connection
object), with the driver :mod:`balsam.db.driver` chooses then.
"""
from __future__ import annotations

from typing import Any

from django.db.utils import OperationalError

from balsam.db import connect as balsam_connect
from balsam.db import driver
from balsam.errors import BalsamError, DatabaseUnavailable


class ServerUnavailable(DatabaseUnavailable, OperationalError):
    """The server cannot be reached: a Balsam error for the CLI, an OperationalError for Django."""


def _wrapper_class() -> type:
    driver.load_django_backend()
    from django.db.backends.postgresql import base as pg

    class DatabaseWrapper(pg.DatabaseWrapper):
        """PostgreSQL wrapper with Balsam's connection parameters."""

        def get_connection_params(self) -> dict[str, Any]:
            from balsam.db.django_setup import active_path

            params = super().get_connection_params()
            try:
                db_path = active_path()
                resolved = balsam_connect.connection_params(db_path, application_name="balsam-orm")
            except BalsamError as exc:  # no active DB, server stopped: Django sees OperationalError
                raise ServerUnavailable(str(exc))
            params.update(resolved)
            params.pop("database", None)
            self._balsam_params = resolved
            return params

        def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
            try:
                return super().get_new_connection(conn_params)
            except pg.Database.OperationalError as exc:  # the loaded driver's (psycopg2 or 3)
                resolved = getattr(self, "_balsam_params", conn_params)
                raise ServerUnavailable(balsam_connect.explain_connect_error(resolved, exc))

    DatabaseWrapper.__module__ = __name__
    return DatabaseWrapper


def __getattr__(name: str) -> Any:
    """``DatabaseWrapper``, built on first use (see the module docstring)."""
    if name != "DatabaseWrapper":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    wrapper = globals()["DatabaseWrapper"] = _wrapper_class()
    return wrapper
