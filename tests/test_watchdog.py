"""The task watchdog: process groups registered by a process that dies are stopped."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable
from typing import Optional

from launcher_support import kill_group_of, process_gone, wait_for

from balsam.platform.process import start_time

STARTS: dict[int, Optional[int]] = {}
"""Start times of the processes the owners print, taken at once (they run): a test's cleanup
kills one only while its pid still names it (see launcher_support.kill_group_of)."""


def pids_in(line: str) -> list[int]:
    pids = [int(x) for x in line.split()]
    STARTS.update((pid, start_time(pid)) for pid in pids)
    return pids


def kill_groups_left(pids: Iterable[int]) -> None:
    for pid in pids:
        kill_group_of(pid, STARTS.get(pid))

OWNER = textwrap.dedent("""
    import os, subprocess, sys, time
    from balsam.launcher.watchdog import Watchdog
    dog = Watchdog(float(sys.argv[1]))
    kept = subprocess.Popen(["sleep", "60"], start_new_session=True, stderr=subprocess.DEVNULL)
    reaped = subprocess.Popen(["sleep", "60"], start_new_session=True, stderr=subprocess.DEVNULL)
    dog.add(kept.pid)
    dog.add(reaped.pid)
    dog.remove(reaped.pid)  # the owner says this one is its business
    print(kept.pid, reaped.pid, dog.proc.pid, flush=True)
    if sys.argv[2] == "close":
        reaped.kill(); reaped.wait(); kept.kill(); kept.wait(); dog.remove(kept.pid); dog.close()
        print("closed", flush=True)
    time.sleep(60)
