"""MPI mode starts its runs with posix_spawn (balsam.launcher.mpi_spawn.RunTask) and behaves as the
Popen start did: its own session, output (stdout and stderr) truncated into one file, the job's
directory made and used, the program found on the task's PATH, SIGPIPE back to default unless
asked, and the launcher's own working directory untouched, also when a start fails."""
from __future__ import annotations

import os
import signal
import time

import pytest
from launcher_support import spawn_method  # noqa: F401 (a fixture)

from balsam.launcher.mpi_spawn import RunTask

pytestmark = pytest.mark.usefixtures("spawn_method")  # glibc's posix_spawn and the fallback


def finish(task: RunTask, timeout: float = 60.0) -> int:
    end = time.monotonic() + timeout
    while task.poll() is None:
        assert time.monotonic() < end, "the task did not exit in time"
        time.sleep(0.005)
    assert task.returncode is not None
    return task.returncode


SCRIPT = ('echo "pwd=$(pwd -P)"; echo "sid=$(cut -d\' \' -f6 /proc/$$/stat)"; '
          'echo "pid=$$"; echo "var=$MY_VAR"; echo oops >&2; '
          'grep -E "^SigIgn" /proc/self/status; read line || echo "stdin closed"; exit 3')


def run_script(tmp_path, name: str, **kwargs) -> tuple[RunTask, dict[str, str], str]:
    workdir = str(tmp_path / "jobs" / name)  # two levels missing
    out = os.path.join(workdir, f"{name}.out")
    env = {"PATH": os.environ["PATH"], "MY_VAR": "from-the-job"}
    task = RunTask(name, ["sh", "-c", SCRIPT], env, workdir, out, **kwargs)
    assert finish(task) == 3
    with open(out) as fh:
        text = fh.read()
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return task, fields, text


def test_a_run_gets_its_own_session_directory_environment_and_one_output_file(tmp_path):
    here = os.getcwd()
    task, fields, text = run_script(tmp_path, "a")
    assert os.getcwd() == here  # the launcher's directory is its own again
    assert fields["pwd"] == os.path.realpath(str(tmp_path / "jobs" / "a"))
    assert int(fields["pid"]) == task.pgid == task.pid
    assert fields["sid"] == str(task.pid)  # leads its own session: a kill reaches its group
    assert fields["var"] == "from-the-job"
    assert "oops" in text and "stdin closed" in text
    assert task.output_path.endswith("a.out")


def test_sigpipe_is_back_to_default_unless_the_flavour_asks_to_keep_it_ignored(tmp_path):
    pipe_bit = 1 << (signal.SIGPIPE - 1)
    _, _, default = run_script(tmp_path, "b")
    _, _, kept = run_script(tmp_path, "c", ignore_sigpipe=True)
    masks = [int(line.split()[1], 16) for text in (default, kept)
             for line in text.splitlines() if line.startswith("SigIgn")]
    assert [mask & pipe_bit for mask in masks] == [0, pipe_bit]


def test_a_prepared_output_file_is_truncated_and_a_vanished_directory_made_again(tmp_path):
    workdir = tmp_path / "prepared"
    workdir.mkdir()
    out = workdir / "p.out"
    out.write_text("stale output of an earlier attempt\n" * 50)
    task = RunTask("p", ["echo", "fresh"], {"PATH": os.environ["PATH"]}, str(workdir), str(out),
                   prepared=True)
    assert finish(task) == 0
    assert out.read_text() == "fresh\n"
    gone = tmp_path / "gone"  # prepared, then removed before the start
    task = RunTask("g", ["true"], {"PATH": os.environ["PATH"]}, str(gone), str(gone / "g.out"),
                   prepared=True)
    assert finish(task) == 0 and (gone / "g.out").exists()


def test_a_start_that_fails_raises_and_leaves_the_launchers_directory_alone(tmp_path):
    here = os.getcwd()
    with pytest.raises(FileNotFoundError):
        RunTask("m", ["no-such-program-anywhere"], {"PATH": os.environ["PATH"]},
                str(tmp_path / "m"), str(tmp_path / "m" / "m.out"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):  # its directory cannot be made (under a regular file)
        RunTask("d", ["true"], {"PATH": os.environ["PATH"]}, str(blocker / "d"),
                str(blocker / "d" / "d.out"))
    with pytest.raises(OSError):  # its output file cannot be opened (a directory is there)
        (tmp_path / "o" / "o.out").mkdir(parents=True)
        RunTask("o", ["true"], {"PATH": os.environ["PATH"]}, str(tmp_path / "o"),
                str(tmp_path / "o" / "o.out"))
    assert os.getcwd() == here
