"""Tasks enter their working directory in the child only (balsam.launcher.libc_spawn): the
launcher's own working directory never changes while they start, so its other threads may use
relative paths at any time. Both ways of starting (glibc's posix_spawn with a chdir action, and
the Popen fallback used where that is missing) behave alike, errors included."""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable

import pytest
from launcher_support import Inbox, spawn_method  # noqa: F401 (a fixture)

from balsam.launcher import libc_spawn, spawn
from balsam.launcher.mpi_spawn import RunTask
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.serial_worker import Work, Worker

pytestmark = pytest.mark.usefixtures("spawn_method")  # glibc's posix_spawn and the fallback


def reap(pid: int, timeout: float = 60.0) -> int:
    end = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        assert time.monotonic() < end, "the task did not exit in time"
        time.sleep(0.002)


class CwdWatch:
    """A thread reading os.getcwd() (and a relative path) until stopped; what it saw."""

    def __init__(self, marker: str) -> None:
        self.home = os.getcwd()
        self.marker = marker  # a file only the launcher's directory holds
        self.seen: set[str] = set()
        self.missed = 0
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.stop.is_set():
            self.seen.add(os.getcwd())
            self.missed += not os.path.exists(self.marker)  # relative: resolved in our cwd
            self.samples += 1

    def __enter__(self) -> CwdWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(30)


def burst(watch: CwdWatch, start: Callable[[int], int], count: int) -> None:
    """Start ``count`` tasks while ``watch`` samples (waiting until it has sampled during the
    burst, however loaded the machine); reap them all."""
    before = watch.samples
    pids = []
    for i in range(count):
        pids.append(start(i))
        if len(pids) > 8:
            assert reap(pids.pop(0)) == 0
    end = time.monotonic() + 60
    while watch.samples < before + 10:  # the watcher ran during the burst, not only before
        assert time.monotonic() < end
        time.sleep(0.001)
    for pid in pids:
        assert reap(pid) == 0


def test_the_launchers_directory_never_changes_while_tasks_start(tmp_path, monkeypatch):
    home = tmp_path / "launcher"
    home.mkdir()
    (home / "marker").write_text("here")
    monkeypatch.chdir(home)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads interleave at every chance: a chdir would show
    env = {"PATH": os.environ["PATH"]}
    encoded = libc_spawn.EncodedEnv(env)
    try:
        with CwdWatch("marker") as watch:
            burst(watch, lambda i: spawn.SpawnedTask(
                f"s{i}", ["true"], encoded, str(tmp_path / "s" / str(i)),
                str(tmp_path / "s" / str(i) / "t.out"), extra={"BALSAM_JOB_ID": str(i)}).pid, 150)
            burst(watch, lambda i: RunTask(
                f"m{i}", ["true"], env, str(tmp_path / "m" / str(i)),
                str(tmp_path / "m" / str(i) / "t.out")).pid, 50)
    finally:
        sys.setswitchinterval(switch)
    assert watch.seen == {watch.home} and watch.missed == 0  # getcwd(): symlinks resolved
    assert os.path.samefile(watch.home, home)
    assert len(os.listdir(tmp_path / "s")) == 150 and len(os.listdir(tmp_path / "m")) == 50


def test_a_serial_worker_keeps_its_directory_while_it_starts_a_burst(tmp_path, monkeypatch):
    home = tmp_path / "rank"
    home.mkdir()
    (home / "marker").write_text("here")
    monkeypatch.chdir(home)
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0, 1], 0), {"PATH": os.environ["PATH"]})
    works = [Work(f"j{i}", ["sh", "-c", 'test "$(pwd -P)" = "$PWD_WANTED"'], None,
                  {"PWD_WANTED": os.path.realpath(str(tmp_path / "wf" / f"j{i}"))},
                  f"../wf/j{i}", f"../wf/j{i}/j{i}.out", 2, 1) for i in range(60)]
    try:
        with CwdWatch("marker") as watch:
            inbox.orders.append({"work": works})
            end = time.monotonic() + 120
            while len(inbox.collected("done") + inbox.collected("failed")) < len(works):
                assert time.monotonic() < end, inbox.reports
                if not worker.step():
                    worker.wait(1)
            while watch.samples == 0:  # however loaded the machine, it looked at least once
                assert time.monotonic() < end
                time.sleep(0.001)
    finally:
        worker.close()
    assert watch.seen == {watch.home} and watch.missed == 0
    assert os.path.samefile(watch.home, home)
    assert inbox.collected("failed") == [] and len(inbox.collected("done")) == len(works)


