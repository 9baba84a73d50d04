"""``balsam -V`` prints the version and which implementation of each kernel is in use."""
from __future__ import annotations

import subprocess
import sys

from conftest import run_balsam

import balsam

HIDE_KERNELS = """
import sys
class HideKernels:
    def find_spec(self, name, path=None, target=None):
        if name in ("balsam.core._copyfmt", "balsam.service.packing._packer",
                    "balsam.launcher._spawner"):
            raise ImportError("hidden by the test")
        return None
sys.meta_path.insert(0, HideKernels())
from balsam.cli.main import main
sys.exit(main(["-V"]))
"""


def test_version_names_the_compiled_kernels_of_this_install() -> None:
    r = run_balsam("-V")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.splitlines() == [f"balsam {balsam.__version__}",
                                     "COPY encoder: compiled (Cython)",
                                     "job packer:   compiled (Cython)",
                                     "task starter: compiled (Cython)"]


def test_version_says_when_the_pure_python_fallbacks_are_in_use() -> None:
    r = subprocess.run([sys.executable, "-c", HIDE_KERNELS], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    hint = "it is built at install when a C compiler works)"
    assert r.stdout.splitlines() == [
        f"balsam {balsam.__version__}",
        f"COPY encoder: pure Python (no compiled balsam.core._copyfmt: {hint}",
        f"job packer:   pure Python (no compiled balsam.service.packing._packer: {hint}",
        f"task starter: pure Python (no compiled balsam.launcher._spawner: {hint}"]


def test_long_option_is_the_same_and_help_describes_it() -> None:
    assert run_balsam("--version").stdout == run_balsam("-V").stdout
    assert "which kernels (compiled or pure Python) are in use" in " ".join(
        run_balsam("--help").stdout.split())
