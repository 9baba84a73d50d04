"""The free-slot rule of a serial master whose claims found nothing (s19-fairshare), with a real
launcher: the common ``balsam launcher`` then ``balsam job`` pattern. The launcher starts with
nothing to claim; jobs added later, one at a time, of a packing count no claim has shown yet,
and one added while every slot is busy, all run, each as soon as a slot is free for it."""
from __future__ import annotations

import os
import signal

from fault_support import SERIAL, add_ticker_app, held_markers, running, serial_sessions
from launcher_procs import launchers
from launcher_support import QUICK, add_jobs, job_row, settings, wait_for
from once_support import runs


def half_node_tickers(cursor, markers: str, hold: str, names: list[str]) -> list[str]:
    env = f"MARKERS={markers}:TICKS=1:HOLD={hold}"
    return add_jobs(cursor, [{"name": n, "application": "tick", "environ_vars": env,
                              "node_packing_count": 2, "state": "PREPROCESSED"}
                             for n in names])


def test_jobs_added_after_a_serial_launcher_started_fill_its_slots(db, cursor, scripts):
    markers, (hold,) = held_markers("hold")
    add_ticker_app(cursor, scripts)
    with settings(db, local_nodes=1, launcher=QUICK), launchers() as start:
        first = start(*SERIAL, "--persistent")
        wait_for(lambda: serial_sessions(cursor) == 1, 60, "the launcher's session")
        (a,) = half_node_tickers(cursor, markers, hold, ["a"])
        wait_for(lambda: runs(markers, a), 30, "the first job added to run")
        (b,) = half_node_tickers(cursor, markers, hold, ["b"])  # the node's free half
        wait_for(lambda: runs(markers, b), 30, "the second job to run beside the first")
        wait_for(lambda: running(cursor) == 2, 30, "both starts to be written")
        (c,) = half_node_tickers(cursor, markers, hold, ["c"])  # added with the node full
        os.remove(hold)  # a and b end: c runs in the freed slot
        wait_for(lambda: job_row(cursor, c)["state"] == "JOB_FINISHED", 30,
                 "the job added while the node was full to run once a slot freed")
        first.signal(signal.SIGTERM)
        assert first.wait(120) == 0
    for job_id in (a, b, c):
        assert job_row(cursor, job_id)["state"] == "JOB_FINISHED"
        assert len(runs(markers, job_id)) == 1
