"""The serial master takes every waiting report (``Master._receive``) and heartbeat
(``rank_heartbeat.take_beats``) in one pass.

With MPICH ch4:ucx a matched probe that finds nothing makes progress, which brings in one more
waiting message: a pass that stopped at the first miss took one report per loop iteration
however many waited, and a worker whose reports waited had its sends pile up (measured with two
real ranks: 10 waiting reports came 1 per pass; with a second probe after a miss, all 10 in
one; benchmarks/README.md, issue 16 session 15). The channel here answers as that library does:
a miss before each waiting report."""
from __future__ import annotations

from types import SimpleNamespace

from balsam.launcher.rank_heartbeat import BEAT_MISSES, take_beats
from balsam.launcher.serial_master import RECEIVE_MISSES, Master


class OneAfterEachMiss:
    """Reports that show up one at a time, each after a receive that found none."""

    def __init__(self, reports):
        self.waiting = list(reports)
        self.pulled = False

    def receive(self):
        if self.pulled:
            self.pulled = False
            return 1, self.waiting.pop(0)
        if self.waiting:
            self.pulled = True  # the probe's progress brought one in
        return None


def test_one_pass_takes_every_waiting_report():
    handled = []
    master = SimpleNamespace(channel=OneAfterEachMiss([{"done": [f"j{i}"]} for i in range(10)]),
                             _handle=lambda worker, report: handled.append(report["done"][0]))
    assert RECEIVE_MISSES >= 2
    assert Master._receive(master) is True
    assert handled == [f"j{i}" for i in range(10)]
    assert Master._receive(master) is False and len(handled) == 10  # nothing left: no report


def test_a_pass_with_nothing_waiting_ends_after_its_misses():
    calls = []
    channel = SimpleNamespace(receive=lambda: calls.append(1))
    assert Master._receive(SimpleNamespace(channel=channel, _handle=None)) is False
    assert len(calls) == RECEIVE_MISSES


def test_one_drain_takes_every_waiting_heartbeat():
    """The master's heartbeat drain (``rank_heartbeat.take_beats``, a matched probe per call)
    takes every waiting heartbeat in one pass too: a drain that stopped at the first miss took
    one heartbeat per ``kill_check_seconds``, and the rest waited."""
    waiting = OneAfterEachMiss([{"rank": r} for r in (1, 2, 3, 1, 2, 3, 4)])

    def probe():
        item = waiting.receive()
        return None if item is None else item[1]["rank"]

    assert BEAT_MISSES >= 2
    assert take_beats(probe) == [1, 2, 3, 1, 2, 3, 4]
    assert take_beats(probe) == [] and not waiting.waiting


def test_a_drain_with_nothing_waiting_ends_after_its_misses():
    calls = []
    assert take_beats(lambda: calls.append(1)) == []
    assert len(calls) == BEAT_MISSES
