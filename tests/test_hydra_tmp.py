"""A SIGKILLed ``mpiexec`` leaves no Hydra topology file in /tmp when Balsam kills it
(:mod:`balsam.platform.hydra_tmp`): the real mpich wheel's Hydra with a real MPI rank. Only
the files of the run under test are looked at (other programs' runs may hold theirs)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from launcher_support import wait_for

from balsam.launcher.ensemble_shm import Segments, children_by_parent, mapped_segments
from balsam.platform.hydra_tmp import PREFIX, held_by_group, held_files, unlink_same
from balsam.platform.procgroup import signal_group

MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.access(MPIEXEC, os.X_OK), reason="no mpich wheel")]

RANK = textwrap.dedent("""
    import os, sys, time
    from mpi4py import MPI
    with open(sys.argv[1] + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(300)
""")


def start(tmp_path) -> tuple[subprocess.Popen[bytes], str]:
    """The wheel's Hydra (``fork`` bootstrap) running one rank that has been through
    ``MPI_Init`` once the returned ready file exists."""
    ready = str(tmp_path / "ready")
    launch = subprocess.Popen([MPIEXEC, "-launcher", "fork", "-n", "1", "-hosts", "localhost:1",
                               "-bind-to", "none", sys.executable, "-c", RANK, ready],
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    return launch, ready


def descendants(pid: int) -> list[int]:
    children, todo, found = children_by_parent(), [pid], []
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


class Run:
    """What the run under test made, noted while it ran: its processes below ``mpiexec``
    (proxy, rank), the rank's /dev/shm segment, the proxy's topology file."""

    def __init__(self) -> None:
        self.tree: list[int] = []
        self.segments: dict[str, tuple[int, int]] = {}
        self.noted: dict[str, tuple[int, int]] = {}

    def note(self, launch_pid: int) -> None:
        self.tree = descendants(launch_pid)
        self.segments = mapped_segments(self.tree)


def cleanup(launch: subprocess.Popen[bytes], run: Run) -> None:
    """Whatever the run left: its processes, its /dev/shm segment, its topology file."""
    for pid in [launch.pid, *run.tree]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    launch.wait()
    unlink_same(run.segments)
    unlink_same(run.noted)


def test_balsams_sigkill_of_an_mpiexec_removes_its_proxys_topology_file(tmp_path):
    launch, ready = start(tmp_path)
    run = Run()
    try:
        wait_for(lambda: os.path.exists(ready), 120, "the rank to pass MPI_Init")
        run.note(launch.pid)
        run.noted = noted = held_by_group(launch.pid)
        assert len(noted) == 1 and next(iter(noted)).startswith(PREFIX), noted
        path = next(iter(noted))
        assert os.path.exists(path)
        assert signal_group(launch.pid, signal.SIGKILL)
        assert launch.wait(60) == -signal.SIGKILL
        assert not os.path.exists(path)  # removed by signal_group right after the kill
    finally:
        cleanup(launch, run)


def test_an_ensembles_topology_file_is_removed_after_any_kill(tmp_path):
    # The launcher's look at its ensemble notes the proxy's file too; a kill by something
    # else (here: the test's own killpg) leaves it, and Segments.remove removes it.
    launch, ready = start(tmp_path)
    run = Run()
    try:
        wait_for(lambda: os.path.exists(ready), 120, "the rank to pass MPI_Init")
        run.note(launch.pid)
        segments = Segments(launch.pid, now=0.0)
        segments.look(1.0)
        run.noted = noted = dict(segments.hydra)
        assert list(noted) == list(held_files(children_by_parent()[launch.pid]))
        assert len(noted) == 1 and list(segments.found) == list(run.segments)
        os.killpg(launch.pid, signal.SIGKILL)
        launch.wait(60)
        assert sorted(segments.remove()) == sorted([*noted, *run.segments])
        assert not [p for p in [*noted, *run.segments] if os.path.exists(p)]
    finally:
        cleanup(launch, run)


def test_the_suites_watch_removes_what_a_tests_own_kill_of_mpiexec_left(tmp_path):
    # tests/shm_watch.py (every launchers() block) notes the files the launchers' trees hold
    # and removes those left once they stopped: a test that kills an mpiexec cleans up.
    from shm_watch import ShmWatch

    launch, ready = start(tmp_path)
    run = Run()
    watch = ShmWatch(lambda: [launch.pid])
    try:
        wait_for(lambda: os.path.exists(ready), 120, "the rank to pass MPI_Init")
        run.note(launch.pid)
        watch.look()
        run.noted = noted = dict(watch.hydra)
        assert len(noted) == 1 and noted == held_by_group(launch.pid)
        os.killpg(launch.pid, signal.SIGKILL)
        launch.wait(60)
        watch.stop()
        watch.remove_hydra()
        assert not [p for p in noted if os.path.exists(p)]
    finally:
        watch.stop()
        cleanup(launch, run)
