"""The read layer: Django-free queries on a DB-API cursor that the CLI and the web share.

``jobs`` (job, application and dependency reads), ``pages`` (the dashboard's keyset-paged job
table) and ``activity`` (launcher sessions, batch jobs, recent events). Import the submodule you
need; this package imports nothing, so a CLI command pays only for what it reads.
"""
