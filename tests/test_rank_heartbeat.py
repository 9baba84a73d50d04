"""A serial worker rank's heartbeats and the master's judgement of silence
(:mod:`balsam.launcher.rank_heartbeat`), without MPI: the worker loop runs over the tests'
in-process channel, the master's view is fed its heartbeats by hand at chosen times. The real
ensemble with a frozen worker rank is in ``tests/test_exactly_once.py``."""
from __future__ import annotations

import threading
import time

from launcher_support import Inbox, wait_for

from balsam.core.tunables import Tunables
from balsam.launcher.ensemble_stuck import stuck_after
from balsam.launcher.nodeslots import NodeSlots
from balsam.launcher.rank_heartbeat import SILENT_BEATS, Pulse, Silence, silence_limit
from balsam.launcher.serial_worker import Work, Worker


def test_the_silence_limit_is_several_heartbeats_and_never_under_the_stuck_master_limit():
    defaults = Tunables.from_settings({})
    assert silence_limit(defaults.heartbeat_seconds, stuck_after(defaults)) == 50.0
    assert silence_limit(10.0, 5.0) == SILENT_BEATS * 10.0


def test_a_worker_unheard_for_the_limit_is_lost_and_named():
    queued: list[int] = []
    silence = Silence([1, 2, 3], limit=10.0, beats=lambda: [queued.pop() for _ in list(queued)],
                      abort=lambda: 8, now=0.0)
    assert silence.lost(4.5) is None  # the master checks more often than every limit / 2
    assert silence.lost(9.0) is None
    queued += [1, 3, 1]
    assert silence.lost(9.5) is None  # worker 2 has 0.5 s left
    why = silence.lost(10.5)
    assert why is not None and "worker rank(s) 2 (10 s)" in why and "1 (" not in why


def test_heartbeats_that_queued_while_the_master_was_busy_keep_their_workers_alive():
    # The master was away 60 s (a database reconnection): every worker went on beating; the
    # beats wait in the queue and are drained before the silence is judged.
    queued = [1, 2, 1, 2]
    silence = Silence([1, 2], limit=10.0, beats=lambda: [queued.pop() for _ in list(queued)],
                      abort=lambda: 8, now=0.0)
    assert silence.lost(60.0) is None
    assert silence.lost(65.0) is None
    assert silence.lost(69.0) is None
    assert "1 (11 s), 2 (11 s)" in (silence.lost(71.0) or "")


def test_a_suspended_job_does_not_count_its_pause_against_its_workers():
    # The whole job was stopped 300 s (scontrol suspend): no heartbeat came, but the master
    # did not run either; after the resume the workers have their remaining time, no more.
    queued: list[int] = []
    silence = Silence([1, 2], limit=10.0, beats=lambda: [queued.pop() for _ in list(queued)],
                      abort=lambda: 8, now=0.0)
    assert silence.stall == 5.0
    assert silence.lost(4.0) is None
    queued.append(1)
    assert silence.lost(304.0) is None  # 300 s gap: not counted; worker 2 was heard at 0 (+300)
    assert silence.lost(308.0) is None
    why = silence.lost(311.0)
    assert why is not None and "2 (11 s)" in why and "1 (" not in why


def test_a_worker_beats_while_it_idles_and_while_its_task_runs(tmp_path):
    beats: list[float] = []
    inbox = Inbox()
    worker = Worker(inbox, NodeSlots([0], 0), {"PATH": "/usr/bin:/bin"},
                    pulse=Pulse(lambda: beats.append(len(worker.running)), 0.01))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(beats) >= 3, 30, "three heartbeats of an idle worker")
        wd = str(tmp_path / "job")
        inbox.orders.append({"work": [Work("job", ["sleep", "60"], None, {}, wd,
                                           str(tmp_path / "job" / "job.out"), 1, 1)]})
        wait_for(lambda: beats.count(1) >= 3, 30, "three heartbeats while a task runs")
        inbox.orders.append({"kill": ["job"]})
        wait_for(lambda: inbox.collected("killed"), 30, "the task to be killed")
    finally:
        inbox.orders.append({"exit": True})
        thread.join(60)
    assert not thread.is_alive()
    assert inbox.collected("started") == ["job"]


def test_the_master_receives_every_heartbeat_a_worker_said_it_sent_before_the_end():
    # An unreceived message holds its sender in MPI_Finalize (MPICH, ranks on other nodes):
    # the master takes each worker's heartbeats up to the count in its bye.
    arriving = [[1], [], [2, 1]]
    silence = Silence([1, 2], limit=10.0,
                      beats=lambda: arriving.pop(0) if arriving else [], abort=lambda: 8)
    silence.expected.update({1: 2, 2: 1})
    assert silence.settle(time.monotonic() + 60.0)
    assert silence.received == {1: 2, 2: 1} and not arriving
    silence.expected[2] = 5  # never coming: gives up at the deadline
    assert not silence.settle(time.monotonic() + 0.05)


def test_a_pulse_counts_its_heartbeats():
    sent: list[float] = []
    pulse = Pulse(lambda: sent.append(1.0), 5.0, now=0.0)
    pulse.beat(5.0)
    pulse.beat(10.0)
    assert pulse.sent == len(sent) == 2 and pulse.due == 15.0
