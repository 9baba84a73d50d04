"""The task watchdog's end: it exits at once when its owner hangs up (session 19).

Its nap between reads ends when the pipe's last writer is gone (an owner's close right after a
write no longer waits out the nap), its process ends without the interpreter's teardown
(:func:`balsam.launcher.watchdog.exit_now`), and an owner can hang up without waiting for it
(:meth:`Watchdog.hang_up`, then :meth:`Watchdog.reap`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

from launcher_support import process_gone, wait_for

from balsam.launcher import watchdog
from balsam.launcher.watchdog import Watchdog, serve


def test_the_nap_after_a_read_ends_when_the_owner_hangs_up(monkeypatch):
    monkeypatch.setattr(watchdog, "READ_NAP_SECONDS", 60.0)  # a plain sleep would wait it out
    read_fd, write_fd = os.pipe()
    results: list[tuple] = []
    try:
        os.write(write_fd, b"#some-job\n")  # a line that is not "." or "=": the nap follows
        os.close(write_fd)
        write_fd = -1
        reader = threading.Thread(target=lambda: results.append(serve(read_fd, 0.1)),
                                  daemon=True)
        reader.start()
        reader.join(10.0)
        assert results, "serve() was still napping 10 s after its owner hung up"
        stopped, alive, started, segments, _ended = results[0]
        assert (stopped, alive, started, segments) == ([], [], [], None)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


EXITING = textwrap.dedent("""
    import atexit, sys
    sys.path.insert(0, sys.argv[1])
    from balsam.launcher.watchdog import exit_now
    atexit.register(lambda: sys.stdout.write("teardown ran"))
    sys.stdout.write("report written")  # no newline: still in the buffer of a pipe
    exit_now(3)
""")


def test_exit_now_flushes_what_was_written_and_skips_the_teardown():
    root = os.path.dirname(os.path.dirname(os.path.abspath(watchdog.__file__)))
    done = subprocess.run([sys.executable, "-S", "-c", EXITING, os.path.dirname(root)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "report written"


def test_hang_up_returns_at_once_and_reap_waits_for_the_exit():
    dog = Watchdog(0.5)
    pid = dog.proc.pid
    os.kill(pid, signal.SIGSTOP)  # it cannot exit until it is continued
    try:
        dog.hang_up()
        assert not process_gone(pid) and dog.proc is not None
    finally:
        os.kill(pid, signal.SIGCONT)
    dog.reap(30.0)
    assert dog.proc is None
    wait_for(lambda: process_gone(pid), 10, "the watchdog to exit after its owner hung up")
