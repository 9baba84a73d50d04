"""The output descriptor each start path opens itself (``O_NONBLOCK``, session 18) and hands to
the child: closed in the caller on every path, a start refused for its environment included,
and the child's stdout whatever descriptor number ``open`` returned (the lowest free one: 0 in
a worker whose stdin is closed, as some MPI launchers and daemons leave it; or 1). No timing:
each child's output is read after it was reaped. And a FIFO at a queued task's output path,
with a reader, is not opened ahead of the start (by :func:`balsam.launcher.spawn.prepare` or
the kernel's thread while the task waits): a writer that comes and goes would hang up a
reader that reads until EOF before the task wrote anything."""
from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
import textwrap

import pytest
from launcher_support import wait_for
from test_spawn_chain import gated, native, shell
from test_spawn_chain_races import Kernel, descriptors

from balsam.launcher import libc_spawn, spawn, spawn_threads

glibc = pytest.mark.skipif(not spawn_threads.usable(), reason="no glibc posix_spawn here")


@glibc
@pytest.mark.parametrize("env, extra", [
    ({"PATH": "/bin"}, {"BAD": "a\0b"}),  # a NUL in a task's own variable
    ({"PATH": "/bin"}, {"": "x"}),  # an empty name among its variables
    ({"PATH": "/bin", "": "x"}, {}),  # ... in the whole environment given (MPI mode)
])
def test_a_start_refused_for_its_environment_leaves_no_descriptor_open(tmp_path, env, extra):
    out = str(tmp_path / "t.out")
    lib = libc_spawn.private()
    assert lib is not None
    encoded = libc_spawn.EncodedEnv({"PATH": "/bin"}) if "" not in env else env
    before = descriptors()
    for _ in range(3):
        with pytest.raises(OSError):
            libc_spawn.spawn("/bin/true", ["true"], encoded, str(tmp_path), out, (), extra, lib)
    assert descriptors() == before


CHILD = textwrap.dedent("""
    import os, select, sys
    from balsam.launcher import libc_spawn, spawn_native
    from balsam.platform.process import wait_child
    where, path, closed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if path == "native":
        poller = select.epoll()
        spawns = spawn_native.make({"PATH": "/bin"}, poller)
        def start(name):
            spawns.submit(name, ["echo", name], where, os.path.join(where, name + ".out"),
                          False, {}, ())
            while True:
                poller.poll(1.0)
                got = spawns.collect()
                if got:
                    break
            assert got[0].task is not None, got
            os.waitpid(got[0].task.pid, 0)
            os.close(got[0].fd)
        start("warm")  # the kernel's thread (and its event fd) made while fd 0 is open
        os.close(closed)
        start("native")
        spawns.close()
    else:
        os.close(closed)
        call = libc_spawn.spawn if path == "glibc" else libc_spawn.spawn_popen
        pid = call("/bin/echo", ["echo", path], {"PATH": "/bin"}, where,
                   os.path.join(where, path + ".out"), ())
        os.waitpid(pid, 0)
""")


@pytest.mark.parametrize("closed", [0, 1])
@pytest.mark.parametrize("path", [pytest.param("glibc", marks=glibc),
                                  pytest.param("native", marks=native), "popen"])
def test_a_task_of_a_worker_without_stdin_or_stdout_writes_its_output_file(tmp_path, path, closed):
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), path, str(closed)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / f"{path}.out").read_text() == f"{path}\n"


# ---- a FIFO with a reader at a queued task's output path ------------------------------------
def hung_up(reader: int) -> bool:
    """Whether a writer opened the FIFO of ``reader`` (opened O_NONBLOCK before) and closed it
    again: a reader reading until EOF (``cat``, ``tee``) has seen its end and gone."""
    return any(ev & select.POLLHUP for _, ev in poll_now(reader))


def poll_now(fd: int) -> list[tuple[int, int]]:
    p = select.poll()
    p.register(fd, select.POLLIN)
    return p.poll(0)


def fifo_with_reader(path: str) -> int:
    os.mkfifo(path)
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK)


def test_preparing_a_task_whose_output_is_a_read_fifo_does_not_hang_up_its_reader(tmp_path):
    out = str(tmp_path / "p.out")
    reader = fifo_with_reader(out)
    try:
        with contextlib.suppress(OSError):  # not made ahead: the start opens it
            spawn.prepare(str(tmp_path / "p"), out)
        assert os.path.isdir(tmp_path / "p") and not hung_up(reader)
    finally:
        os.close(reader)


@native
def test_the_kernel_prepares_a_waiting_start_without_hanging_up_its_fifos_reader(tmp_path):
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    work = shell(tmp, "p1", "echo through")  # its directory is made ahead, not by the test
    reader = fifo_with_reader(work.output_path)
    k = Kernel()
    try:
        k.submit(gated(tmp, "g0", gate))
        g0 = k.wait("g0")
        k.submit(work, after=os.dup(g0.fd))  # waits for g0: made ahead meanwhile
        wait_for(lambda: os.path.isdir(work.workdir), 60, "p1's directory made ahead")
        k.submit(shell(tmp, "x", "true"))  # started once that preparation is over
        k.wait("x")
        assert not hung_up(reader)
        open(gate, "w").close()
        p1 = k.wait("p1")
        assert p1.task is not None, p1.error
        wait_for(lambda: p1.task.poll() is not None, 60, "p1 to end")  # type: ignore[union-attr]
        os.set_blocking(reader, True)
        assert os.read(reader, 100) == b"through\n"
    finally:
        open(gate, "w").close()
        k.ended()
        os.close(reader)
