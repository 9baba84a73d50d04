"""No test's launchers leave an MPICH shared-memory file in /dev/shm.

MPICH's ranks share a file ``/dev/shm/mpich_shm_*`` per node, unlinked only by ``MPI_Finalize``;
a killed ensemble's is removed by the launcher or a worker rank's watchdog
(:mod:`balsam.launcher.ensemble_shm`). A test that kills ranks together with those cleaners
(a lost node) leaves it unless it removes it, and files piled up over suite runs. While a test's
launchers run (:func:`launcher_procs.launchers`), :class:`ShmWatch` notes every such file
their descendants map (a look every :data:`LOOK_SECONDS` on a thread, ~1 ms); once they all
stopped, each must be gone -- the same inode, waited for up to :data:`GONE_SECONDS`, as
watchdogs unlink after stopping tasks. Only files the test's own processes mapped count: other
programs on the machine (another suite, MPI experiments) may leave theirs.

It also notes the MPICH Hydra topology files (``/tmp/hydra_hwloc_xmlfile_*``) those processes
hold open (:mod:`balsam.platform.mpich_files`): a test that SIGKILLs a launcher's ``mpiexec``
itself (a lost node, a killed launcher) leaves its proxy's, and :meth:`ShmWatch.remove_hydra`
removes what is left of them once the launchers stopped (Balsam's own kills remove theirs:
``tests/test_mpich_files.py``)."""
from __future__ import annotations

import glob
import os
import threading
import time
from typing import Callable

from balsam.launcher.ensemble_shm import children_by_parent, mapped_segments
from balsam.platform.mpich_files import PREFIX, held_files, unlink_same

LOOK_SECONDS = 0.5
GONE_SECONDS = 60.0


class ShmWatch:
    """Notes the shared-memory files mapped by descendants of ``roots()`` until :meth:`stop`;
    :meth:`left` says which of them are still there."""

    def __init__(self, roots: Callable[[], list[int]]) -> None:
        self.roots = roots
        self.seen: dict[str, tuple[int, int]] = {}
        self.hydra: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="shm-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(LOOK_SECONDS):
            self.look()

    def look(self) -> None:
        """Note the files mapped now by the roots' descendants."""
        roots = self.roots()
        if not roots:
            return
        children = children_by_parent()
        todo, found = list(roots), []
        while todo:
            kids = children.get(todo.pop(), [])
            found += kids
            todo += kids
        for path, ident in mapped_segments(found).items():
            self.seen.setdefault(path, ident)
        for path, ident in held_files(found).items():
            self.hydra.setdefault(path, ident)

    def stop(self) -> None:
        """Stop looking (the launchers have stopped)."""
        self._stop.set()
        self._thread.join()

    def remove_hydra(self) -> list[str]:
        """Once the launchers stopped: unlink the noted Hydra topology files still there (same
        inode); the paths removed."""
        return unlink_same(self.hydra)

    def left(self, timeout: float = GONE_SECONDS) -> list[str]:
        """The noted files still there (same inode) after up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = [p for p, ident in self.seen.items() if _same(p, ident)]
            if not left or time.monotonic() >= deadline:
                return sorted(left)
            time.sleep(0.1)


def hydra_files() -> set[str]:
    """The Hydra topology files in /tmp now."""
    return set(glob.glob(PREFIX + "*"))


def remove_unheld_hydra(before: set[str]) -> list[str]:
    """At the end of a test run: unlink the Hydra topology files made since ``before`` was
    listed that no process holds open (a proxy holds its file for its whole life and unlinks it
    when it ends, unless SIGKILLed): those a test's own SIGKILL of an ``mpiexec`` left outside
    :func:`launcher_procs.launchers` (``remove_hydra`` covers those inside). The paths removed."""
    new = hydra_files() - before
    if not new:
        return []
    held = held_files(int(p) for p in os.listdir("/proc") if p.isdigit())
    removed = []
    for path in sorted(new - held.keys()):
        try:
            os.unlink(path)
        except OSError:  # gone meanwhile, or another account's
            continue
        removed.append(path)
    return removed


def _same(path: str, ident: tuple[int, int]) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == ident
