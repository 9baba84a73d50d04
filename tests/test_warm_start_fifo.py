"""A FIFO at the output path of a job the launcher starts itself (the serial-mode warm start:
:mod:`balsam.launcher.warm_start`, through :class:`balsam.launcher.procs.Task`): its output
file is opened as a worker's shell task's is (``libc_spawn.open_output``: ``O_NONBLOCK``, then
cleared), so a FIFO without a reader fails that job with a message naming it instead of
blocking the launcher in ``open()`` before its ensemble ever runs; the launcher runs the other
jobs and exits 0. Through a real serial launcher; no timing: every wait is for a condition
(a launcher blocked as before fails the test at its bounded wait)."""
from __future__ import annotations

import os

import pytest
from fault_support import SERIAL
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, events, settings, states, workdir


@pytest.mark.slow
def test_a_fifo_at_the_output_of_the_launchers_own_first_job_fails_it_and_the_rest_run(
        db, cursor, fifos):
    add_app(cursor, "hello", "/bin/echo hello")
    # runnable at once; the FIFO's job first in the claim order (priority), so the warm start
    # takes it (with one other: two halves of the node's two cores)
    ids = add_jobs(cursor, [{"name": f"h{i}", "application": "hello", "node_packing_count": 2,
                             "priority": 10 if i == 0 else 0, "state": "PREPROCESSED"}
                            for i in range(4)])
    fifo_id = ids[0]
    directory = workdir(db, cursor, fifo_id)
    os.makedirs(directory, exist_ok=True)
    fifo = os.path.join(directory, "h0.out")
    os.mkfifo(fifo)
    fifos.append(fifo)
    with settings(db, local_nodes=1, cores_per_node=2, launcher=QUICK), launchers() as start:
        launcher = start(*SERIAL)
        assert launcher.wait(120) == 0, launcher.output()
        log = launcher.log()
    # it claimed the FIFO's job and h1; only h1 started
    assert "warm start: 1 task(s) started by the launcher" in log, log
    final = states(cursor)  # by name
    assert final.pop("h0") == "FAILED" and set(final.values()) == {"JOB_FINISHED"}, final
    messages = [e[3] for e in events(cursor, fifo_id) if e[2] == "RUN_ERROR"]
    assert messages and all(m.startswith("cannot start:") for m in messages), messages
    assert all(f"(the output file is a FIFO with no reader): '{fifo}'" in m
               for m in messages), messages
    for i, job_id in enumerate(ids[1:], 1):
        with open(os.path.join(workdir(db, cursor, job_id), f"h{i}.out")) as fh:
            assert fh.read() == "hello\n"
