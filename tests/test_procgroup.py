"""balsam.platform.procgroup against pid reuse: a group id is its leader's pid, and pids wrap
within minutes when a suite starts thousands of processes. Given the leader's start time, a group
id that now names a process started at another time is neither signalled nor alive."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from balsam.platform.process import start_time, stat_fields
from balsam.platform.procgroup import live_members, reused, signal_group


def test_a_start_time_names_one_process_a_zombie_keeps_it_and_a_reaped_pid_has_none():
    proc = subprocess.Popen(["sleep", "600"])
    try:
        started = start_time(proc.pid)
        assert started is not None and started == int(stat_fields(proc.pid)[19])
        assert start_time(proc.pid) == started  # the same process: the same value every time
        proc.kill()
        end = time.monotonic() + 60
        while stat_fields(proc.pid)[0] != b"Z":  # dead, not reaped: the pid is still ours
            assert time.monotonic() < end, "the killed child never became a zombie"
            time.sleep(0.01)
        assert start_time(proc.pid) == started
    finally:
        proc.kill()
        proc.wait()
    assert start_time(proc.pid) is None and start_time(0) is None and start_time(-5) is None


def test_a_group_id_naming_a_process_started_at_another_time_is_not_signalled_nor_alive():
    leader = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        started = start_time(leader.pid)
        assert started is not None
        assert not reused(leader.pid, started) and not reused(leader.pid, None)
        assert live_members(leader.pid, started) == [leader.pid]
        assert signal_group(leader.pid, 0, started)
        # As if the id had been recorded for an earlier (or later) process given the same pid:
        # the live group that holds it now is somebody else's.
        for other in (started - 1, started + 1):
            assert reused(leader.pid, other)
            assert live_members(leader.pid, other) == []
            assert signal_group(leader.pid, signal.SIGKILL, other) is False  # nothing sent
        assert leader.poll() is None and live_members(leader.pid) == [leader.pid]
        assert signal_group(leader.pid, signal.SIGKILL, started)  # the right one is sent
        assert leader.wait(60) == -signal.SIGKILL
    finally:
        leader.kill()
        leader.wait()
    # Ended and reaped: the id names nothing (or, one day, another group -- see above).
    assert not signal_group(leader.pid, signal.SIGKILL, started)
    assert live_members(leader.pid, started) == []


# One process at a time, each forking its successor and exiting (a daemon's double fork, a script
# leaving a process in the background, over and over): the group always has a live member. It
# runs until its stdin (the test's pipe) closes, 60 s at most.
RELAY = """
import os, select, sys, time
end = time.monotonic() + 60
while not select.select([sys.stdin], [], [], 0)[0] and time.monotonic() < end:
    if os.fork():
        os._exit(0)
    time.sleep(0.01)
"""


def test_a_group_handed_from_member_to_new_member_is_alive_at_every_look():
    # Before: one pass through /proc missed the child forked after its listing once the parent
    # had exited before its read, and called the group ended (the local scheduler's
    # "finished" for a job whose background process ran on, under load).
    relay = subprocess.Popen([sys.executable, "-S", "-c", RELAY], stdin=subprocess.PIPE,
                             start_new_session=True)
    started = start_time(relay.pid)  # (the first link stays unreaped: the id stays ours)
    assert relay.stdin is not None
    try:
        looks = [live_members(relay.pid, started) for _ in range(20)]
        assert [i for i, live in enumerate(looks) if not live] == []
    finally:
        relay.stdin.close()  # the links read end-of-file and stop
        end = time.monotonic() + 60
        while live_members(relay.pid, started):
            assert time.monotonic() < end, "the relay never stopped"
            time.sleep(0.01)
        relay.wait()


def test_a_group_of_zombies_only_has_no_live_member():
    leader = subprocess.Popen(["true"], start_new_session=True)
    try:
        end = time.monotonic() + 60
        while stat_fields(leader.pid)[0] != b"Z":  # exited, not reaped: the group is a zombie
            assert time.monotonic() < end, "the leader never exited"
            time.sleep(0.01)
        assert live_members(leader.pid, start_time(leader.pid)) == []
    finally:
        leader.wait()
