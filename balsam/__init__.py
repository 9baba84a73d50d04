"""Balsam: a database-backed HPC workflow engine.

Importing this package (or any submodule) does no work: no database connection, no environment
lookups, no MPI initialisation, no subprocesses.
"""

__version__ = "0.6.0.dev0"
