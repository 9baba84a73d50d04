"""The ``balsam`` command line. One small module per command; nothing imports this package.

Commands that must answer fast (``job``, ``ls``, ``app``...) use plain psycopg2 through
:mod:`balsam.cli.common` and never import Django (~150 ms); the others import it lazily.
"""
