"""A serial-mode rank imports what its role runs, not the other roles' code (issue 16, session 18).

On a small node the ensemble's start is CPU-bound: every module a rank imports delays its first
task. Each test imports, in a fresh interpreter, the modules a role's entry point imports
(``serial_ranks`` and what :func:`balsam.launcher.serial_ranks.run_worker` or ``run_master``
imports, with their helpers in ``rank_boot``) and checks that the modules only other roles need
are not among them.

Session 20: what every process on the ensemble's boot imports before its first task and does
not need then stays out: ``dataclasses`` (with ``inspect``) and ``core.retries`` (with the
schema) in :mod:`balsam.core.tunables`, ``core.retries`` in a worker rank, the process and
warm-pool modules (with ``ctypes``) in the master, and in the watchdog
process (``python -S``) ``json``, ``re`` (also through ``typing``), ``subprocess`` and ``socket``.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import balsam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(balsam.__file__)))

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


def loaded_after_importing(modules: list[str], candidates: list[str],
                           flags: tuple[str, ...] = ()) -> list[str]:
    """Which of ``candidates`` a fresh interpreter (started with ``flags``) has loaded after
    importing ``modules``. Printed without ``json``, which the check must not load itself."""
    code = (f"import sys; sys.path.insert(0, {ROOT!r})\n"
            f"for name in {modules!r}:\n"
            "    __import__(name)\n"
            f"print(' '.join(m for m in {candidates!r} if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    return proc.stdout.splitlines()[-1].split()


@pytest.mark.parametrize("role, modules, absent", [
    ("worker", WORKER, LEASE_SQL + ["balsam.core.retries"]),
    ("master", MASTER, TASK_STARTS + ["uuid", "balsam.launcher.warm_pool",
                                      "balsam.launcher.procs", "ctypes"]),
])
def test_a_rank_does_not_import_what_only_other_roles_run(role, modules, absent):
    assert loaded_after_importing(modules, absent) == [], role


def test_the_check_sees_a_module_that_is_imported():
    assert loaded_after_importing(MASTER, ["balsam.core.leases", "balsam.launcher.serial_master"]
                                  ) == ["balsam.core.leases", "balsam.launcher.serial_master"]


def test_the_tunables_are_read_without_dataclasses_or_the_schema():
    assert loaded_after_importing(["balsam.core.tunables"], [
        "dataclasses", "inspect", "balsam.core.retries", "balsam.core.schema"]) == []


def test_the_watchdog_process_loads_no_json_re_subprocess_socket_or_typing():
    # As the watchdog process starts (Watchdog's command line: python -S, this tree first)
    assert loaded_after_importing(["balsam.launcher.watchdog"], [
        "json", "re", "subprocess", "socket", "typing", "dataclasses"], ("-S",)) == []


def test_the_check_sees_what_python_s_loads():
    assert loaded_after_importing(["balsam.launcher.watchdog", "json"], ["json", "re"],
                                  ("-S",)) == ["json", "re"]