""")


def start_owner(grace: str, how: str) -> tuple[subprocess.Popen, list[int]]:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, grace, how], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    return owner, pids_in(owner.stdout.readline())


def ignores(pid: int, sig: int) -> bool:
    with open(f"/proc/{pid}/status") as fh:
        mask = next(int(line.split()[1], 16) for line in fh if line.startswith("SigIgn:"))
    return bool(mask & (1 << (sig - 1)))


def test_groups_registered_by_a_killed_owner_are_stopped_and_others_left_alone():
    owner, (kept, reaped, dog) = start_owner("0.5", "die")
    try:
        owner.send_signal(signal.SIGKILL)
        owner.wait(5)
        wait_for(lambda: process_gone(kept), 30, "the registered task to be stopped")
        wait_for(lambda: process_gone(dog), 30, "the watchdog to exit")
        assert not process_gone(reaped)
        assert owner.stderr is not None
        assert (f"balsam watchdog: process {owner.pid} exited with 1 task(s) still running: "
                f"stopped process group(s) {kept}") in owner.stderr.read()
    finally:
        kill_groups_left((kept, reaped))


def test_a_task_ignoring_sigterm_is_killed_after_the_grace():
    from balsam.launcher.watchdog import kill_groups

    stubborn = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 30 & wait; sleep 30"],
                                start_new_session=True)
    wait_for(lambda: ignores(stubborn.pid, signal.SIGTERM), 60, "sh to ignore SIGTERM")
    began = time.monotonic()
    starts = {stubborn.pid: start_time(stubborn.pid), 999999: None}
    assert kill_groups([stubborn.pid, 999999], 0.5, starts=starts) == [stubborn.pid]
    assert stubborn.wait(30) == -signal.SIGKILL
    assert 0.4 < time.monotonic() - began < 20  # the grace, not the 30-s sleeps


def test_a_group_whose_id_names_a_process_started_at_another_time_is_left_alone():
    from balsam.launcher.watchdog import kill_groups, still_alive

    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        started = start_time(other.pid)
        assert started is not None
        # Registered for a leader that started earlier: the task ended and its id was reused.
        reused = {other.pid: started - 1}
        assert kill_groups([other.pid], 0.1, starts=reused) == []  # no SIGTERM sent
        assert still_alive([other.pid], 0.1, starts=reused) == []
        assert other.poll() is None
        assert still_alive([other.pid], 0, starts={other.pid: started}) == [other.pid]
        assert kill_groups([other.pid], 0.1, starts={other.pid: started}) == [other.pid]
        assert other.wait(60) == -signal.SIGTERM
    finally:
        other.kill()
        other.wait()


def test_a_group_found_by_its_job_id_names_its_leaders_start_or_that_it_was_gone():
    """A task whose starter died before registering it is found by its ``BALSAM_JOB_ID``
    with its leader's start time, or LEADER_GONE if the leader had ended (its child lives on
    in the group): a process taking that id later is then never taken for it, and the
    leftover group is still stopped."""
    from balsam.launcher.group_stop import LEADER_GONE, groups_of_job, kill_groups

    env = dict(os.environ, BALSAM_JOB_ID=f"found-{os.getpid()}")
    ended = subprocess.Popen(["sh", "-c", "sleep 600 & echo $!"], stdout=subprocess.PIPE,
                             text=True, start_new_session=True, env=env)
    assert ended.stdout is not None
    (left,) = pids_in(ended.stdout.readline())
    ended.wait(30)  # reaped: its group lives on in the sleep it left
    live = subprocess.Popen(["sleep", "600"], start_new_session=True, env=env)
    STARTS[live.pid] = start_time(live.pid)
    try:
        found = groups_of_job(env["BALSAM_JOB_ID"])
        assert found == {ended.pid: LEADER_GONE, live.pid: STARTS[live.pid]}
        assert kill_groups(sorted(found), 0.5, starts=found) == sorted(found)
        wait_for(lambda: process_gone(left), 10, "the leftover to be stopped")
        assert live.wait(10) == -signal.SIGTERM
    finally:
        kill_groups_left((left, live.pid))


def test_a_clean_close_stops_nothing_and_the_watchdog_exits():
    owner, (kept, reaped, dog) = start_owner("0.5", "close")
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "closed"
        wait_for(lambda: process_gone(dog), 30, "the watchdog to exit")
    finally:
        owner.kill()
        owner.wait(5)
    assert owner.stderr is not None and "balsam watchdog" not in owner.stderr.read()


def test_the_watchdog_ignores_sigterm_and_sigint_from_the_terminal():
    owner, (kept, reaped, dog) = start_owner("0.5", "die")
    try:
        wait_for(lambda: ignores(dog, signal.SIGTERM), 10, "the watchdog to set its handlers")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            os.kill(dog, sig)
        time.sleep(0.3)
        assert not process_gone(dog) and not process_gone(kept)
        owner.kill()
        owner.wait(5)
        wait_for(lambda: process_gone(kept), 30, "the registered task to be stopped")
    finally:
        kill_groups_left((kept, reaped))


REPORTING_OWNER = textwrap.dedent("""
    import os, subprocess, sys, time
    from balsam.launcher.watchdog import Watchdog
    dog = Watchdog(0.5, report=sys.argv[1])
    def task(cmd):
        return subprocess.Popen(["sh", "-c", cmd], start_new_session=True)
    early = task("exit 0"); early.wait()
    dog.add(early.pid, "recorded-job")
    dog.remove(early.pid)
    dog.all_recorded()
    ended = task("exit 0"); ended.wait()
    dog.add(ended.pid, "ended-job")
    dog.remove(ended.pid)
    stubborn = task("trap '' TERM; i=0; while [ $i -lt 6000 ]; do sleep 0.1; i=$((i+1)); done")
    dog.expect("stubborn-job")
    dog.add(stubborn.pid, "stubborn-job")
    dog.expect("unregistered-job")  # the owner dies before it can register this one
    hidden = subprocess.Popen(["sh", "-c", "i=0; while [ $i -lt 6000 ]; do sleep 0.1; i=$((i+1)); "
                               "done"], start_new_session=True,
                              env=dict(os.environ, BALSAM_JOB_ID="unregistered-job"))
    print(stubborn.pid, hidden.pid, flush=True)
    time.sleep(60)
""")


def test_a_report_says_running_until_every_task_is_dead_and_lists_unrecorded_starts(tmp_path):
    import json

    report = str(tmp_path / "rank1.json")

    def read() -> dict:
        with open(report) as fh:
            return json.load(fh)

    owner = subprocess.Popen([sys.executable, "-c", REPORTING_OWNER, report],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    stubborn, hidden = pids_in(owner.stdout.readline())
    try:
        assert read()["state"] == "running"  # written before any task could start
        owner.kill()
        owner.wait(5)
        wait_for(lambda: read()["state"] != "running", 10, "the watchdog's final report")
        final = read()
        assert process_gone(stubborn)  # SIGTERM ignored: SIGKILLed, and gone before the report
        assert process_gone(hidden)  # found by its BALSAM_JOB_ID
        assert final["state"] == "stopped" and final["alive"] == []
        assert sorted(final["started"]) == ["ended-job", "stubborn-job", "unregistered-job"]
    finally:
        kill_groups_left((stubborn, hidden))


BATCHING_OWNER = textwrap.dedent("""
    import os, subprocess, sys, time
    from balsam.launcher.watchdog import Watchdog
    dog = Watchdog(0.5, report=sys.argv[1])
    def task(job):
        return subprocess.Popen(["sleep", "60"], start_new_session=True,
                                env=dict(os.environ, BALSAM_JOB_ID=job))
    dog.expect_all(["a", "b", "c"])  # one write for the whole batch, before the first start
    a, b, c = task("a"), task("b"), task("c")
    dog.add_all([(a.pid, "a"), (b.pid, "b")])  # the owner dies before it registers c
    dog.remove(b.pid, defer=True)
    dog.flush()
    print(a.pid, b.pid, c.pid, flush=True)
    time.sleep(60)
