"""A worker rank that dies with function tasks queued inside its warm processes: a queued task
that never began is not counted as started (no run recorded, no retry used), one that began
is. Its watchdog learns which began from the warm processes' began file
(``launcher/warm_channel.py``), read once they are dead. Every wait is for a condition."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from typing import Any, Callable

import pytest
from test_warm_queue import make_site

OWNER = textwrap.dedent("""
    import os, sys, time
    from balsam.launcher.warm_pool import WarmPool
    from balsam.launcher.watchdog import Watchdog
    from balsam.site import pyfunc

    report, site, tmp = sys.argv[1:4]
    dog = Watchdog(0.5, report=report)
    pool = WarmPool({"PATH": os.environ["PATH"]}, tmp, sys.executable, watchdog=dog)
    env = {"BALSAM_DB_PATH": site}

    def row(app, **kwargs):
        return (app, "{}", "{}", "{}", pyfunc.serialize(kwargs))

    def paths(name):
        return os.path.join(tmp, name), os.path.join(tmp, name, "out")

    def reap(task):
        while task.poll() is None:
            time.sleep(0.005)
        return pool.finished(task, clean=True)

    first = pool.start("first", env, *paths("first"), [0],
                       row("fn.Gate", gate=os.path.join(tmp, "go")))
    second = pool.queue_behind(first, "second", env, *paths("second"), row("fn.Pid"))
    open(os.path.join(tmp, "go"), "w").close()
    assert reap(first) is second and second.begun  # queued, and it began
    assert reap(second) is None
    hold = pool.start("hold", env, *paths("hold"), [0],
                      row("fn.Gate", gate=os.path.join(tmp, "never")))
    waiting = pool.queue_behind(hold, "waiting", env, *paths("waiting"), row("fn.Pid"))
    dog.flush()
    print(hold.pid, flush=True)
    time.sleep(120)
""")


def wait_for(condition: Callable[[], Any], timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_a_dead_owner_s_watchdog_counts_a_queued_task_started_only_if_it_began(tmp_path):
    site, report = make_site(tmp_path), str(tmp_path / "rank1.json")
    owner = subprocess.Popen([sys.executable, "-c", OWNER, report, site, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    warm_pid = int(owner.stdout.readline())
    try:
        owner.kill()
        owner.wait(30)

        def final() -> dict[str, Any]:
            with open(report) as fh:
                found: dict[str, Any] = json.load(fh)
            return found

        wait_for(lambda: final()["state"] != "running")
        assert final()["state"] == "stopped" and not alive(warm_pid)
        # "second" began behind "first" (counted); "waiting", queued behind "hold", never did.
        assert Counter(final()["started"]) == Counter(["first", "second", "hold"])
        assert not (tmp_path / "waiting").exists()
        assert (tmp_path / "second" / "out").exists()
        assert not os.path.exists(f"{report}.began")  # read, then removed
    finally:
        if alive(warm_pid):
            os.killpg(warm_pid, signal.SIGKILL)
