"""The service on a real Slurm (``tests/infra/slurm.sh``: 4 emulated nodes, partition
``debug``): 200 jobs (196 serial, and 4 2-node MPI jobs running mpi4py) -> the service submits batch
jobs -> launchers run them in serial and MPI mode -> all JOB_FINISHED -> the service records
the batch jobs' end; ``scancel`` of a running batch job -> its jobs are recorded RUN_TIMEOUT
and finished by a later batch job. Skipped, with the reason, where no Slurm runs."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import make_public_tmpdir, truncate_all
from launcher_support import QUICK, add_app, add_jobs, events, settings, states, wait_for, workdir
from service_support import launches, services
from slurm_support import (
    Slurm,
    batch_env,
    slurm_command,
    slurm_fixture,  # noqa: F401 - the `slurm` fixture
    slurm_unavailable_reason,
    write_script,
)

from balsam.core import schema

pytestmark = pytest.mark.slow

QUEUES = {"debug": {"min_nodes": 1, "max_nodes": 2, "min_minutes": 1, "max_minutes": 5,
                    "max_queued": 2, "max_running": 2, "max_total_nodes": 4}}
"""The test cluster's partition, small: batch jobs of at most 2 nodes and 5 minutes."""
LAUNCHER = {**QUICK, "lease_seconds": 8, "shutdown_grace_seconds": 1}
SERVICE = {"cycle_seconds": 1, "transition_threads": 1}


@pytest.fixture(scope="module")
def slurm_db(test_home: str) -> Iterator[str]:
    """A DB of this module initialised for ``--machine generic-slurm``."""
    reason = slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    from balsam.db import cluster, dbdir

    root = make_public_tmpdir("balsam-service-slurm-")
    path = dbdir.init(os.path.join(root, "db"), machine="generic-slurm")
    yield path
    cluster.stop(path)


@pytest.fixture
def sdb(slurm_db: str, slurm: Slurm) -> Iterator[tuple[str, Any]]:
    """(path, autocommit cursor) of the emptied module DB; the batch jobs the service submits
    from its qsubmit/ are cancelled at the end."""
    from balsam.db.connect import connect

    truncate_all(slurm_db)
    slurm.watch(os.path.join(slurm_db, "qsubmit"))
    conn = connect(slurm_db, autocommit=True)
    try:
        with conn.cursor() as cur:
            yield slurm_db, cur
    finally:
        conn.close()


RANKS = """
import socket
from mpi4py import MPI
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.rank)
with open(f"rank{comm.rank}", "w") as out:
    out.write(f"{comm.size} {total} {socket.gethostname()}")
"""


def node_names() -> set[str]:
    return set(slurm_command("sinfo", "-h", "-N", "-o", "%N").stdout.split())