""")


def test_batched_lines_keep_the_guarantee_registered_and_expected_tasks_are_stopped(tmp_path):
    import json

    report = str(tmp_path / "rank1.json")
    owner = subprocess.Popen([sys.executable, "-c", BATCHING_OWNER, report],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    a, b, c = pids_in(owner.stdout.readline())
    try:
        owner.kill()
        owner.wait(5)
        wait_for(lambda: process_gone(a) and process_gone(c), 10, "a and c to be stopped")

        def state() -> str:
            with open(report) as fh:
                return json.load(fh)["state"]

        wait_for(lambda: state() != "running", 10, "the watchdog's final report")
        assert not process_gone(b)  # removed (deferred, then flushed): the owner's business
        with open(report) as fh:
            assert sorted(json.load(fh)["started"]) == ["a", "b", "c"]
    finally:
        kill_groups_left((a, b, c))


SHM_OWNER = textwrap.dedent("""
    import mmap, os, sys, time
    from balsam.launcher.ensemble_shm import mapped_segments
    from balsam.launcher.watchdog import Watchdog
    dog = Watchdog(0.5, report=sys.argv[3] if len(sys.argv) > 3 else "")
    with open(sys.argv[1], "r+b") as fh:  # as MPI_Init maps the node's segment
        mapped = mmap.mmap(fh.fileno(), 4096)
    dog.segments(mapped_segments([os.getpid()]))
    if sys.argv[2] == "close":
        dog.close()
    print(dog.proc.pid if dog.proc else 0, flush=True)
    time.sleep(60)
""")


def test_the_shared_memory_file_of_a_rank_that_died_is_removed_and_not_after_a_close():
    files = {}
    for how in ("die", "close"):
        files[how] = f"/dev/shm/mpich_shm_balsamtest{how}{os.getpid()}_0"
        with open(files[how], "wb") as fh:
            fh.write(b"\0" * 4096)
    owners = {how: subprocess.Popen([sys.executable, "-c", SHM_OWNER, path, how],
                                    stdout=subprocess.PIPE, text=True)
              for how, path in files.items()}
    try:
        dogs = {how: int(owner.stdout.readline()) for how, owner in owners.items()}
        assert dogs["close"] == 0  # closed (and reaped) before the line
        owners["die"].kill()
        owners["die"].wait(5)
        wait_for(lambda: process_gone(dogs["die"]), 30, "the watchdog to exit")
        assert not os.path.exists(files["die"])
        assert os.path.exists(files["close"])  # MPI_Finalize's business after a normal end
    finally:
        for owner in owners.values():
            owner.kill()
            owner.wait(5)
        for path in files.values():
            if os.path.exists(path):
                os.unlink(path)


def test_the_shared_memory_file_goes_even_if_the_report_directory_was_removed(tmp_path):
    """A swept session's watch directory is removed (a worker's watchdog may report later):
    the report cannot be written, the rank's shared-memory file is removed all the same."""
    path = f"/dev/shm/mpich_shm_balsamtestgone{os.getpid()}_0"
    with open(path, "wb") as fh:
        fh.write(b"\0" * 4096)
    reports = tmp_path / "watch"
    reports.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", SHM_OWNER, path, "die",
                              str(reports / "rank1.json")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        dog = int(owner.stdout.readline())
        shutil.rmtree(reports)
        owner.kill()
        owner.wait(5)
        wait_for(lambda: process_gone(dog), 30, "the watchdog to exit")
        assert not os.path.exists(path)
    finally:
        owner.kill()
        owner.wait(5)
        if os.path.exists(path):
            os.unlink(path)


def test_a_task_in_the_middle_of_its_exec_has_its_environment_read():
    """Right after ``subprocess.Popen`` returns, the child may still be laying out its new
    image: its ``/proc/<pid>/environ`` is empty for a moment (a plain read missed it in 84 of
    400 starts here), and :func:`groups_of_job` missed such a task of a starter that died at
    once. The read it uses waits (bounded) for the environment."""
    from balsam.launcher.group_stop import _environ

    env = dict(os.environ, BALSAM_JOB_ID=f"exec-{os.getpid()}")
    needle = f"BALSAM_JOB_ID={env['BALSAM_JOB_ID']}".encode()
    missed = 0
    for _ in range(200):
        task = subprocess.Popen(["sleep", "600"], start_new_session=True, env=env)
        try:
            missed += needle not in _environ(str(task.pid)).split(b"\0")
        finally:
            task.kill()
            task.wait(30)
    assert missed == 0, f"{missed} of 200 environments read empty"
