"""Create the PostgreSQL cluster of a new Balsam DB directory (``balsam init``).

``initdb`` runs as the server account with the owner's generated superuser password; the server
listens on TCP with scram-sha-256 password authentication only (``trust`` is never configured)
and is tuned for many short transactions from many launchers, with no per-statement logging.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from balsam.db import credentials, dbsettings, pgaccount, serverinfo
from balsam.db.cluster import SERVER_LOG, Say, data_dir, quiet
from balsam.db.roles import admin_connect
from balsam.errors import ServerError

PG_HBA = """\
# Written by Balsam: password authentication (scram-sha-256) only; trust is never used.
# Compute nodes connect over TCP, so every address is allowed -- with a password.
local   all  all                scram-sha-256
host    all  all  0.0.0.0/0     scram-sha-256
host    all  all  ::/0          scram-sha-256
"""

TUNING = """\
# Written by Balsam for a workflow database: many short transactions from many launchers.
listen_addresses = '{listen}'
unix_socket_directories = ''           # TCP only: socket paths break on long DB paths
max_connections = {max_connections}
superuser_reserved_connections = 5
shared_buffers = {shared_buffers}
work_mem = 16MB
maintenance_work_mem = 256MB
max_wal_size = 4GB
checkpoint_timeout = 15min
password_encryption = 'scram-sha-256'
timezone = 'UTC'
# A client that dies inside a transaction must not hold job rows forever.
idle_in_transaction_session_timeout = '10min'
tcp_keepalives_idle = 60
tcp_keepalives_interval = 10
tcp_keepalives_count = 6
# Log problems only: per-statement logging grows without bound under this workload.
logging_collector = off
log_min_messages = warning
log_min_error_statement = error
log_min_duration_statement = -1
log_statement = 'none'
log_connections = off
log_disconnections = off
log_checkpoints = off
log_line_prefix = '%m [%p] %q%u@%d '
"""


def initialize(db_path: str, pg_bin: Optional[str] = None, say: Say = quiet) -> dict[str, Any]:
    """Create the cluster under ``<db>/balsamdb`` and write server-info; returns server-info.

    The owner's superuser password is generated here and stored in ``<db>/.auth``.
    """
    account = pgaccount.server_account(say)
    bin_dir = pgaccount.usable_bin_dir(pgaccount.find_bin_dir(pg_bin), account, say)
    pgaccount.check_reachable(account, bin_dir, db_path)
    role = credentials.login_name()
    password = credentials.generate_password()
    datadir = data_dir(db_path)
    os.makedirs(os.path.join(db_path, "log"), exist_ok=True)
    log = os.path.join(db_path, SERVER_LOG)
    open(log, "a").close()
    os.mkdir(datadir, 0o700)
    pwfile = os.path.join(db_path, ".initdb-pw")
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(password + "\n")
    pgaccount.chown_tree([datadir, pwfile, log], account)
    try:
        code, output = pgaccount.run_as(account, [
            os.path.join(bin_dir, "initdb"), "-D", datadir, "-U", role, f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8",
            "--locale=C",
        ], timeout=300, cwd=db_path)
    finally:
        os.unlink(pwfile)
    if code != 0:
        raise ServerError(f"initdb failed: {output.strip().splitlines()[-1] if output.strip() else code}")
    _write_config(db_path, account)
    credentials.write_db_credential(db_path, role, password)
    me = pgaccount.current_account()
    info = {
        "host": "", "port": None, "pid": None, "database": serverinfo.DATABASE_NAME,
        "owner": me.name, "owner_uid": me.uid, "superuser": role,
        "server_account": account.name, "server_uid": account.uid,
        "pg_bin": bin_dir, "pg_version": pgaccount.server_version(bin_dir),
    }
    serverinfo.write(db_path, info)
    return info


def _write_config(db_path: str, account: pgaccount.Account) -> None:
    srv = dbsettings.load(db_path)["server"]
    datadir = data_dir(db_path)
    with open(os.path.join(datadir, "pg_hba.conf"), "w") as fh:
        fh.write(PG_HBA)
    with open(os.path.join(datadir, "balsam.conf"), "w") as fh:
        fh.write(TUNING.format(listen=srv["listen_addresses"], max_connections=srv["max_connections"],
                               shared_buffers=srv["shared_buffers"]))
    with open(os.path.join(datadir, "postgresql.conf"), "a") as fh:
        fh.write("\n# Balsam's settings\ninclude 'balsam.conf'\n")
    pgaccount.chown_tree([os.path.join(datadir, f) for f in ("pg_hba.conf", "balsam.conf")], account)


def create_database(db_path: str) -> None:
    """Create the ``balsam`` database in a freshly started cluster (no-op if it exists)."""
    from psycopg2 import sql

    conn = admin_connect(db_path, dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [serverinfo.DATABASE_NAME])
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(serverinfo.DATABASE_NAME)))
    finally:
        conn.close()
