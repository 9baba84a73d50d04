"""The per-user PostgreSQL cluster behind a Balsam DB directory, and how clients reach it."""
