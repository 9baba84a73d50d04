"""Build script: the optional Cython kernels and the generated balsam(1) man page.

- The kernels ``balsam.core._copyfmt`` (COPY encoder), ``balsam.service.packing._packer`` and
  ``balsam.launcher._spawner`` (a serial worker's task starts) are compiled when a C compiler works. Each has a pure-Python fallback with identical results, so a
  machine without a compiler still installs: the build prints one note naming what was not built,
  and ``balsam -V`` says which path is in use.
- ``balsam(1)`` is generated from the command-line parser (``balsam.cli.manpage``, with
  argparse-manpage from the build requirements) and installed as ``share/man/man1/balsam.1``, where
  ``man balsam`` finds it in an activated virtual environment.

Everything else (metadata, packages, data) is in setup.cfg.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.dist import Distribution

# After setuptools: its own copy of distutils (Python 3.12 has none in the standard library).
from distutils.command.install_data import install_data  # isort: skip

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = {
    "balsam.core._copyfmt": "balsam/core/_copyfmt.pyx",
    "balsam.service.packing._packer": "balsam/service/packing/_packer.pyx",
    "balsam.launcher._spawner": "balsam/launcher/_spawner.pyx",
}
MANPAGE = os.path.join("build", "man", "balsam.1")
"""Where the build writes the generated page (relative: setuptools wants data files so; sdist
leaves out everything under build/)."""
FALLBACK = ("Balsam will use its pure-Python fallbacks (same results; bulk inserts, job packing "
            "and a serial worker's task starts are slower). `balsam -V` says which path is in use.")


def note(message: str) -> None:
    """One line on stderr, shown by ``pip install -v`` and by a plain ``python setup.py``."""
    print(f"balsam: note: {message}", file=sys.stderr, flush=True)


def kernel_extensions() -> list[Extension]:
    """The kernels as C extensions (Cython translates them here; no compiler is needed yet)."""
    try:
        from Cython.Build import cythonize
    except ImportError:
        note(f"Cython is not installed, so the kernels {', '.join(KERNELS)} are not built. "
             + FALLBACK)
        return []
    extensions = [Extension(name, [source]) for name, source in KERNELS.items()]
    return cythonize(extensions, language_level=3, quiet=True)


class OptionalBuildExt(build_ext):
    """build_ext that goes on without the kernels when they cannot be compiled or linked."""

    def run(self) -> None:
        self.failed: list[str] = []
        self.reason = ""
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no usable compiler at all (e.g. none configured)
            self.failed = [ext.name for ext in self.extensions]
            self.reason = str(exc)
        if self.failed:
            reason = (self.reason.strip().splitlines() or ["no reason given"])[-1]
            if len(reason) > 160:  # a failed command is quoted whole: its argv is long
                reason = reason[:150] + " ..."
            note(f"the C compiler failed ({reason}), so the kernels {', '.join(self.failed)} were "
                 f"not built. {FALLBACK}")

    def build_extension(self, ext: Any) -> None:
        """Build one kernel; a compiler or linker failure is recorded, not raised."""
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - CompileError, LinkError, a missing `cc`, ...
            self.failed.append(ext.name)
            self.reason = str(exc) or type(exc).__name__

    def copy_extensions_to_source(self) -> None:
        """Editable installs copy the built kernels into the source tree: only those that built."""
        every = self.extensions
        self.extensions = [ext for ext in every if ext.name not in self.failed]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = every


class InstallDataWithManpage(install_data):
    """install_data that first generates :data:`MANPAGE`, the page it installs (or, if the page
    cannot be made, installs without it after one note)."""

    def run(self) -> None:
        if not write_manpage(MANPAGE):
            self.data_files = [(where, [f for f in files if f != MANPAGE])
                               for where, files in self.data_files or []]
        super().run()


class BalsamDistribution(Distribution):
    """The distribution, answering the question editable installs ask before installing data
    files (``has_data``: setuptools' own Distribution lacks it, so ``pip install -e`` would
    silently leave the man page out)."""

    def has_data(self) -> bool:
        """Whether there are data files to install (the man page)."""
        return bool(self.has_data_files())


def write_manpage(path: str) -> bool:
    """Write balsam(1) to ``path``; False (with a note) if it cannot be generated."""
    sys.path.insert(0, HERE)
    try:
        from balsam.cli.manpage import render

        text = render()
    except Exception as exc:  # noqa: BLE001 - install without the page rather than fail
        note(f"the man page balsam(1) was not generated ({exc}); `python -m balsam.cli.manpage "
             "--install` writes it later")
        return False
    finally:
        sys.path.remove(HERE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    return True


# An editable install of this flat layout announces, as a warning, that it uses an import hook
# ("Editable installation ... folders with the same name as your package"): information only,
# and pip shows it as a warning box on every `pip install -e .`.
warnings.filterwarnings("ignore", message="Editable installation", category=UserWarning)

setup(
    distclass=BalsamDistribution,
    ext_modules=kernel_extensions(),
    data_files=[("share/man/man1", [MANPAGE])],
    cmdclass={"build_ext": OptionalBuildExt, "install_data": InstallDataWithManpage},
)
