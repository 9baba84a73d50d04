"""A serial-mode rank imports what its role runs, not the other roles' code (issue 16, session 18).

On a small node the ensemble's start is CPU-bound: every module a rank imports delays its first
task. Each test imports, in a fresh interpreter, the modules a role's entry point imports
(``serial_ranks`` and what :func:`balsam.launcher.serial_ranks.run_worker` or ``run_master``
imports, with their helpers in ``rank_boot``) and checks that the modules only other roles need
are not among them.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

RANK = ["balsam.launcher.serial_ranks", "balsam.launcher.rank_boot"]
WORKER = RANK + ["balsam.core.tunables", "balsam.launcher.nodeslots",
                 "balsam.launcher.rank_heartbeat", "balsam.launcher.serial_worker",
                 "balsam.launcher.ensemble_watch", "balsam.launcher.watchdog"]
MASTER = RANK + ["balsam.launcher.metered", "balsam.launcher.context",
                 "balsam.launcher.ensemble_watch", "balsam.launcher.job_source",
                 "balsam.launcher.rank_heartbeat", "balsam.launcher.serial_master",
                 "balsam.launcher.status_writers"]
LEASE_SQL = ["balsam.core.leases", "balsam.core.lifecycle", "balsam.core.claim_sql",
             "balsam.core.launcher_moves", "balsam.core.killed_starts"]
TASK_STARTS = ["balsam.launcher.serial_worker", "balsam.launcher.spawn_native",
               "balsam.launcher.spawn_threads", "balsam.launcher.nodeslots"]


def loaded_after_importing(modules: list[str], candidates: list[str]) -> list[str]:
    """Which of ``candidates`` a fresh interpreter has loaded after importing ``modules``."""
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            f"print(json.dumps([m for m in {candidates!r} if m in sys.modules]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("role, modules, absent", [
    ("worker", WORKER, LEASE_SQL),
    ("master", MASTER, TASK_STARTS + ["uuid"]),
])
def test_a_rank_does_not_import_what_only_other_roles_run(role, modules, absent):
    assert loaded_after_importing(modules, absent) == [], role


def test_the_check_sees_a_module_that_is_imported():
    assert loaded_after_importing(MASTER, ["balsam.core.leases", "balsam.launcher.serial_master"]
                                  ) == ["balsam.core.leases", "balsam.launcher.serial_master"]
