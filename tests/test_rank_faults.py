"""A serial-mode rank's own faults leave nothing behind (issue "Faults -- every run recorded,
nothing left behind"): real ensembles of ``balsam.launcher.serial_ranks`` under the mpich
wheel's ``mpiexec`` (as the launcher starts them, without a launcher: nothing else cleans up),
a real database, and a ``sitecustomize`` on the ranks' ``PYTHONPATH`` that acts inside the rank
(no test hook in Balsam's code). Nothing here is timed: every wait is for a condition.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap
from typing import Any

import pytest
from launcher_support import wait_for
from shm_watch import ShmWatch

from balsam.launcher.ensemble_shm import SHM_DIR
from balsam.launcher.ensemble_watch import report_path
from balsam.launcher.serial_mode import SerialConfig, ensemble_argv
from balsam.platform.early_rank import ensemble_environ
from balsam.platform.mpi.choice import LauncherChoice, wheel_mpiexec
from balsam.platform.mpich_files import unlink_same

pytestmark = pytest.mark.skipif(wheel_mpiexec() is None or not os.path.isdir(SHM_DIR),
                                reason="needs the mpich wheel and /dev/shm")
"""(Not slow: 0.3-0.5 s a test, the MPI start-up.)"""

SITE = textwrap.dedent('''
    import atexit, builtins, os, signal, sys
    MARKS, RANK = os.environ.get("BALSAM_TEST_MARKS", ""), os.environ.get("PMI_RANK", "")

    def note(name, text):
        with open(os.path.join(MARKS, name + ".tmp"), "w") as fh:
            fh.write(text)
        os.replace(os.path.join(MARKS, name + ".tmp"), os.path.join(MARKS, name))

    def mark():  # at exit: a rank's handler, as a user's or a task module's would be
        if sys.argv[0].endswith("serial_ranks.py"):
            note(f"atexit{RANK}", str(os.getpid()))

    if MARKS and RANK and os.environ.get("BALSAM_TEST_ATEXIT"):
        atexit.register(mark)
    if MARKS and RANK and os.environ.get("BALSAM_TEST_UNFLUSHED"):
        # files a user's module leaves open, their writes still in Python's buffers at exit
        LEFT_OPEN = [open(os.path.join(MARKS, f"text{RANK}"), "w"),
                     open(os.path.join(MARKS, f"binary{RANK}"), "wb")]
        LEFT_OPEN[0].write(f"rank {RANK} text")
        LEFT_OPEN[1].write(f"rank {RANK} binary".encode())
    if MARKS and RANK and os.environ.get("BALSAM_TEST_STALLED_PIPE"):
        # a writer left open on a pipe nobody reads (here: its read end is this rank's and
        # never read), full, one byte in Python's buffer: flushing it would block for good
        READ_END, write_end = os.pipe()
        os.set_blocking(write_end, False)
        try:
            while True:
                os.write(write_end, b"x" * 65536)
        except BlockingIOError:
            pass
        os.set_blocking(write_end, True)
        STALLED = open(write_end, "wb")
        STALLED.write(b"x")
    if MARKS and RANK and RANK == os.environ.get("BALSAM_TEST_KILL_RANK"):
        real_import = builtins.__import__

        def killing_import(*args, **kwargs):
            # SIGKILL this rank at the first import that returns once MPI_Init mapped its
            # segment: before the rank can tell anyone (an OOM kill in that window)
            module = real_import(*args, **kwargs)
            if "mpi4py.MPI" in sys.modules:
                with open("/proc/self/maps") as fh:
                    paths = {line.split()[-1] for line in fh if " /dev/shm/mpich_shm_" in line}
                if paths:
                    note("segments", "\\n".join(f"{os.stat(p).st_dev} {os.stat(p).st_ino} {p}"
                                               for p in sorted(paths)))
                    os.kill(os.getpid(), signal.SIGKILL)
            return module

        builtins.__import__ = killing_import
''')


def start_ensemble(db: str, tmp_path: Any, **env: str) -> tuple[subprocess.Popen[bytes],
                                                                SerialConfig, str]:
    """1 master + 1 worker started before a session (rank 0 reads its id on stdin), with
    :data:`SITE` as the ranks' ``sitecustomize`` and the environment the launcher gives it;
    (the MPI launch, the config, the marks directory)."""
    site, marks = tmp_path / "site", tmp_path / "marks"
    site.mkdir()
    marks.mkdir()
    (site / "sitecustomize.py").write_text(SITE)
    config = SerialConfig(db_path=db, session_id=0, settings={"launcher": {}},
                          hosts=["localhost"], cores_per_node=2, gpus_per_node=0,
                          log_path=str(tmp_path / "ranks.log"), watch_dir=str(tmp_path / "watch"))
    argv, _ = ensemble_argv(config, LauncherChoice("mpich", wheel_mpiexec(), "test"),
                            os.environ.get("PATH", os.defpath), wheel_mpiexec())
    path = os.pathsep.join([str(site)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    out = open(tmp_path / "ensemble.out", "wb")
    with out:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=ensemble_environ({**os.environ, "PYTHONPATH": path,
                                                      "BALSAM_TEST_MARKS": str(marks), **env},
                                                     config.rank_evidence))
    return proc, config, str(marks)


def output(tmp_path: Any) -> str:
    return "\n".join(p.read_text(errors="replace") for p in
                     (tmp_path / "ensemble.out", tmp_path / "ranks.log") if p.exists())


def stop_launch(proc: subprocess.Popen[bytes]) -> None:
    """Close the MPI launch's stdin (rank 0: no session, exit) and reap it; SIGKILL its group
    if it does not end."""
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()


def report_state(config: SerialConfig, rank: int) -> str:
    try:
        with open(report_path(config.watch_dir, rank, config.generation)) as fh:
            return str(json.load(fh)["state"])
    except (OSError, ValueError):
        return ""


@pytest.mark.parametrize("killed", ["1", "0"])
def test_a_rank_killed_right_after_mpi_init_leaves_no_shared_memory_file(db, tmp_path, killed):
    # The rank is SIGKILLed before it can tell anyone the segment (worker 1: its watchdog;
    # before, it had not even started it). Worker 1's watchdog, started before MPI_Init, finds
    # the file made while its rank lived, mapped by no one once Hydra killed the other rank
    # too, and removes it (or the one its rank told it, if it got that far before Hydra's
    # kill). Nothing else cleans up here (no launcher; the master has no watchdog).
    proc, config, marks = start_ensemble(db, tmp_path, BALSAM_TEST_KILL_RANK=killed)
    watch = ShmWatch(lambda: [proc.pid] if proc.returncode is None else [])
    segments: dict[str, tuple[int, int]] = {}
    try:
        wait_for(lambda: os.path.exists(os.path.join(marks, "segments")) or proc.poll() is not None,
                 120, f"rank {killed} to map its segment")
        with open(os.path.join(marks, "segments")) as fh:
            for line in fh.read().splitlines():
                dev, ino, path = line.split(" ", 2)
                segments[path] = (int(dev), int(ino))
        assert segments, output(tmp_path)
    finally:
        stop_launch(proc)
        watch.stop()
        watch.remove_hydra()
    watch.seen.update(segments)
    left = watch.left()  # (waits up to 60 s for the watchdog's removal)
    unlink_same(segments)  # (a failure must not leave them to the next test)
    assert left == [], f"the killed rank's segment is left: {left}\n{output(tmp_path)}"
    wait_for(lambda: report_state(config, 1) == "stopped", 60,
             f"rank 1's watchdog to report\n{output(tmp_path)}")


def test_an_atexit_handler_registered_in_a_rank_runs_at_its_exit(db, tmp_path):
    # exit_rank ends the ranks with the C library's exit (no interpreter teardown); the rank's
    # atexit handlers run before MPI_Finalize all the same, in the master and in the worker.
    proc, config, marks = start_ensemble(db, tmp_path, BALSAM_TEST_ATEXIT="1")
    stop_launch(proc)  # no session: the master says so to the worker; both exit via exit_rank
    marked = {name: open(os.path.join(marks, name)).read()
              for name in sorted(os.listdir(marks)) if name.startswith("atexit")}
    assert sorted(marked) == ["atexit0", "atexit1"], output(tmp_path)
    assert all(pid.isdigit() for pid in marked.values())
    assert report_state(config, 1) == "stopped", output(tmp_path)
    assert "Traceback" not in output(tmp_path)


def test_what_a_rank_left_in_an_open_files_buffer_reaches_the_file_at_its_exit(db, tmp_path):
    # exit_rank skips the interpreter's teardown, whose finalizers would flush files left
    # open; it flushes open file objects itself (before: both files stayed empty)
    proc, config, marks = start_ensemble(db, tmp_path, BALSAM_TEST_UNFLUSHED="1")
    stop_launch(proc)
    for rank in ("0", "1"):
        with open(os.path.join(marks, f"text{rank}")) as fh:
            assert fh.read() == f"rank {rank} text", output(tmp_path)
        with open(os.path.join(marks, f"binary{rank}"), "rb") as fb:
            assert fb.read() == f"rank {rank} binary".encode(), output(tmp_path)
    assert "Traceback" not in output(tmp_path)


def test_a_full_pipe_left_open_in_a_rank_does_not_hold_its_exit(db, tmp_path):
    # exit_rank flushes the files a rank left open (a regular file is open here, so it looks);
    # a writer on a pipe whose reader never reads would block that flush for good -- the rank,
    # then the whole MPI launch and the launcher waiting for it (before this change the rank
    # just exited). Only writers on regular files are flushed: the launch ends by itself (the
    # helper SIGKILLs it after 120 s) and the regular files still get their data.
    proc, _, marks = start_ensemble(db, tmp_path, BALSAM_TEST_UNFLUSHED="1",
                                    BALSAM_TEST_STALLED_PIPE="1")
    stop_launch(proc)
    assert proc.returncode >= 0, f"the launch was killed after 120 s\n{output(tmp_path)}"
    for rank in ("0", "1"):
        with open(os.path.join(marks, f"text{rank}")) as fh:
            assert fh.read() == f"rank {rank} text", output(tmp_path)
    assert "Traceback" not in output(tmp_path)
