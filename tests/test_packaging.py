"""What a user installs: real builds of this checkout with pip, with and without a C compiler.

Two builds, each from a clean copy of the checkout (as a fresh clone would give): a wheel built
normally (it carries the compiled kernels, the man page and the license), and an editable
install (as the demo does) on a machine whose C compiler fails (CC=/bin/false), which must still
succeed and run on the pure-Python fallbacks. Each goes into a bare virtual environment. Neither
build may print a setuptools warning. The first fast tests check the license and extras metadata.
"""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest

from balsam.cli import report_plot
from balsam.errors import BalsamError

ROOT = Path(__file__).resolve().parents[1]
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "_copyfmt.c",
    "_packer.c", "_spawner.c", ".pytest_cache", ".mypy_cache", ".ruff_cache", "test-artifacts")
KERNELS = ("balsam/core/_copyfmt", "balsam/service/packing/_packer", "balsam/launcher/_spawner")
SETUPTOOLS_WARNING = re.compile(r"\w*Warning: |^\s*!!\s*$|is absent from the `packages`", re.M)
"""A Python warning printed by the build backend (``SetuptoolsDeprecationWarning: ...``, pip's
``BuildBackendWarning: ...``) or setuptools' ``!!`` banner. pip's own ``WARNING:`` lines (e.g. about
this machine's index configuration) are not the build's."""
FALLBACK_NOTE = "balsam: note: the C compiler failed"


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


# ---- metadata (fast) -------------------------------------------------------------------------

def test_license_file_is_the_bsd_3_clause_text_setup_cfg_declares() -> None:
    metadata = setup_cfg()["metadata"]
    assert metadata["license"] == "BSD-3-Clause"
    assert metadata["license_files"].split() == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License\n\nCopyright (c) 2026, The Balsam (classic) "
                           "developers\n")
    assert "3. Neither the name of the copyright holder nor the names of its" in text


