"""A SIGKILLed ``mpiexec`` leaves no Hydra topology file in /tmp when Balsam kills it
(:mod:`balsam.platform.mpich_files`): the real mpich wheel's Hydra with a real MPI rank. Only
the files of the run under test are looked at (other programs' runs may hold theirs)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import make_public_tmpdir, run_balsam
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, process_gone, settings, wait_for
from launcher_support import workdir as job_workdir

from balsam.launcher.ensemble_shm import Segments, children_by_parent, mapped_segments
from balsam.platform.mpich_files import PREFIX, held_by_group, held_files, unlink_same
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


def test_balsams_sigkill_of_an_mpiexec_removes_its_proxys_and_ranks_files(tmp_path):
    launch, ready = start(tmp_path)
    run = Run()
    try:
        wait_for(lambda: os.path.exists(ready), 120, "the rank to pass MPI_Init")
        run.note(launch.pid)
        run.noted = noted = held_by_group(launch.pid)
        topology = [p for p in noted if p.startswith(PREFIX)]
        assert len(topology) == 1, noted
        assert len(run.segments) == 1 and set(noted) == {*topology, *run.segments}
        assert all(os.path.exists(p) for p in noted)
        assert signal_group(launch.pid, signal.SIGKILL)
        assert launch.wait(60) == -signal.SIGKILL
        assert not [p for p in noted if os.path.exists(p)]  # removed right after the kill
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
        assert len(noted) == 1 and noted.items() <= held_by_group(launch.pid).items()
        os.killpg(launch.pid, signal.SIGKILL)
        launch.wait(60)
        watch.stop()
        watch.remove_hydra()
        assert not [p for p in noted if os.path.exists(p)]
    finally:
        watch.stop()
        cleanup(launch, run)


# An MPI task that ignores SIGTERM: only the launcher's SIGKILL of its mpiexec's group ends it.
# It writes the topology file its proxy (its parent) holds, and its own pid, once past MPI_Init.
IGNORING_RANK = """
import json, os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
from mpi4py import MPI
from balsam.platform.mpich_files import held_files
with open("held.tmp", "w") as fh:
    json.dump({"pid": os.getpid(), "held": held_files([os.getppid()])}, fh)
os.rename("held.tmp", "held.json")
for _ in range(3000):
    time.sleep(0.1)
"""


def test_a_launcher_that_sigkills_its_mpi_task_leaves_no_topology_file(db, cursor):
    scripts = make_public_tmpdir("balsam-hydra-")
    try:
        with open(os.path.join(scripts, "rank.py"), "w") as fh:
            fh.write(IGNORING_RANK)
        add_app(cursor, "ignoring", f"{sys.executable} {scripts}/rank.py")
        (job_id,) = add_jobs(cursor, [{"name": "victim", "application": "ignoring"}])
        held = os.path.join(job_workdir(db, cursor, job_id), "held.json")
        with settings(db, launcher=QUICK), launchers() as start:
            launcher = start("--consume-all", "--job-mode", "mpi")
            wait_for(lambda: os.path.exists(held), 120, "the task to pass MPI_Init")
            with open(held) as fh:
                run = json.load(fh)
            noted = {path: tuple(ident) for path, ident in run["held"].items()}
            try:
                assert len(noted) == 1 and all(os.path.exists(p) for p in noted), noted
                proc = run_balsam("killjob", "--id", job_id, "--yes")
                assert proc.returncode == 0, proc.stderr
                wait_for(lambda: process_gone(run["pid"]), 120, "the task to die of SIGKILL")
                assert launcher.wait(120) == 0
                assert not [p for p in noted if os.path.exists(p)]  # removed by the launcher
            finally:
                if not process_gone(run["pid"]):
                    os.kill(run["pid"], signal.SIGKILL)
                unlink_same(noted)
    finally:
        shutil.rmtree(scripts, ignore_errors=True)
