"""Error types shared by every Balsam package.

The CLI catches :class:`BalsamError` once (``balsam.cli.main``), prints its message on one line
and exits with status 2; ``--traceback`` shows the rest. Library users catch them like any
exception.
"""


class BalsamError(Exception):
    """An expected failure with a message fit to show a user on one line."""


class NoActiveDatabase(BalsamError):
    """No Balsam database is active (``BALSAM_DB_PATH`` unset or not a Balsam DB directory)."""


class DatabaseUnavailable(BalsamError):
    """The database server cannot be reached or refused the connection."""


class ServerError(BalsamError):
    """Starting, stopping or configuring the PostgreSQL server failed."""


class NotFound(BalsamError):
    """A job, app or database that was named does not exist."""


class Ambiguous(BalsamError):
    """A prefix or substring matched more than one object."""


class InvalidParentsError(BalsamError):
    """A parent that does not exist, or an edge that would make a cycle (of the task graph)."""


class NoApplication(BalsamError):
    """The job names no application, or one that does not exist."""
