"""One shape for launcher modes (issue 17, item 2): both modes behind
:class:`balsam.launcher.modes.LauncherMode`, ``main`` choosing and nothing more, the
``launcher:`` settings read only through :class:`balsam.core.tunables.Tunables`, and one factory
for the transition workers of launchers and the service."""
from __future__ import annotations

import ast
import functools
import inspect
import logging
import threading
from pathlib import Path

from balsam.core.tunables import Tunables
from balsam.db import dbsettings
from balsam.launcher import main
from balsam.launcher.context import Context
from balsam.launcher.modes import LauncherMode
from balsam.launcher.mpi_mode import MPILauncherMode
from balsam.launcher.serial_mode import SerialMode
from balsam.platform.allocation import Allocation
from balsam.processing.steps import Limits
from balsam.processing.worker import TransitionPool, TransitionWorker

PACKAGE = Path(main.__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def _findings() -> dict[str, list[str]]:
    """One walk over every module of the package: ``settings``, reads of a ``launcher:`` value
    by hand (``X["launcher"][...]``, ``X["launcher"].get(...)``); ``pools``, calls building a
    ``TransitionPool`` ("path:line")."""
    found: dict[str, list[str]] = {"settings": [], "pools": []}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name == "TransitionPool":
                    found["pools"].append(f"{rel}:{node.lineno}")
                continue
            if not isinstance(node, (ast.Subscript, ast.Attribute)):
                continue
            inner = node.value
            if isinstance(inner, ast.Subscript) and isinstance(inner.slice, ast.Constant) \
                    and inner.slice.value == "launcher" and (
                        isinstance(node, ast.Subscript) or node.attr == "get"):
                found["settings"].append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_each_job_mode_is_a_launcher_mode_with_its_exact_signatures():
    assert type(main.choose_mode("serial")) is SerialMode
    assert type(main.choose_mode("mpi")) is MPILauncherMode
    for cls in (SerialMode, MPILauncherMode):
        for name in ("prestart", "abandon", "run"):
            assert inspect.signature(getattr(cls, name)) == \
                inspect.signature(getattr(LauncherMode, name)), (cls, name)


def test_main_runs_the_chosen_mode_without_branching_on_it():
    tree = ast.parse(Path(main.__file__).read_text())
    run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run")
    compared = [ast.unparse(n) for n in ast.walk(run) if isinstance(n, ast.Compare)
                and "job_mode" in ast.unparse(n)]
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and n.module and n.module.endswith(("mpi_mode", "serial_mode",
                                                    "ensemble_restart", "watchdog"))]
    assert compared == []
    # the mode modules are imported in choose_mode alone, nothing mode-specific elsewhere
    chooser = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
                   and n.name == "choose_mode")
    assert sorted(imported) == sorted(n.module for n in ast.walk(chooser)
                                      if isinstance(n, ast.ImportFrom)) == [
        "balsam.launcher.mpi_mode", "balsam.launcher.serial_mode"]


def test_the_launcher_settings_are_read_only_through_tunables():
    assert _findings()["settings"] == []


def test_transition_pools_are_built_by_the_one_factory_only():
    built = _findings()["pools"]
    assert [b.split(":")[0] for b in built] == ["balsam/processing/pools.py"], built


def _worker_settings(pool: TransitionPool) -> list[tuple[object, ...]]:
    return [(w.limits, w.lease_seconds, w.heartbeat_seconds, w.idle_wait_seconds, w.max_retries,
             w.wf_filter) for w in pool.workers if isinstance(w, TransitionWorker)]


def test_a_launcher_and_the_service_give_their_workers_the_same_launcher_tunables(db):
    from balsam.service.service import Service

    launcher_settings = dict(dbsettings.defaults()["launcher"], lease_seconds=77,
                             heartbeat_seconds=7, script_timeout_seconds=11,
                             transfer_timeout_seconds=13, shutdown_grace_seconds=3,
                             output_tail_lines=5, idle_wait_seconds=0.25, max_retries=2)
    tunables = Tunables.from_settings(launcher_settings)
    log = logging.getLogger("test-pools")
    ctx = Context(db_path=db, settings={}, tunables=tunables,
                  alloc=Allocation(("n1",), 2, 0, "local", "", None), db=None,  # type: ignore
                  session_id=0, job_mode="mpi", wf_filter=None, persistent=False,
                  processing=True, gpus_per_node=0, stop=threading.Event(), log=log,
                  base_env={}, flavour="mpich", mpi_executable=None)
    svc = Service(db, log, "", lock=None)
    svc.settings = dict(svc.settings, launcher=launcher_settings,
                        service=dict(svc.settings["service"], transition_threads=2))
    launcher_pool = main._transition_pool(ctx, 2)
    svc.start_pool()
    try:
        assert launcher_pool is not None and svc.pool is not None
        expected = [(Limits(11.0, kill_grace=3.0, tail_lines=5), 77, 7.0, 0.25, 2, None)] * 2
        assert _worker_settings(launcher_pool) == _worker_settings(svc.pool) == expected
    finally:
        for pool in (launcher_pool, svc.pool):
            if pool is not None:
                pool.stop(timeout=10.0)
        svc.db.close()
    assert main._transition_pool(ctx, 0) is None
