"""The shared-memory files an ensemble's ranks leave in /dev/shm are found while they run and
removed after (:mod:`balsam.launcher.ensemble_shm`): real processes mapping real files, in a tree
shaped like Hydra's (launch -> proxy -> rank -> task). The killed ensembles are in
``tests/test_exactly_once.py``."""
from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from launcher_support import wait_for

from balsam.launcher.ensemble_shm import SHM_DIR, Segments

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="no /dev/shm")

SPAWN = "import subprocess, sys; subprocess.run([sys.executable, '-c'] + sys.argv[1:])"
"""Runs ``python -c ARGV[1] ARGV[2:]`` and waits: Hydra's mpiexec and its proxy, here."""
MAP = textwrap.dedent("""
    import mmap, subprocess, sys, time
    with open(sys.argv[1], "r+b") as fh:
        mapped = mmap.mmap(fh.fileno(), 4096)
    if len(sys.argv) > 3:  # a rank: its task maps a file of its own
        subprocess.Popen([sys.executable, "-c", sys.argv[3], sys.argv[4], sys.argv[5]])
    open(sys.argv[2], "w").close()
    time.sleep(600)
""")


def shm_file(name: str) -> str:
    path = os.path.join(SHM_DIR, f"mpich_shm_balsamtest{name}{os.getpid()}_0")
    with open(path, "wb") as fh:
        fh.write(b"\0" * 4096)
    return path


def test_only_the_ranks_segments_are_removed_after_the_ensemble_ended(tmp_path):
    rank_file, task_file, live_file = shm_file("rank"), shm_file("task"), shm_file("live")
    rank_ready, task_ready = str(tmp_path / "rank"), str(tmp_path / "task")
    launch = subprocess.Popen([sys.executable, "-c", SPAWN, SPAWN, MAP, rank_file, rank_ready,
                               MAP, task_file, task_ready], start_new_session=True)
    try:
        with open(live_file, "r+b") as fh:  # another job's file: this live process maps it
            live = mmap.mmap(fh.fileno(), 4096)
        segments = Segments(launch.pid, now=0.0)
        segments.look(0.1)
        assert segments.found == {}  # not due yet: MPI is still starting
        wait_for(lambda: os.path.exists(rank_ready) and os.path.exists(task_ready), 60,
                 "the rank and its task to map their files")
        segments.look(1.0)
        assert list(segments.found) == [rank_file]
    finally:
        os.killpg(launch.pid, signal.SIGKILL)  # the rank and its task are in the group too
        launch.wait()
    try:
        assert segments.remove() == [rank_file]
        assert not os.path.exists(rank_file)
        assert os.path.exists(task_file) and os.path.exists(live_file)
        assert segments.remove() == []  # gone already (as after MPI_Finalize)
    finally:
        live.close()
        for path in (rank_file, task_file, live_file):
            if os.path.exists(path):
                os.unlink(path)


def test_a_file_of_the_same_name_made_since_is_not_removed(tmp_path):
    path = shm_file("reused")
    try:
        segments = Segments(os.getpid(), now=0.0)
        st = os.stat(path)
        segments.found = {path: (st.st_dev, st.st_ino)}
        with open(path + ".new", "wb") as fh:  # made while the first exists: another inode
            fh.write(b"\0")
        os.rename(path + ".new", path)
        assert segments.remove() == [] and os.path.exists(path)
    finally:
        os.unlink(path)


def test_the_suites_check_notes_what_a_launchers_tree_maps_and_finds_what_is_left(tmp_path):
    # tests/shm_watch.py, run by every launchers() block: the files mapped below the roots
    # (the launchers) are noted; one still there after they stopped is reported, not others.
    from shm_watch import ShmWatch

    rank_file, other_file = shm_file("watched"), shm_file("other")
    ready = str(tmp_path / "rank")
    launch = subprocess.Popen([sys.executable, "-c", SPAWN, SPAWN, MAP, rank_file, ready],
                              start_new_session=True)
    watch = ShmWatch(lambda: [launch.pid])
    try:
        with open(other_file, "r+b") as fh:  # mapped by this process: not below the roots
            other = mmap.mmap(fh.fileno(), 4096)
        wait_for(lambda: os.path.exists(ready), 60, "the rank to map its file")
        watch.look()
        assert list(watch.seen) == [rank_file]
    finally:
        os.killpg(launch.pid, signal.SIGKILL)
        launch.wait()
        watch.stop()
    try:
        assert watch.left(timeout=0) == [rank_file]
        os.unlink(rank_file)
        assert watch.left(timeout=0) == []
    finally:
        other.close()
        for path in (rank_file, other_file):
            if os.path.exists(path):
                os.unlink(path)


def test_a_dead_ranks_watchdog_removes_only_unmapped_files_made_while_it_lived(tmp_path):
    # ensemble_shm.unlink_orphans (a worker rank died before telling its watchdog its segment),
    # in a directory of the test's own (in /dev/shm, another test's files would count): a file
    # made while the rank lived and mapped by nobody goes; another job's file made meanwhile
    # and mapped by its live rank stays, and so do files made before or after.
    import time

    from balsam.launcher.ensemble_shm import unlink_orphans
    from balsam.platform.mpich_files import SHM_PREFIX

    def made(name: str) -> str:  # (an MPICH name: hex)
        path = str(tmp_path / f"{SHM_PREFIX}{name.encode().hex()}_0")
        with open(path, "wb") as fh:
            fh.write(b"\0" * 4096)
        return path

    def clock_past(path: str) -> float:  # (ctime's coarse clock: a margin well past its slack)
        return wait_for(lambda: time.time() > os.stat(path).st_ctime + 0.2 and time.time(),
                        10, "the clock to move on")

    old = made("old")
    since = clock_past(old)
    orphan, live = made("orphan"), made("livejob")
    until = clock_past(live)
    wait_for(lambda: time.time() > until + 0.2, 10, "the clock to move on")
    young = made("young")
    with open(live, "r+b") as fh:
        mapped = mmap.mmap(fh.fileno(), 4096)
    try:
        assert unlink_orphans(since, until, wait=0.0, directory=str(tmp_path)) == [orphan]
        assert [os.path.exists(p) for p in (orphan, live, old, young)] == [False, True, True, True]
    finally:
        mapped.close()
