"""The environment a job's processes get: its variables, the caller's cleaned environment, and
the app's envscript.

Used by the launchers (application tasks) and by processing (preprocess / postprocess scripts),
and later by the service, so it lives in ``core`` and imports neither Django nor the launcher.
A job's variables are classic ``get_envs()``: its ``environ_vars`` plus ``BALSAM_JOB_ID``,
``BALSAM_PARENT_IDS``, ``BALSAM_DB_PATH`` and ``OMP_NUM_THREADS`` (when ``threads_per_rank``
> 1); a launcher adds ``BALSAM_LAUNCHER_NODES`` and ``BALSAM_JOB_MODE``.
"""
from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from balsam.core import schema

LAUNCHER_ONLY_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "HYDI_", "OMPI_", "MPI_LOCALRANKID",
                          "MPI_LOCALNRANKS", "BALSAM_ORIGINAL_PATH", "BALSAM_LAUNCHER_INTERNAL_")
"""Variables of the launcher's own MPI ensemble: a task that is itself an MPI program must not
believe it belongs to the launcher's MPI job."""

CREDENTIAL_VARIABLES = frozenset({"BALSAM_DB_PASSWORD", "BALSAM_WEB_TOKEN", "PGPASSWORD"})
"""Secrets a launcher, the service or ``balsam web`` may have been given in its environment: the
DB password (Balsam's own variable, and libpq's), the dashboard's login token. Tasks and scripts
never see them -- their output is shown by ``balsam log`` and the dashboard. A task that uses the
database (``balsam.launcher.dag``) authenticates through the stored credential instead
(:mod:`balsam.db.credentials`: ``<db>/.auth`` for the owner, ``~/.balsam/credentials.json``)."""

CREDENTIAL_SUFFIXES = ("_PASSWORD", "_TOKEN", "_SECRET")
"""Any other ``BALSAM_*`` variable ending so is treated as a credential too (future ones)."""


def is_credential(name: str) -> bool:
    """True if the environment variable ``name`` carries a Balsam credential."""
    return name in CREDENTIAL_VARIABLES or (name.startswith("BALSAM_")
                                            and name.endswith(CREDENTIAL_SUFFIXES))


def without_credentials(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` without the variables :func:`is_credential` names (for any program Balsam runs
    on a job's behalf: tasks, scripts, transfers)."""
    return {k: v for k, v in base.items() if not is_credential(k)}


def job_variables(row: Mapping[str, Any], parents: Sequence[str], db_path: str,
                  launcher_nodes: Optional[int] = None,
                  job_mode: Optional[str] = None) -> dict[str, str]:
    """The ``BALSAM_*`` variables and the job's own ``environ_vars`` (classic ``get_envs``).

    ``row`` needs ``job_id`` (and may have ``environ_vars``, ``threads_per_rank``). The launcher
    variables ``BALSAM_LAUNCHER_NODES`` / ``BALSAM_JOB_MODE`` are set only when given (a
    processing step outside a launcher has neither).
    """
    env = schema.parse_envstring(row.get("environ_vars", ""))
    env.update(BALSAM_JOB_ID=str(row["job_id"]),
               BALSAM_PARENT_IDS=json.dumps(list(parents)) if parents else "[]",
               BALSAM_DB_PATH=db_path)
    if launcher_nodes is not None:
        env["BALSAM_LAUNCHER_NODES"] = str(launcher_nodes)
    if job_mode is not None:
        env["BALSAM_JOB_MODE"] = job_mode
    if int(row.get("threads_per_rank", 1)) > 1:
        env["OMP_NUM_THREADS"] = str(row["threads_per_rank"])
    return env


def task_environment(base: Mapping[str, str], job_vars: Mapping[str, str]) -> dict[str, str]:
    """``base`` cleaned of launcher-only variables and of credentials (:func:`is_credential`;
    ``BALSAM_ORIGINAL_PATH``, when set, restores the user's PATH), plus ``job_vars`` (which win:
    a variable the job itself sets in ``environ_vars`` is the user's explicit choice).

    Every process Balsam starts for a job gets its environment from here: MPI- and serial-mode
    tasks (:mod:`balsam.launcher.task`), pre/postprocess scripts and handlers
    (:mod:`balsam.processing.scripts`)."""
    env = {k: v for k, v in base.items()
           if not k.startswith(LAUNCHER_ONLY_PREFIXES) and not is_credential(k)}
    if "BALSAM_ORIGINAL_PATH" in base:
        env["PATH"] = base["BALSAM_ORIGINAL_PATH"]
    env.update(job_vars)
    return env


def with_envscript(argv: Sequence[str], envscript: Optional[str]) -> list[str]:
    """``argv`` run by bash after sourcing ``envscript`` (when the app has one); ``argv``
    unchanged otherwise. Every word is quoted: no shell expansion of the command."""
    if not envscript:
        return list(argv)
    command = " ".join(shlex.quote(a) for a in argv)
    return ["/bin/bash", "-c", f"source {shlex.quote(envscript)} && exec {command}"]