def test_plot_hint_names_this_distribution_and_its_extra() -> None:
    config = setup_cfg()
    name = config["metadata"]["name"]
    assert "plot" in config["options.extras_require"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
        with pytest.raises(BalsamError, match=re.escape(f"pip install '{name}[plot]'")):
            report_plot.require_matplotlib()


# ---- real builds (slow) ----------------------------------------------------------------------

class Build(NamedTuple):
    """One pip run: where its result went, everything it printed, how long it took."""

    path: Path
    output: str
    seconds: float


def pip(*args: str, env: dict, timeout: float = 600) -> tuple[str, float]:
    """Run ``python -m pip -v ARGS``; return its output (stdout and stderr) and duration."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pip", "-v", *args], env=env, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return proc.stdout, time.monotonic() - start


def bare_venv(path: Path) -> Path:
    """A virtual environment with nothing installed (not even pip): only what we put there."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                   timeout=120)
    return path


def clean_copy(dest: Path) -> Path:
    """This checkout without build products and caches, as a fresh clone has it."""
    shutil.copytree(ROOT, dest, ignore=NOT_IN_A_CLONE)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """A wheel built normally (``pip wheel``), with the machine's C compiler."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = clean_copy(tmp / "src")
    output, seconds = pip("wheel", "--no-deps", "-w", str(tmp / "dist"), str(src),
                          env=dict(os.environ))
    (built,) = (tmp / "dist").glob("balsam_classic-*.whl")
    return Build(built, output, seconds)


@pytest.fixture(scope="module")
def wheel_venv(wheel: Build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare venv with that wheel installed (no build here, only unpacking)."""
    venv = bare_venv(tmp_path_factory.mktemp("wheel-venv") / "venv")
    pip("--python", str(venv / "bin" / "python"), "install", "--no-deps", str(wheel.path),
        env=dict(os.environ))
    return venv


@pytest.fixture(scope="module")
def no_compiler(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """``pip install -e`` (as the demo does) into a bare venv while every C compile fails."""
    tmp = tmp_path_factory.mktemp("nocc")
    src = clean_copy(tmp / "src")
    venv = bare_venv(tmp / "venv")
    env = dict(os.environ, CC="/bin/false", CXX="/bin/false")
    output, seconds = pip("--python", str(venv / "bin" / "python"), "install", "--no-deps",
                          "-e", str(src), env=env)
    return Build(venv, output, seconds)


def run_in(venv: Path, *argv: str, **extra_env: str) -> str:
    """Run a program in ``venv`` activated (its bin first on PATH) and return its stdout."""
    env = dict(os.environ, VIRTUAL_ENV=str(venv),
               PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", **extra_env)
    for unset in ("PYTHONPATH", "MANPATH"):  # man derives its search path from PATH
        env.pop(unset, None)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120,
                          cwd=venv)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


USE_KERNELS = """
import balsam
from balsam.core import copyfmt
from balsam.service import packing
print(balsam.__file__)
print(copyfmt.KERNEL.split()[0], packing.KERNEL)
print(copyfmt.encode_rows([[1, "a\\tb", None, True]]))
print(list(packing.pack([6, 6, 4], [10, 10, 10], 10, 10).box_of))
"""


@pytest.mark.slow
def test_wheel_carries_compiled_kernels_man_page_and_license(wheel: Build) -> None:
    names = zipfile.ZipFile(wheel.path).namelist()
    for kernel in KERNELS:
        assert [n for n in names if n.startswith(kernel) and n.endswith(".so")], kernel
    assert not [n for n in names if n.endswith(".c")]  # the generated C is not shipped
    data = [n for n in names if ".data/data/" in n]
    assert [n.split(".data/data/")[1] for n in data] == ["share/man/man1/balsam.1"]
    assert [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    for data_dir in ("balsam/web/static/dashboard.js", "balsam/web/templates/balsam_web/job.html",
                     "balsam/platform/machines/local.json", "balsam/py.typed"):
        assert data_dir in names


@pytest.mark.slow
def test_installed_wheel_runs_the_compiled_kernels(wheel_venv: Path) -> None:
    lines = run_in(wheel_venv, "python", "-c", USE_KERNELS).splitlines()
    assert lines[0].startswith(str(wheel_venv))  # this install, not the checkout under test
    assert lines[1:] == ["cython cython", "b'1\\ta\\\\tb\\t\\\\N\\tt\\n'", "[0, 1, 0]"]
    assert run_in(wheel_venv, "balsam", "-V").splitlines()[1:] == [
        "COPY encoder: compiled (Cython)", "job packer:   compiled (Cython)",
        "task starter: compiled (Cython)"]


@pytest.mark.slow
def test_man_balsam_finds_the_page_of_an_activated_venv(wheel_venv: Path) -> None:
    page = wheel_venv / "share" / "man" / "man1" / "balsam.1"
    assert page.read_text().startswith(".TH BALSAM")
    if shutil.which("man") is None:
        pytest.skip("man is not installed (tests/run.sh installs man-db as root)")
    assert run_in(wheel_venv, "man", "-w", "balsam").strip() == str(page)
    rendered = run_in(wheel_venv, "man", "-l", str(page), MANPAGER="cat", MANWIDTH="100")
    assert "balsam - a database-backed HPC workflow engine" in rendered
    assert "COMMAND 'balsam completion'" in rendered


@pytest.mark.slow
def test_without_a_compiler_install_succeeds_on_the_fallbacks(no_compiler: Build) -> None:
    venv = no_compiler.path
    notes = [line.strip() for line in no_compiler.output.splitlines() if FALLBACK_NOTE in line]
    assert len(notes) == 1
    assert ("so the kernels balsam.core._copyfmt, balsam.service.packing._packer, "
            "balsam.launcher._spawner were not built. "
            "Balsam will use its pure-Python fallbacks") in notes[0]
    lines = run_in(venv, "python", "-c", USE_KERNELS).splitlines()
    assert lines[1:] == ["python python", "b'1\\ta\\\\tb\\t\\\\N\\tt\\n'", "[0, 1, 0]"]
    version = run_in(venv, "balsam", "-V").splitlines()
    assert version[1].startswith("COPY encoder: pure Python (no compiled balsam.core._copyfmt: ")
    assert version[2].startswith("job packer:   pure Python (no compiled balsam.service.packing.")
    assert version[3].startswith("task starter: pure Python (no compiled balsam.launcher._spawner")
    assert (venv / "share" / "man" / "man1" / "balsam.1").is_file()  # editable installs too


@pytest.mark.slow
def test_builds_print_no_setuptools_warnings(wheel: Build, no_compiler: Build) -> None:
    for build in (wheel, no_compiler):
        assert SETUPTOOLS_WARNING.findall(build.output) == []
    print(f"build times: wheel {wheel.seconds:.0f} s, editable without compiler "
          f"{no_compiler.seconds:.0f} s")
