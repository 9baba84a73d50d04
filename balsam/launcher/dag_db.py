"""Applications, databases and batch jobs in the classic ``balsam.launcher.dag`` API.

``dag.add_app``, ``dag.get_apps``, ``dag.get_database_paths``, ``dag.get_active_database`` and
``dag.submit`` live here; :mod:`balsam.launcher.dag` re-exports them. Nothing happens on import.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

from balsam.core import schema
from balsam.errors import BalsamError

SUBMIT_TIMEOUT_SECONDS = 120
"""How long ``dag.submit`` waits for ``balsam submit-launch`` (its scheduler call has its own
timeout and back-off)."""

if TYPE_CHECKING:
    from balsam.core.models import ApplicationDefinition, QueuedLaunch


def add_app(name: str, executable: str, description: str = "", envscript: str = "",
            preprocess: str = "", postprocess: str = "", checkexe: bool = False
            ) -> ApplicationDefinition:
    """Create the application ``name``, or update every field of the existing one; return it.

    With ``checkexe`` the executable's first word must be an executable file (a path, or a
    command found on PATH): ``ValueError`` otherwise.
    """
    from balsam.core.models import ApplicationDefinition

    values = {"description": description, "executable": executable, "envscript": envscript,
              "preprocess": preprocess, "postprocess": postprocess}
    for key, val in dict(values, name=name).items():
        schema.coerce_field(key, val, schema.APP_DEFAULTS)
    if not name.strip() or not executable.strip():
        raise ValueError("an application needs a name and an executable")
    if checkexe:
        first = shlex.split(executable)[0]
        if shutil.which(os.path.expanduser(first)) is None:
            raise ValueError(f"executable {first!r} is not an executable file or a command on PATH")
    app, _ = ApplicationDefinition.objects.update_or_create(name=name, defaults=values)
    return app


def get_apps() -> list[ApplicationDefinition]:
    """Every application, by name."""
    from balsam.core.models import ApplicationDefinition

    return list(ApplicationDefinition.objects.order_by("name"))


def get_database_paths(verbose: bool = True) -> list[str]:
    """The Balsam DBs known to this user (``~/.balsam/databases.json``); printed if ``verbose``."""
    from balsam.db import index

    paths = index.read()
    if verbose:
        print(f"Found {len(paths)} Balsam DB{'s' if len(paths) != 1 else ''}")
        for path in paths:
            print(f"  {path}")
    return paths


def get_active_database(verbose: bool = True) -> str:
    """The active DB directory (:class:`~balsam.errors.NoActiveDatabase` if none); printed if
    ``verbose``."""
    from balsam.db.django_setup import active_path

    path = active_path()
    if verbose:
        print(f"Active Balsam DB: {path}")
    return path


def submit(project: str = "", queue: str = "", nodes: int = 1, wall_minutes: int = 30,
           job_mode: str = "mpi", wf_filter: str = "", sched_flags: str = "") -> QueuedLaunch:
    """Submit one launcher batch job for the active DB, as ``balsam submit-launch`` does; return
    its ``QueuedLaunch``. ``project`` '' means the DB's settings.yml project; ``queue`` is
    required (classic's default ``debug-flat-quad`` was a Theta queue). :class:`BalsamError`
    with the command's one-line error if a check or the submission fails.

    The launcher package never imports the service (docs/architecture.md), so this runs the
    command itself: the same checks, the same record, one submission."""
    from balsam.core.models import QueuedLaunch
    from balsam.db.django_setup import active_path

    if not queue.strip():
        raise BalsamError("dag.submit() needs a queue (see the DB's settings.yml queues)")
    argv = [sys.executable, "-m", "balsam", "submit-launch", "-n", str(nodes),
            "-t", str(wall_minutes), "-q", queue, "--job-mode", job_mode,
            "--wf-filter", wf_filter, "--sched-flags", sched_flags]
    if project:
        argv += ["-A", project]
    env = dict(os.environ, BALSAM_DB_PATH=active_path())
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env,
                              timeout=SUBMIT_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise BalsamError(f"dag.submit(): `balsam submit-launch` did not answer within "
                          f"{SUBMIT_TIMEOUT_SECONDS} s")
    found = re.search(r"Submit OK: batch job (\d+) ", done.stdout)
    if done.returncode != 0 or found is None:
        lines = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
        raise BalsamError(f"dag.submit(): {lines[-1]}")
    return QueuedLaunch.objects.get(pk=int(found.group(1)))
