"""A task's directory on a hung file system (session 20, branch s20-spawnblock): a native
spawning thread looks it up itself (``bs_posix_spawn`` in ``_spawner_bounds.h``: opened, then
``fchdir`` in the child), so a lookup that hangs holds the thread *before* ``posix_spawn``,
where a stop, the worker's exit or a kill or stop of the job is seen once the lookup returns:
the task is never made. Before, the ``vfork`` child hung in ``chdir`` and ran the task once
the file system answered: after the loop had given up on it, after a kill, or after the rank
had exited (the child outlives it, unwatched). The hang is the kernel's test hook
``Spawner.hang_dirs``: the lookup first opens a FIFO for reading, which blocks until the test
opens it for writing. Conditions are waited for, bounded."""
from __future__ import annotations

import json

import pytest
from launcher_support import wait_for
from spawn_support import OPEN_CALLS, HeldRank, exit_and_close, held_rank, kill_or_stop
from test_spawn_chain import marking, native, serve
from test_spawn_chain_races import ran
from test_spawn_stalls import children, made_since, spawning_threads

from balsam.launcher import spawn_threads

pytestmark = native


def _in_open(path: str) -> bool:
    try:
        with open(path) as fh:
            return fh.read().split()[0] in OPEN_CALLS
    except (OSError, IndexError):
        return False


def lookup_hangs() -> bool:
    """Whether a spawning thread, or a child of this process (a ``vfork`` child before its
    ``exec``), is blocked opening the hook's FIFO (in ``open``/``openat``)."""
    for tid in spawning_threads():
        if _in_open(f"/proc/self/task/{tid}/syscall"):
            return True
    return any(_in_open(f"/proc/{pid}/syscall") for pid in children())


def hung_start(rank: HeldRank) -> None:
    """``m`` asked for, its directory lookup hung in the native spawning thread."""
    rank.inbox.orders.append({"work": [marking(rank.tmp, "m")]})
    serve(rank.worker, lookup_hangs, "the start's directory lookup to hang")


def test_a_start_whose_directory_lookup_hangs_past_the_workers_exit_is_never_made(
        tmp_path, monkeypatch):
    tmp = str(tmp_path)
    monkeypatch.setattr(spawn_threads, "SETTLE_SECONDS", 1.0)  # the exit's wait for starts
    with held_rank(tmp, watchdog=False) as rank:
        hung_start(rank)
        spawns = rank.worker._spawns
        assert exit_and_close(rank) and spawns.stuck == 1  # type: ignore[union-attr]
        rank.answer()  # the file system answers after the rank gave up on the start
    wait_for(lambda: not spawning_threads(), 30, "the stuck thread to end")
    assert made_since(rank.before) == [] and ran(tmp, "m") == ""
    assert rank.inbox.collected("started") == []


@pytest.mark.parametrize("order, key", [({"kill": ["m"]}, "killed"), ({"stop": 0.5}, "returned")])
def test_a_kill_or_stop_during_a_hung_directory_lookup_never_makes_the_task(
        tmp_path, order, key):
    tmp = str(tmp_path)
    with held_rank(tmp) as rank:
        hung_start(rank)
        kill_or_stop(rank, order, key)
    inbox = rank.inbox
    assert inbox.collected(key) == ["m"] and inbox.collected("started") == []
    assert made_since(rank.before) == [] and ran(tmp, "m") == ""
    with open(rank.report) as fh:
        assert json.load(fh)["started"] == []  # its "?m" was undone ("^m"): no lost run