def test_the_service_runs_200_serial_and_mpi_jobs_through_slurm_batch_jobs(
        sdb: tuple[str, Any]) -> None:
    db, cur = sdb
    tmp = make_public_tmpdir("balsam-service-slurm-app-")
    program = write_script(tmp, "ranks.py", RANKS)
    add_app(cur, "ranks", f"{sys.executable} {program}")
    add_app(cur, "host", "hostname")
    # No project: generic Slurm does not require one (the script has no --account line).
    with settings(db, queues=QUEUES, service=SERVICE, launcher=LAUNCHER, mpi="mpich"), \
            services(db) as start:
        svc = start(env=batch_env(db))
        svc.wait_started()
        t0 = time.monotonic()
        # One insert (one transaction): the live service's first plan sees the whole backlog;
        # two inserts let a plan between them pack the serial jobs alone into both queue slots.
        ids = add_jobs(cur, [{"name": f"s{i}", "application": "host", "node_packing_count": 4}
                             for i in range(196)] + [
                            {"name": f"m{i}", "application": "ranks", "num_nodes": 2,
                             "ranks_per_node": 1} for i in range(4)])
        serial, mpi = ids[:196], ids[196:]
        wait_for(lambda: any(r["scheduler_id"] for r in launches(cur)), 30, "a submission")
        t_submit = time.monotonic() - t0
        wait_for(lambda: set(states(cur).values()) == {"JOB_FINISHED"}, 110,
                 "all 200 jobs to finish")
        t_done = time.monotonic() - t0
        rows = wait_for(lambda: (rows := launches(cur)) and all(
            r["state"] == "finished" for r in rows) and rows, 30,
            "the service to see every batch job end")
        t_seen = time.monotonic() - t0
    print(f"\nslurm: 200 jobs -> first batch job submitted {t_submit:.1f} s, all finished "
          f"{t_done:.1f} s, batch jobs seen finished {t_seen:.1f} s; batch jobs "
          f"{[(r['job_mode'], r['nodes'], r['wall_minutes']) for r in rows]}")
    # The 4 MPI jobs fill one 2-node x 5-minute batch job; the serial backlog gets the other
    # queue slot. MPI-mode launchers also run single-node jobs, so both kinds ran the serial jobs.
    assert sorted(r["job_mode"] for r in rows) == ["mpi", "serial"]
    cur.execute(f"SELECT job_mode, num_nodes FROM {schema.SESSION_TABLE} "
                "WHERE job_mode <> 'processing' ORDER BY job_mode")
    assert cur.fetchall() == [("mpi", 2), ("serial", 2)]
    assert all(r["queue"] == "debug" and 1 <= r["nodes"] <= 2 for r in rows)
    for r in rows:
        with open(r["command"]) as fh:
            assert r["project"] == "" and "--account" not in fh.read()
    nodes = node_names()
    for job_id in mpi:  # each MPI job: 2 ranks in one communicator on 2 different nodes
        ranks = []
        for rank in (0, 1):
            with open(os.path.join(workdir(db, cur, job_id), f"rank{rank}")) as fh:
                ranks.append(fh.read().split())
        assert [r[:2] for r in ranks] == [["2", "1"], ["2", "1"]]
        assert len({r[2] for r in ranks}) == 2 and {r[2] for r in ranks} <= nodes
    hosts = set()
    for i, job_id in enumerate(serial):
        with open(os.path.join(workdir(db, cur, job_id), f"s{i}.out")) as fh:
            hosts.add(fh.read().strip())
    assert hosts <= nodes
    print(f"serial jobs ran on {sorted(hosts)}")


ONCE = """#!/bin/sh
# First run: sleep (to be cancelled); a retry in the same working directory finishes at once.
if [ -e started ]; then echo retried; else touch started; sleep 120; fi
"""


def test_a_scancelled_batch_job_has_its_jobs_timed_out_and_finished_by_a_later_one(
        sdb: tuple[str, Any], slurm: Slurm) -> None:
    db, cur = sdb
    tmp = make_public_tmpdir("balsam-service-slurm-app-")
    add_app(cur, "once", write_script(tmp, "once.sh", ONCE))
    with settings(db, queues=QUEUES, project="test", service=SERVICE, launcher=LAUNCHER), \
            services(db) as start:
        svc = start(env=batch_env(db))
        svc.wait_started()
        ids = add_jobs(cur, [{"name": f"o{i}", "application": "once", "node_packing_count": 4}
                             for i in range(4)])
        wait_for(lambda: set(states(cur).values()) == {"RUNNING"}, 60, "the jobs to run")
        (first,) = launches(cur)
        t0 = time.monotonic()
        slurm.cancel(first["scheduler_id"])
        wait_for(lambda: set(states(cur).values()) == {"JOB_FINISHED"}, 90,
                 "the jobs to be finished by a later batch job")
        t_done = time.monotonic() - t0
        rows = wait_for(lambda: (rows := launches(cur)) and len(rows) >= 2 and rows[0]["state"]
                        == "cancelled" and rows[-1]["state"] == "finished" and rows, 30,
                        "the service to see both batch jobs end")
    print(f"\nslurm: scancel -> jobs finished by a later batch job {t_done:.1f} s later; "
          f"batch jobs {[(r['scheduler_id'], r['state']) for r in rows]}")
    assert len(rows) == 2
    for job_id in ids:
        moves = [(e[1], e[2]) for e in events(cur, job_id)]
        timeout = moves.index(("RUNNING", "RUN_TIMEOUT"))
        assert moves[timeout:] == [("RUNNING", "RUN_TIMEOUT"), ("RUN_TIMEOUT", "RESTART_READY"),
                                   ("RESTART_READY", "RUNNING"), ("RUNNING", "RUN_DONE"),
                                   ("RUN_DONE", "JOB_FINISHED")]
        message = [e[3] for e in events(cur, job_id) if e[2] == "RUN_TIMEOUT"][0]
        # The launcher's clean stop on SIGTERM, the task's own SIGTERM from Slurm seen first,
        # or (SIGKILL 2 s later) the sweep of its lease: never a RUN_ERROR.
        assert message in ("stopped by the launcher: the launcher received SIGTERM",) or (
            message.startswith("terminated by SIGTERM from outside the launcher")) or (
            "lost its lease" in message), message
