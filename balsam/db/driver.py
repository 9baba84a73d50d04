"""Which PostgreSQL driver the Django ORM uses (psycopg2 or psycopg 3), and the few driver-specific
operations Balsam performs on a cursor of either.

Django picks psycopg 3 whenever ``import psycopg`` succeeds. Balsam chooses instead, once per
process when Django is configured (:func:`balsam.db.django_setup.ensure_django`): the driver named by
``BALSAM_DB_DRIVER`` (``psycopg2`` or ``psycopg``), else :data:`DEFAULT_DRIVER`. Reading the
variable at bootstrap, not at import, lets one virtual environment with both drivers installed run
the same code (and the tests) under either.

The Django-free paths (CLI, launchers, the service: :mod:`balsam.db.connect`) always use psycopg2,
a hard dependency. :func:`copy_in` works on cursors of both drivers, and the rest of the SQL is
plain DB-API with ``%s`` parameters, so
:mod:`balsam.core.bulk`, :mod:`balsam.core.lifecycle` and the analytics run on either.
"""
from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

from balsam.db.dbapi import Cursor
from balsam.errors import BalsamError

ENV_VAR = "BALSAM_DB_DRIVER"
DRIVERS = ("psycopg2", "psycopg")
DEFAULT_DRIVER = "psycopg2"
"""psycopg2 unless ``BALSAM_DB_DRIVER`` says otherwise: on Balsam's workloads psycopg 3 is no
faster (benchmarks/bench_drivers.py, numbers in benchmarks/README.md) and psycopg2 is the driver
the CLI and launchers use anyway, so the ORM and they share one set of behaviours."""

_DJANGO_BACKEND = "django.db.backends.postgresql.base"
_DJANGO_DRIVER_MODULE = "django.db.backends.postgresql.psycopg_any"
_loading = threading.Lock()


class DriverError(BalsamError):
    """The requested PostgreSQL driver is unknown, not installed, or differs from the loaded one."""


def requested() -> str:
    """The driver this process should use: ``BALSAM_DB_DRIVER`` if set (``psycopg3`` is taken
    for ``psycopg``, the name of psycopg 3's module), else the default."""
    name = os.environ.get(ENV_VAR, "").strip() or DEFAULT_DRIVER
    if name == "psycopg3":
        name = "psycopg"
    if name not in DRIVERS:
        raise DriverError(f"{ENV_VAR}={name!r} is not a PostgreSQL driver Balsam knows: "
                          f"use one of {', '.join(DRIVERS)}")
    return name


def loaded() -> str | None:
    """The driver Django's PostgreSQL backend was loaded with, or None if it is not loaded yet.

    Its module ``psycopg_any`` is the one that binds the driver (and e.g. ``django.contrib.postgres``
    imports it without the backend)."""
    module = sys.modules.get(_DJANGO_DRIVER_MODULE)
    if module is None:
        return None
    return "psycopg" if module.is_psycopg3 else "psycopg2"


def load_django_backend() -> str:
    """Load Django's PostgreSQL backend with the :func:`requested` driver; returns its name.

    Django imports psycopg 3 if it can, so for psycopg2 the name ``psycopg`` is hidden from the
    import system while (and only while) the backend's modules are imported.
    """
    with _loading:  # two threads making their first connections load it once
        return _load(requested())


def _load(name: str) -> str:
    already = loaded()
    if already not in (None, name):
        raise DriverError(
            f"{ENV_VAR}={name} but Django's PostgreSQL backend was already loaded with "
            f"{already}: set {ENV_VAR} before anything uses the Balsam or Django ORM")
    if _DJANGO_BACKEND in sys.modules:
        return name
    if name == "psycopg":
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise DriverError(f"{ENV_VAR}=psycopg but psycopg 3 is not installed "
                              f"({exc}): `pip install 'psycopg[binary]'`") from None
        __import__(_DJANGO_BACKEND)
        return name
    hidden = {k: sys.modules.pop(k) for k in list(sys.modules)
              if k == "psycopg" or k.startswith("psycopg.")}
    sys.modules["psycopg"] = None  # type: ignore[assignment]  # makes `import psycopg` fail
    try:
        __import__(_DJANGO_BACKEND)
    finally:
        del sys.modules["psycopg"]
        sys.modules.update(hidden)
    return name


def raw_cursor(cursor: Cursor) -> Any:
    """The driver's own cursor under a Django ``CursorWrapper`` (or ``cursor`` itself)."""
    return getattr(cursor, "cursor", cursor)


def copy_in(cursor: Cursor, sql: str, chunks: Iterable[bytes]) -> None:
    """Run ``COPY ... FROM STDIN`` (``sql``) on a psycopg2 or psycopg 3 cursor, sending
    ``chunks``. An exception raised while producing a chunk aborts the COPY; psycopg 3 lets it
    propagate, psycopg2 replaces it with a generic "COPY failed" error (so a caller that wants
    the original keeps it: see :func:`balsam.core.bulk.copy_jobs`)."""
    raw = raw_cursor(cursor)
    copy = getattr(raw, "copy", None)
    if copy is None:  # psycopg2: copy_expert reads a file-like object
        raw.copy_expert(sql, _ChunkReader(iter(chunks)))
        return
    with copy(sql) as stream:
        for chunk in chunks:
            stream.write(chunk)


class _ChunkReader:
    """The file-like face psycopg2's ``copy_expert`` reads: one chunk per ``read()``."""

    def __init__(self, chunks: Any) -> None:
        self._chunks = chunks

    def read(self, size: int = -1) -> bytes:
        return next(self._chunks, b"")

    readline = read

