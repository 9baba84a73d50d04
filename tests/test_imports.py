"""Architecture guards (ARCHITECTURE.md section 2): who may import whom, and importing does no work.

The first tests read every module's imports with ``ast`` (including imports inside functions and
``importlib.import_module("...")`` calls with a literal name) and check the package rules. The
last ones import every module in a fresh interpreter in which connecting, spawning, forking and
reading scheduler/Balsam environment variables raise or are recorded.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

import balsam

PACKAGE_ROOT = Path(balsam.__file__).resolve().parent
EXTENSION_SUFFIXES = (".so", ".pyd")


# ---- reading imports ---------------------------------------------------------------------------

def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent)
    parts = list(rel.parts)
    parts[-1] = parts[-1].split(".")[0]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def iter_modules(root: Path = PACKAGE_ROOT) -> Iterator[tuple[str, Path]]:
    """(module name, source path) of every Python source file in the package."""
    for path in sorted(root.rglob("*.py")):
        yield module_name(path, root), path


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every module name ``source`` may import: ``import a.b`` gives a.b; ``from a import b``
    gives a and a.b (b may be a submodule); relative imports are resolved."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__"):
                names.add(node.args[0].value)
    return names


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _stdlib() -> frozenset:
    return frozenset(getattr(sys, "stdlib_module_names", ()))


def violations(root: Path = PACKAGE_ROOT) -> list[str]:
    """Every breach of the package rules in the tree at ``root`` (a ``balsam`` package)."""
    found = []
    stdlib = _stdlib()
    for module, path in iter_modules(root):
        rel = path.relative_to(root.parent).as_posix()
        names = imported_names(path.read_text(), module, path.name == "__init__.py")
        balsam_names = {n for n in names if within(n, "balsam")}
        pure = module == "balsam.core.states" or within(module, "balsam.platform")
        for name in sorted(names):
            if pure and within(name, "django"):
                found.append(f"{rel}: imports {name} (must not use Django)")
            if pure and stdlib and name.split(".")[0] not in stdlib | {"balsam", "__future__"}:
                found.append(f"{rel}: imports {name} (stdlib only)")
        for name in sorted(balsam_names):
            if pure and name != "balsam" and not (within(name, "balsam.platform")
                                                  or within(name, "balsam.errors")):
                found.append(f"{rel}: imports {name} (may import only balsam.platform and "
                             "balsam.errors)")
            if within(module, "balsam.core") and any(
                    within(name, f"balsam.{p}")
                    for p in ("service", "launcher", "processing", "cli", "site", "api")):
                found.append(f"{rel}: imports {name} (core must not depend on it)")
            if (within(module, "balsam.site") or within(module, "balsam.api")) and any(
                    within(name, f"balsam.{p}") for p in ("launcher", "service")):
                found.append(f"{rel}: imports {name} (the newer API sits on core and processing, "
                             "never on the launcher or the service)")
            if within(module, "balsam.site") and within(name, "balsam.api"):
                found.append(f"{rel}: imports {name} (the app side does not know the client side)")
            if within(module, "balsam.service") and within(name, "balsam.launcher"):
                found.append(f"{rel}: imports {name} (service and launcher are independent)")
            if within(module, "balsam.launcher") and within(name, "balsam.service"):
                found.append(f"{rel}: imports {name} (service and launcher are independent)")
            if within(name, "balsam.cli") and not (within(module, "balsam.cli")
                                                   or module == "balsam.__main__"):
                found.append(f"{rel}: imports {name} (nothing imports the CLI)")
    return found


def test_the_package_follows_the_import_rules():
    assert violations() == []


def test_the_walk_sees_every_module_and_its_imports():
    modules = dict(iter_modules())
    assert {"balsam", "balsam.core.states", "balsam.core.models", "balsam.cli.main",
            "balsam.__main__", "balsam.platform"} <= set(modules)
    models = imported_names(modules["balsam.core.models"].read_text(), "balsam.core.models", False)
    assert {"django.db", "balsam.core.lifecycle", "balsam.core.bulk"} <= models
    main = imported_names(modules["balsam.cli.main"].read_text(), "balsam.cli.main", False)
    assert "balsam.errors" in main  # an import inside a function counts too


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_the_rules_catch_every_kind_of_breach(tmp_path):
    pkg = tmp_path / "balsam"
    for sub in ("", "core", "platform", "platform/mpi", "service", "launcher", "cli", "processing",
                "site", "api"):
        _write(pkg, f"{sub}/__init__.py".lstrip("/"), "")
    _write(pkg, "core/states.py", "import django\nfrom balsam.core import schema\n")
    _write(pkg, "core/models.py", "def f():\n    from balsam.service import planner\n")
    _write(pkg, "core/lifecycle.py", "from ..launcher import dag\n")
    _write(pkg, "platform/mpi/srun.py",
           "from balsam.platform import allocation\nfrom balsam.errors import BalsamError\n"
           "from balsam.db import django_setup\nimport yaml\n")
    _write(pkg, "service/submit.py", "import balsam.launcher.dag\n")
    _write(pkg, "launcher/dag.py", "from balsam import service\n")
    _write(pkg, "processing/run.py", "import importlib\nimportlib.import_module('balsam.cli.main')\n")
    _write(pkg, "__main__.py", "from balsam.cli.main import run\n")
    _write(pkg, "cli/main.py", "from balsam.cli import common\n")
    _write(pkg, "site/app.py", "from balsam.api import Job\nfrom balsam.core import schema\n")
    _write(pkg, "api/jobs.py", "def f():\n    from balsam.launcher import dag\n")
    _write(pkg, "core/bulk.py", "from balsam.site import app\n")
    found = violations(pkg)
    expected = [
        "balsam/core/lifecycle.py: imports balsam.launcher (core must not depend on it)",
        "balsam/core/lifecycle.py: imports balsam.launcher.dag (core must not depend on it)",
        "balsam/core/models.py: imports balsam.service (core must not depend on it)",
        "balsam/core/models.py: imports balsam.service.planner (core must not depend on it)",
        "balsam/core/states.py: imports django (must not use Django)",
        "balsam/core/states.py: imports balsam.core (may import only balsam.platform and balsam.errors)",
        "balsam/core/states.py: imports balsam.core.schema (may import only balsam.platform and "
        "balsam.errors)",
        "balsam/launcher/dag.py: imports balsam.service (service and launcher are independent)",
        "balsam/platform/mpi/srun.py: imports balsam.db (may import only balsam.platform and "
        "balsam.errors)",
        "balsam/platform/mpi/srun.py: imports balsam.db.django_setup (may import only balsam.platform "
        "and balsam.errors)",
        "balsam/processing/run.py: imports balsam.cli.main (nothing imports the CLI)",
        "balsam/service/submit.py: imports balsam.launcher.dag (service and launcher are independent)",
        "balsam/site/app.py: imports balsam.api (the app side does not know the client side)",
        "balsam/site/app.py: imports balsam.api.Job (the app side does not know the client side)",
        "balsam/api/jobs.py: imports balsam.launcher (the newer API sits on core and processing, "
        "never on the launcher or the service)",
        "balsam/api/jobs.py: imports balsam.launcher.dag (the newer API sits on core and "
        "processing, never on the launcher or the service)",
        "balsam/core/bulk.py: imports balsam.site (core must not depend on it)",
        "balsam/core/bulk.py: imports balsam.site.app (core must not depend on it)",
    ]
    if _stdlib():
        expected += ["balsam/core/states.py: imports django (stdlib only)",
                     "balsam/platform/mpi/srun.py: imports yaml (stdlib only)"]
    assert sorted(found) == sorted(expected)


# ---- importing does no work --------------------------------------------------------------------

HARNESS = r'''
import importlib, json, os, socket, subprocess, sys, traceback

PREFIXES = ("BALSAM_", "SLURM_", "PBS_", "COBALT_", "LSB_")
current = ["(harness)"]
problems = []


class Forbidden(RuntimeError):
    pass


def forbid(what):
    def refuse(*args, **kwargs):
        problems.append(f"{current[0]}: {what}")
        raise Forbidden(what)
    return refuse


socket.socket.connect = forbid("socket connect")
socket.socket.connect_ex = forbid("socket connect")
socket.create_connection = forbid("socket connect")
subprocess.Popen.__init__ = forbid("subprocess spawn")
for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp", "execv", "execve",
             "execvp", "execvpe", "spawnv", "spawnve"):
    if hasattr(os, name):
        setattr(os, name, forbid(f"os.{name}"))
os.mkdir = forbid("os.mkdir")
os.makedirs = forbid("os.makedirs")
import psycopg2  # noqa: E402  (patched before any balsam module can use it)
psycopg2.connect = forbid("database connect")


class RecordingEnviron(dict):
    """os.environ stand-in that records reads of scheduler and Balsam variables."""

    def _note(self, key):
        if isinstance(key, str) and key.startswith(PREFIXES):
            problems.append(f"{current[0]}: reads {key}")

    def __getitem__(self, key):
        self._note(key)
        return dict.__getitem__(self, key)

    def get(self, key, default=None):
        self._note(key)
        return dict.get(self, key, default)

    def __contains__(self, key):
        self._note(key)
        return dict.__contains__(self, key)

    def __iter__(self):
        problems.append(f"{current[0]}: iterates over the whole environment")
        return dict.__iter__(self)

    def items(self):
        problems.append(f"{current[0]}: iterates over the whole environment")
        return dict.items(self)

    def copy(self):
        problems.append(f"{current[0]}: copies the whole environment")
        return dict(self)


os.environ = RecordingEnviron(os.environ)

modules = json.loads(sys.argv[1])
imported = []
for name in modules:
    current[0] = name
    try:
        importlib.import_module(name)
        imported.append(name)
    except BaseException as exc:  # SystemExit too: an import must never exit
        problems.append(f"{name}: import raised {type(exc).__name__}: {exc}".splitlines()[0])
current[0] = "(after imports)"
if "mpi4py.MPI" in sys.modules:
    problems.append("mpi4py.MPI was imported (MPI initialised)")
print(json.dumps({"imported": imported, "problems": problems}))
'''


def all_module_names() -> list[str]:
    names = [name for name, _ in iter_modules()]
    names += [module_name(p, PACKAGE_ROOT) for p in PACKAGE_ROOT.rglob("*")
              if p.suffix in EXTENSION_SUFFIXES]
    # balsam.__main__ is the `python -m balsam` entry point: running the CLI is its job.
    return sorted(n for n in names if n != "balsam.__main__")


def run_harness(tmp_path: Path, db_path: Optional[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BALSAM_", "SLURM_", "PBS_",
                                                                   "COBALT_", "LSB_", "PMI_"))}
    env["HOME"] = str(tmp_path)  # nothing under the real ~/.balsam may matter either
    if db_path is not None:
        env["BALSAM_DB_PATH"] = db_path
    script = tmp_path / "harness.py"
    script.write_text(HARNESS)
    proc = subprocess.run([sys.executable, str(script), json.dumps(all_module_names())],
                          capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("db_path", [None, "/nonexistent/balsam-db"], ids=["unset", "bogus"])
def test_importing_every_module_does_no_work(tmp_path, db_path):
    result = run_harness(tmp_path, db_path)
    assert result["problems"] == []
    assert result["imported"] == all_module_names()
    assert "balsam.core.models" in result["imported"] and "balsam.core._copyfmt" in result["imported"]


def test_the_harness_notices_work_at_import(tmp_path):
    pkg = tmp_path / "probe"
    _write(pkg, "__init__.py", "")
    _write(pkg, "reads.py", "import os\nos.environ.get('SLURM_JOB_ID')\n")
    _write(pkg, "spawns.py", "import subprocess\nsubprocess.run(['true'], timeout=5)\n")
    _write(pkg, "connects.py", "import socket\nsocket.create_connection(('127.0.0.1', 9))\n")
    _write(pkg, "exits.py", "import sys\nsys.exit(1)\n")
    _write(pkg, "clean.py", "import os\nVALUE = 1\n")
    script = tmp_path / "harness.py"
    script.write_text(HARNESS)
    names = ["probe.clean", "probe.connects", "probe.exits", "probe.reads", "probe.spawns"]
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, str(script), json.dumps(names)], capture_output=True,
                          text=True, env=env, timeout=60, cwd=tmp_path)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    problems = result["problems"]
    assert result["imported"] == ["probe.clean", "probe.reads"]
    assert "probe.reads: reads SLURM_JOB_ID" in problems
    assert "probe.spawns: subprocess spawn" in problems
    assert "probe.connects: socket connect" in problems
    assert any(p.startswith("probe.exits: import raised SystemExit") for p in problems)
    assert not any(p.startswith("probe.clean") for p in problems)


READ_LAYER = ["balsam.core.sql", "balsam.core.reads", "balsam.core.reads.jobs",
              "balsam.core.reads.pages", "balsam.core.reads.activity", "balsam.core.reads.apps",
              "balsam.core.reads.transfers", "balsam.core.writes", "balsam.core.writes.jobs",
              "balsam.core.writes.apps"]


def test_the_read_layer_the_cli_and_web_share_loads_no_django():
    """``balsam.core.reads``, ``balsam.core.writes`` and ``balsam.core.sql`` serve the CLI on its
    fast path (the write layer is listed here too): importing
    them (and all they import) must not load Django or the ORM models."""
    code = ("import importlib, json, sys\n"
            f"for name in {READ_LAYER!r}:\n"
            "    importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'django' "
            "or m.startswith(('django.', 'balsam.core.models', 'balsam.db.')))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert json.loads(proc.stdout) == []
    assert set(READ_LAYER) <= set(all_module_names())


def test_the_wait_reads_load_no_django():
    """``balsam wait``'s reads (:mod:`balsam.core.reads.waits`) load the driver module for COPY,
    but neither Django nor the ORM models."""
    code = ("import json, sys\nimport balsam.core.reads.waits\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'django' "
            "or m.startswith(('django.', 'balsam.core.models', 'psycopg')))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert json.loads(proc.stdout) == []
