"""Django database backend for a Balsam DB: PostgreSQL whose address is resolved at connect time.

Settings name no host or port. Each new connection reads ``server-info`` of the active DB
(:func:`balsam.db.settings.active_path`), so importing Django models does no work, and a client
that reconnects after the server moved to another port or node finds it.
"""
from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base as pg
from django.db.utils import OperationalError

from balsam.db import connect as balsam_connect
from balsam.errors import BalsamError, DatabaseUnavailable


class ServerUnavailable(DatabaseUnavailable, OperationalError):
    """The server cannot be reached: a Balsam error for the CLI, an OperationalError for Django."""


class DatabaseWrapper(pg.DatabaseWrapper):
    """PostgreSQL wrapper with Balsam's connection parameters."""

    def get_connection_params(self) -> dict[str, Any]:
        from balsam.db.settings import active_path

        params = super().get_connection_params()
        try:
            db_path = active_path()
            resolved = balsam_connect.connection_params(db_path, application_name="balsam-orm")
        except BalsamError as exc:  # no active DB, server stopped: Django tools see OperationalError
            raise ServerUnavailable(str(exc))
        params.update(resolved)
        params.pop("database", None)
        self._balsam_params = (db_path, resolved)
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        import psycopg2

        try:
            return super().get_new_connection(conn_params)
        except psycopg2.OperationalError as exc:
            db_path, resolved = getattr(self, "_balsam_params", ("?", conn_params))
            raise ServerUnavailable(balsam_connect.explain_connect_error(db_path, resolved, exc))
