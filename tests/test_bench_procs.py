"""benchmarks/_procs.py: a benchmark's child that times out, or finishes leaving processes
behind, leaves nothing running: its descendants (also those in sessions of their own, as
mpiexec's ranks) and its session's orphans are ended."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import _procs  # noqa: E402


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow  # a 1 s time-out and a 0.5 s grace at least
def test_a_child_that_times_out_is_ended_with_its_whole_family(tmp_path) -> None:
    # The child writes its family's pids, then waits for ever. On a loaded machine it may not
    # have written them all before the time-out: then a longer time-out is tried (each time,
    # every process it did start must be gone).
    pids = tmp_path / "pids"
    script = (f"sleep 1000 & echo $! >> {pids}; setsid sleep 1000 & echo $! >> {pids}; "
              f"echo $$ >> {pids}; wait")
    for timeout in (1, 4, 16, 64):
        pids.write_text("")
        with pytest.raises(_procs.RunTimeout) as caught:
            _procs.run_in_session(["bash", "-c", script], what="the tree", timeout=timeout,
                                  grace=0.5)
        assert f"the tree did not finish in {timeout} s" in str(caught.value)
        started = [int(pid) for pid in pids.read_text().split()]
        assert [pid for pid in started if alive(pid)] == []
        if len(started) == 3:
            break
    assert len(started) == 3, started


def test_processes_a_finished_child_left_behind_are_ended(capsys) -> None:
    proc = _procs.run_in_session(["bash", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"],
                                 what="the leaver", timeout=60, grace=0.5)
    orphan = int(proc.stdout.split()[0])
    assert not alive(orphan)
    assert "# the leaver: 1 process(es) outlived it and were ended" in capsys.readouterr().out


def test_a_session_id_naming_a_process_started_at_another_time_has_no_family() -> None:
    # The id of a session that ended (its leader reaped) may be another's by now: given the
    # leader's start time, a live session whose leader started at another time is left alone.
    leader = subprocess.Popen(["bash", "-c", "sleep 1000 & wait"], start_new_session=True)
    try:
        started = _procs.start_of(leader.pid)
        assert started is not None
        deadline = time.monotonic() + 60
        while len(_procs.family(leader.pid, started)) < 2:  # bash and its sleep
            assert time.monotonic() < deadline, "the sleep never started"
            time.sleep(0.05)
        assert _procs.family(leader.pid, str(int(started) - 1)) == {}
        assert _procs.end_session(leader.pid, 0.5, str(int(started) - 1)) == 0  # nothing sent
        assert leader.poll() is None
        assert _procs.end_session(leader.pid, 0.5, started) == 2
        assert leader.wait(60) == -signal.SIGTERM
    finally:
        leader.kill()
        leader.wait()
