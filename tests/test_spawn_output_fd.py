"""The output descriptor each start path opens itself (``O_NONBLOCK``, session 18) and hands to
the child: closed in the caller on every path, a start refused for its environment included,
and the child's stdout whatever descriptor number ``open`` returned (the lowest free one: 0 in
a worker whose stdin is closed, as some MPI launchers and daemons leave it; or 1). No timing:
each child's output is read after it was reaped."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from test_spawn_chain import native
from test_spawn_chain_races import descriptors

from balsam.launcher import libc_spawn, spawn_threads

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
