"""balsam.platform.process: the one liveness check (zombies are dead), pidfd opener, child wait."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest

from balsam.platform.process import pidfd_open, process_alive, stat_fields, wait_child


def _exited_unreaped() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    end = time.monotonic() + 10
    while time.monotonic() < end:  # wait for the zombie without reaping it
        fields = stat_fields(proc.pid)
        if fields and fields[0] == b"Z":
            break
        time.sleep(0.01)
    return proc


def test_this_process_is_alive_and_pid_zero_is_not():
    assert process_alive(os.getpid())
    assert not process_alive(0)
    assert not process_alive(-1)


def test_a_zombie_counts_as_dead_and_a_reaped_pid_is_gone():
    proc = _exited_unreaped()
    assert stat_fields(proc.pid)[0] == b"Z"
    assert not process_alive(proc.pid)
    proc.wait()
    assert stat_fields(proc.pid) is None
    assert not process_alive(proc.pid)


def test_pidfd_becomes_readable_when_the_process_exits():
    # The child blocks on its stdin: it cannot end before the first look, whatever the load
    # (a 0.2-s sleep could end first when the machine paused this process that long).
    proc = subprocess.Popen([sys.executable, "-S", "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    assert proc.stdin is not None
    fd = pidfd_open(proc.pid)
    try:
        if fd is None:
            pytest.skip("no pidfd_open on this kernel or Python (callers poll instead)")
        assert select.select([fd], [], [], 0)[0] == []
        proc.stdin.close()
        assert select.select([fd], [], [], 60)[0] == [fd]
    finally:
        proc.stdin.close()
        if fd is not None:
            os.close(fd)
        proc.wait()


def test_wait_child_returns_the_status_of_a_child_that_exits() -> None:
    proc = subprocess.Popen([sys.executable, "-S", "-c", "raise SystemExit(3)"])
    assert wait_child(proc, 60.0) == 3
    assert proc.returncode == 3  # reaped
    assert wait_child(proc, 60.0) == 3  # already reaped: the status again


def test_wait_child_returns_none_while_the_child_runs_and_its_status_once_it_ends() -> None:
    # The child blocks on its stdin: it cannot end before the pipe closes, whatever the load.
    proc = subprocess.Popen([sys.executable, "-S", "-c", "import sys; sys.stdin.read()"],
                            stdin=subprocess.PIPE)
    try:
        assert wait_child(proc, 0.05) is None
        assert proc.returncode is None
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
    assert wait_child(proc, 60.0) == 0
