"""One peer's run of the no-op campaign, in a process of its own (for ``bench_peers.py``).

``python benchmarks/_peers.py PEER COUNT CORES WORKDIR`` starts the peer (Parsl's
HighThroughputExecutor with or without its monitoring database, or HyperQueue's local server
and worker), runs one warm-up task so its workers are connected, then submits COUNT tasks
running ``true`` and waits for all of them; the last line printed is JSON with the epoch times
``ready`` (warm-up done: the COUNT tasks are submitted from then on) and ``done`` (all finished)
and, for HyperQueue, ``poll``: how long its client took to see a one-task job end.
A process per run keeps each peer's threads, sockets and interchange processes out of the next
run and lets the caller capture what the peers print (HyperQueue's server table, Parsl's logs).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable

TRUE = "/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true"


def parsl_run(count: int, cores: int, workdir: str, monitoring: bool) -> dict[str, float]:
    """HighThroughputExecutor on a LocalProvider (one block: this machine, ``cores`` workers),
    ``bash_app`` returning ``true``; with ``monitoring`` its MonitoringHub records every task's
    states in an SQLite database (resource sampling off: Balsam records states, not usage)."""
    import parsl
    from parsl.app.app import bash_app
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    hub = None
    if monitoring:
        from parsl.monitoring.monitoring import MonitoringHub

        hub = MonitoringHub(logging_endpoint=f"sqlite:///{workdir}/monitoring.db",
                            resource_monitoring_enabled=False)
    executor = HighThroughputExecutor(label="htex", address="127.0.0.1",
                                      max_workers_per_node=cores,
                                      provider=LocalProvider(init_blocks=1, min_blocks=1,
                                                             max_blocks=1))
    dfk = parsl.load(Config(executors=[executor], monitoring=hub, run_dir=workdir))

    @bash_app
    def noop(path: str) -> str:
        return path

    try:
        noop(TRUE).result()
        ready = time.time()
        futures = [noop(TRUE) for _ in range(count)]
        for future in futures:
            if future.result() != 0:
                raise SystemExit("a parsl task failed")
        done = time.time()
    finally:
        dfk.cleanup()
    return {"ready": ready, "done": done}


def hyperqueue_run(count: int, cores: int, workdir: str) -> dict[str, float]:
    """HyperQueue's ``LocalCluster`` (server and one worker with ``cores`` cores) and its
    ``Client``: one job of ``count`` program tasks running ``true``, outputs discarded."""
    from hyperqueue import Job
    from hyperqueue.cluster import LocalCluster, WorkerConfig

    with LocalCluster(server_dir=workdir) as cluster:
        cluster.start_worker(WorkerConfig(cores=cores))
        client = cluster.client()
        warm = Job(default_workdir=workdir)
        warm.program([TRUE], stdout=None, stderr=None)
        client.wait_for_jobs([client.submit(warm)])
        ready = time.time()
        job = Job(default_workdir=workdir)
        for _ in range(count):
            job.program([TRUE], stdout=None, stderr=None)
        submitted = client.submit(job)
        client.wait_for_jobs([submitted])
        done = time.time()
        # wait_for_jobs polls the server (about once a second): a one-task job's round trip
        # bounds how late the client saw the last task's end (measured after, not to delay it).
        probe = Job(default_workdir=workdir)
        probe.program([TRUE], stdout=None, stderr=None)
        client.wait_for_jobs([client.submit(probe)])
        poll = time.time() - done
    return {"ready": ready, "done": done, "poll": poll}


RUNNERS: dict[str, Callable[[int, int, str], dict[str, float]]] = {
    "parsl": lambda n, c, d: parsl_run(n, c, d, monitoring=False),
    "parsl-monitoring": lambda n, c, d: parsl_run(n, c, d, monitoring=True),
    "hyperqueue": hyperqueue_run,
}


def main() -> None:
    peer, count, cores, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    times = RUNNERS[peer](count, cores, workdir)
    print(json.dumps(times), flush=True)


if __name__ == "__main__":
    main()