def test_both_ways_start_a_task_alike(tmp_path):
    out = tmp_path / "wd" / "t.out"
    out.parent.mkdir()
    out.write_text("stale\n" * 100)
    encoded = libc_spawn.EncodedEnv({"PATH": os.environ["PATH"], "A": "base", "B": "base"})
    pid = libc_spawn.spawn("/bin/sh", ["sh", "-c", 'echo "$A $B $C $(pwd -P)"; echo err >&2; '
                           'cut -d" " -f6 /proc/$$/stat; read x || echo eof'],
                           encoded, str(out.parent), str(out), spawn.RESTORED_SIGNALS,
                           {"B": "task", "C": "new"})
    assert reap(pid) == 0
    lines = out.read_text().splitlines()
    assert lines == [f"base task new {os.path.realpath(out.parent)}", "err", str(pid), "eof"]


def test_a_start_that_cannot_happen_names_what_failed(tmp_path):
    env = {"PATH": os.environ["PATH"]}
    taken = tmp_path / "o" / "j.out"
    taken.mkdir(parents=True)  # a directory where the output file should be
    with pytest.raises(IsADirectoryError) as err:
        spawn.SpawnedTask("j", ["true"], env, str(taken.parent), str(taken))
    assert err.value.filename == str(taken)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError) as err:  # "prepared", but not a directory
        spawn.SpawnedTask("j", ["true"], env, str(blocker), str(tmp_path / "j.out"),
                          prepared=True)
    assert err.value.filename == str(blocker)
    with pytest.raises(FileNotFoundError) as err:  # removed after the check, before the exec
        libc_spawn.spawn(str(tmp_path / "gone"), ["gone"], env, str(tmp_path), str(tmp_path / "g"),
                         spawn.RESTORED_SIGNALS)
    assert err.value.filename == str(tmp_path / "gone")
    with pytest.raises(OSError) as err:  # a variable name no environment can hold
        spawn.SpawnedTask("j", ["true"], env, str(tmp_path), str(tmp_path / "x.out"),
                          extra={"A=B": "c"})
    assert "A=B" in str(err.value)


def test_each_task_sees_exactly_its_own_environment(tmp_path):
    # MPI mode passes every run's whole environment; the glibc path encodes only what differs
    # from the last one (a variable dropped, changed or added must show exactly so).
    path = os.environ["PATH"]
    envs = [{"PATH": path, "A": "1", "B": "2", "JOB": "x"},
            {"PATH": path, "A": "1", "B": "changed", "JOB": "y", "NEW": "n"},
            {"PATH": path, "A": "1", "JOB": "z"},  # B dropped
            {"PATH": path, "A": "1", "B": "2", "JOB": "w"}]
    for i, env in enumerate(envs):
        out = tmp_path / f"e{i}" / "env.out"
        assert reap(RunTask(f"e{i}", ["env"], env, str(out.parent), str(out)).pid) == 0
        seen = dict(line.split("=", 1) for line in out.read_text().splitlines())
        assert seen == env
    encoded = libc_spawn.EncodedEnv({"PATH": path, "A": "base"})
    for i, extra in enumerate([{"A": "task"}, {"B": "only-here"}, {}]):
        out = tmp_path / f"x{i}" / "env.out"
        assert reap(spawn.SpawnedTask(f"x{i}", ["env"], encoded, str(out.parent), str(out),
                                      extra=extra).pid) == 0
        seen = dict(line.split("=", 1) for line in out.read_text().splitlines())
        assert seen == {"PATH": path, "A": "base", **extra}


def test_the_fallback_is_logged_once(tmp_path, monkeypatch, caplog):
    def no_libc(name: Any) -> Any:
        raise OSError("no C library here")

    monkeypatch.setattr(libc_spawn, "_loaded", [])
    monkeypatch.setattr(libc_spawn.ctypes, "CDLL", no_libc)
    env = {"PATH": os.environ["PATH"]}
    with caplog.at_level("WARNING", logger="balsam.launcher.libc_spawn"):
        for i in range(3):
            out = tmp_path / f"f{i}" / "t.out"
            assert reap(spawn.SpawnedTask(f"f{i}", ["sh", "-c", "pwd -P"], env, str(out.parent),
                                          str(out)).pid) == 0
            assert out.read_text() == f"{os.path.realpath(out.parent)}\n"
    assert libc_spawn.method() == "Popen"
    warnings = [r for r in caplog.records if "subprocess.Popen" in r.getMessage()]
    assert len(warnings) == 1


def test_relative_paths_are_the_launchers_as_with_popen(tmp_path, monkeypatch):
    # The output file is opened before the child enters its directory: a relative output path
    # and a relative directory both name places under the launcher's own directory.
    monkeypatch.chdir(tmp_path)
    task = RunTask("r", ["sh", "-c", "pwd -P"], {"PATH": os.environ["PATH"]}, "jobs/r",
                   "jobs/r/r.out")
    assert reap(task.pid) == 0
    assert (tmp_path / "jobs" / "r" / "r.out").read_text() == \
        f"{os.path.realpath(tmp_path / 'jobs' / 'r')}\n"
    assert os.getcwd() == str(tmp_path)
