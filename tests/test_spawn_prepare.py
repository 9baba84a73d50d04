"""Serial-mode workers make queued tasks' directories and output files ahead of their start
(spawn.Preparer), without changing what a task sees: its own, truncated output file, its
directory made even if the preparer could not or it vanished since."""
from __future__ import annotations

import os
import signal
import time
from typing import Any, Callable

from gates import gate_sh
from launcher_support import Inbox

from balsam.launcher import spawn
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Work, Worker


def wait_for(condition: Callable[[], Any], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.005)


def work(tmp: str, name: str, argv: list[str]) -> Work:
    wd = os.path.join(tmp, "wf", name)
    return Work(name, argv, None, {}, wd, os.path.join(wd, f"{name}.out"), 1, 1)


def test_the_preparer_makes_directories_and_files_once_and_skips_what_it_cannot(tmp_path):
    prep = spawn.Preparer()
    try:
        good = str(tmp_path / "a" / "b")
        blocker = tmp_path / "file"
        blocker.write_text("x")
        bad = str(blocker / "c")  # under a regular file: cannot be made
        prep.ahead(bad, os.path.join(bad, "c.out"))
        prep.ahead(good, os.path.join(good, "b.out"))
        wait_for(lambda: prep.is_ready(os.path.join(good, "b.out")))
        assert os.path.exists(os.path.join(good, "b.out"))
        assert prep.held() == 1  # the one it could not make is forgotten
        assert prep.take(os.path.join(good, "b.out"))
        assert not prep.take(os.path.join(good, "b.out"))  # taken once
        assert not prep.take(os.path.join(bad, "c.out"))
        assert prep.held() == 0
    finally:
        prep.close()


def test_the_preparer_remembers_only_tasks_still_queued(tmp_path):
    # Tasks started (or dropped) before their turn, or after it, leave nothing behind: a worker
    # running millions of tasks keeps no path of any of them.
    prep = spawn.Preparer()
    try:
        outs = []
        for i in range(200):
            wd = str(tmp_path / f"t{i}")
            outs.append(os.path.join(wd, "t.out"))
            prep.ahead(wd, outs[-1])
        for out in outs:
            prep.take(out)
        last = str(tmp_path / "last")
        prep.ahead(last, os.path.join(last, "t.out"))
        wait_for(lambda: prep.is_ready(os.path.join(last, "t.out")))
        assert prep.held() == 1
    finally:
        prep.close()


def test_queued_tasks_are_prepared_while_the_first_runs_and_each_output_is_its_own(tmp_path):
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": os.environ["PATH"]})
    gate = tmp_path / "go"
    stale = tmp_path / "wf" / "q2"
    stale.mkdir(parents=True)
    (stale / "q2.out").write_text("output of an earlier run\n")
    try:
        inbox.orders.append({"work": [
            work(str(tmp_path), "first", ["sh", "-c", gate_sh(str(gate), 0.01)]),
            work(str(tmp_path), "q1", ["sh", "-c", "echo one"]),
            work(str(tmp_path), "q2", ["sh", "-c", "echo two"])]})
        wait_for(lambda: (worker.step(), inbox.collected("started"))[1])  # started by a thread
        assert inbox.collected("started") == ["first"]  # packing 1: the others wait
        # made ahead while "first" runs, before either starts
        wait_for(lambda: (tmp_path / "wf" / "q1" / "q1.out").exists())
        assert (stale / "q2.out").read_text() == "output of an earlier run\n"  # not truncated
        gate.touch()
        end = time.monotonic() + 30
        while len(inbox.collected("done")) < 3:
            assert time.monotonic() < end, inbox.reports
            if not worker.step():
                worker.wait(1)
    finally:
        gate.touch()  # a test failed midway leaves no task waiting for it
        worker.close()
    assert sorted(inbox.collected("done")) == ["first", "q1", "q2"]
    assert (tmp_path / "wf" / "q1" / "q1.out").read_text() == "one\n"
    assert (stale / "q2.out").read_text() == "two\n"  # truncated at its start


def test_a_prepared_directory_removed_before_the_start_is_made_again(tmp_path):
    cwd = str(tmp_path / "gone")
    spawn.prepare(cwd, os.path.join(cwd, "t.out"))
    os.remove(os.path.join(cwd, "t.out"))
    os.rmdir(cwd)
    home = os.getcwd()
    try:
        task = spawn.SpawnedTask("j", ["sh", "-c", "echo here"], {"PATH": os.environ["PATH"]},
                                 cwd, os.path.join(cwd, "t.out"), prepared=True)
        _, status = os.waitpid(task.pid, 0)
    finally:
        os.chdir(home)
    assert os.WEXITSTATUS(status) == 0
    assert (tmp_path / "gone" / "t.out").read_text() == "here\n"


def test_a_spawned_task_gets_sigpipe_back_at_its_default(tmp_path):
    # as subprocess's restore_signals does for the other tasks: Python ignores SIGPIPE
    out = str(tmp_path / "sig" / "t.out")
    home = os.getcwd()
    try:
        task = spawn.SpawnedTask("j", ["sh", "-c", "grep SigIgn /proc/self/status"],
                                 {"PATH": os.environ["PATH"]}, os.path.dirname(out), out)
        _, status = os.waitpid(task.pid, 0)
    finally:
        os.chdir(home)
    assert os.WEXITSTATUS(status) == 0
    with open(out) as fh:
        ignored = int(fh.read().split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)) and not ignored & (1 << (signal.SIGXFSZ - 1))
