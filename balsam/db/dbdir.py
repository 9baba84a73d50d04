"""Create a Balsam DB directory (``balsam init``) and apply the shipped migrations."""
from __future__ import annotations

import os
import shutil
from typing import Callable, Optional

from balsam.db import cluster, dbsettings, index, initdb, pgaccount, serverinfo
from balsam.db.django_setup import ensure_django, use_database
from balsam.errors import BalsamError
from balsam.platform import machines

SUBDIRS = ("data", "log", "qsubmit")
JOB_TEMPLATE = "job-template.sh"
"""The batch-script template the service renders (copied from the machine profile)."""

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def migrate(db_path: str) -> None:
    """Apply the migrations shipped in ``balsam/core/migrations`` (never generated here)."""
    ensure_django()
    use_database(db_path)
    try:
        from django.core.management import call_command

        call_command("migrate", "core", verbosity=0, interactive=False)
    finally:
        use_database(None)


def init(db_path: str, pg_bin: Optional[str] = None, machine: str = "local",
         say: Say = _quiet) -> str:
    """Create the DB directory layout, the cluster and the schema; leave the server running.

    An existing directory that already holds a Balsam DB is started and migrated instead. If
    creating a new DB fails, the directory is removed again when this call created it.
    """
    if not db_path.strip():
        raise BalsamError("the DB path is empty: name a new directory, e.g. `balsam init ~/mydb`")
    db_path = os.path.abspath(os.path.expanduser(db_path))
    profile = machines.load(machine)  # an unknown machine fails before anything is created
    index.read()  # so does an unreadable DB index (registering would fail at the very end)
    if os.path.exists(db_path) and not os.path.isdir(db_path):
        raise BalsamError(f"{db_path} exists and is not a directory")
    if serverinfo.is_db_dir(db_path):
        say(f"{db_path} is already a Balsam DB: starting it and applying migrations")
        _add_missing_template(db_path)
    else:
        if os.path.isdir(db_path) and os.path.exists(os.path.join(db_path, cluster.DATA_DIR)):
            raise BalsamError(f"{db_path}/{cluster.DATA_DIR} exists but {db_path} has no server-info: "
                              "a previous init failed; remove the directory and run init again")
        foreign = _foreign_entries(db_path)
        if foreign:
            raise BalsamError(f"{db_path} is not empty and not a Balsam DB (it holds "
                              f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): "
                              "give a new or empty directory")
        pgaccount.find_bin_dir(pg_bin)  # a bad --pg-bin fails before anything is created
        created = not os.path.exists(db_path)
        try:
            try:
                _create_layout(db_path, profile)
            except OSError as exc:
                raise BalsamError(f"cannot create the DB directory {db_path}: {exc.strerror or exc}")
            initdb.initialize(db_path, pg_bin, say)
        except BaseException:
            if created:
                shutil.rmtree(db_path, ignore_errors=True)
            raise
    cluster.start(db_path, say)
    initdb.create_database(db_path)
    migrate(db_path)
    index.register(db_path)
    return db_path


def _foreign_entries(db_path: str) -> list[str]:
    """What a directory holds besides the layout an earlier, failed init may have left."""
    if not os.path.isdir(db_path):
        return []
    ours = {*SUBDIRS, dbsettings.FILENAME, JOB_TEMPLATE}
    return sorted(set(os.listdir(db_path)) - ours)


def _create_layout(db_path: str, profile: machines.Machine) -> None:
    """Directories, ``settings.yml`` from the machine profile and its ``job-template.sh``
    (existing files are kept: they may have been edited)."""
    os.makedirs(db_path, mode=0o755, exist_ok=True)
    for sub in SUBDIRS:
        os.makedirs(os.path.join(db_path, sub), exist_ok=True)
    settings_file = os.path.join(db_path, dbsettings.FILENAME)
    if not os.path.exists(settings_file):
        with open(settings_file, "w") as fh:
            fh.write(dbsettings.render_default(db_path, machine=profile.name))
    template_file = os.path.join(db_path, JOB_TEMPLATE)
    if not os.path.exists(template_file):
        _write_template(template_file, profile)


def _add_missing_template(db_path: str) -> None:
    """Give a DB made before job templates existed the one of its settings' machine profile."""
    template_file = os.path.join(db_path, JOB_TEMPLATE)
    machine = dbsettings.load(db_path)["machine"]
    if not os.path.exists(template_file) and machine in machines.names():
        _write_template(template_file, machines.load(machine))


def _write_template(path: str, profile: machines.Machine) -> None:
    with open(path, "w") as fh:
        fh.write(profile.template_text())
