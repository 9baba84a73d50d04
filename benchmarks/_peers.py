"""One peer's run of a benchmark campaign, in a process of its own (for ``bench_peers.py``).

``python benchmarks/_peers.py PEER COUNT CORES WORKDIR`` starts the peer (Parsl's
HighThroughputExecutor with or without its monitoring database, or HyperQueue's local server
and worker), runs one warm-up task so its workers are connected, then submits COUNT tasks and
waits for all of them; the last line printed is JSON with the epoch times ``ready`` (warm-up
done: the COUNT tasks are submitted from then on) and ``done`` (all finished) and, for
HyperQueue, ``poll``: how long its client took to see a one-task job end.

PEER is ``parsl``, ``parsl-monitoring`` or ``hyperqueue`` for the shell campaign (each task runs
``true``), ``parsl-fn`` or ``hyperqueue-fn`` for the Python-function campaign (each task calls
``noop(i)``: Parsl's ``python_app``, whose results are gathered and checked; HyperQueue's
``Job.function``, which runs each call in a new Python interpreter and keeps no return value).
A process per run keeps each peer's threads, sockets and interchange processes out of the next
run and lets the caller capture what the peers print (HyperQueue's server table, Parsl's logs).
SIGTERM exits through the ``finally`` blocks, so the caller's time-out stops the peer's own
processes cleanly before it kills what is left.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Callable

TRUE = "/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true"


def noop(i: int) -> int:
    """The function campaign's task."""
    return i


def parsl_run(count: int, cores: int, workdir: str, monitoring: bool = False,
              function: bool = False) -> dict[str, float]:
    """HighThroughputExecutor on a LocalProvider (one block: this machine, ``cores`` workers):
    a ``bash_app`` returning ``true``, or with ``function`` a ``python_app`` calling ``noop(i)``
    (every result checked); with ``monitoring`` its MonitoringHub records every task's states in
    an SQLite database (resource sampling off: Balsam records states, not usage)."""
    import parsl
    from parsl.app.app import bash_app, python_app
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
    def shell_noop(path: str, i: int) -> str:
        return path

    @python_app
    def function_noop(path: str, i: int) -> int:
        return i

    app, expect = ((function_noop, lambda i: i) if function else (shell_noop, lambda i: 0))
    try:
        app(TRUE, -1).result()
        ready = time.time()
        futures = [app(TRUE, i) for i in range(count)]
        for i, future in enumerate(futures):
            if future.result() != expect(i):
                raise SystemExit(f"parsl task {i} returned {future.result()!r}")
        done = time.time()
    finally:
        dfk.cleanup()
    return {"ready": ready, "done": done}


def hyperqueue_run(count: int, cores: int, workdir: str, function: bool = False
                   ) -> dict[str, float]:
    """HyperQueue's ``LocalCluster`` (server and one worker with ``cores`` cores) and its
    ``Client``: one job of ``count`` program tasks running ``true`` or, with ``function``, of
    ``count`` ``Job.function(noop, args=(i,))`` tasks (each a new interpreter: this one's, not
    the ``python3`` on PATH); outputs discarded."""
    from hyperqueue import Job
    from hyperqueue.cluster import LocalCluster, WorkerConfig
    from hyperqueue.task.function import PythonEnv

    def job_of(n: int) -> Job:
        job = Job(default_workdir=workdir)
        for i in range(n):
            if function:
                job.function(noop, args=(i,), stdout=None, stderr=None)
            else:
                job.program([TRUE], stdout=None, stderr=None)
        return job

    with LocalCluster(server_dir=workdir) as cluster:
        cluster.start_worker(WorkerConfig(cores=cores))
        client = cluster.client(python_env=PythonEnv(python_bin=sys.executable))
        client.wait_for_jobs([client.submit(job_of(1))])
        ready = time.time()
        client.wait_for_jobs([client.submit(job_of(count))])
        done = time.time()
        # wait_for_jobs polls the server (about once a second): a one-task job's round trip
        # bounds how late the client saw the last task's end (measured after, not to delay it).
        client.wait_for_jobs([client.submit(job_of(1))])
        poll = time.time() - done
    return {"ready": ready, "done": done, "poll": poll}


RUNNERS: dict[str, Callable[[int, int, str], dict[str, float]]] = {
    "parsl": parsl_run,
    "parsl-monitoring": lambda n, c, d: parsl_run(n, c, d, monitoring=True),
    "hyperqueue": hyperqueue_run,
    "parsl-fn": lambda n, c, d: parsl_run(n, c, d, function=True),
    "hyperqueue-fn": lambda n, c, d: hyperqueue_run(n, c, d, function=True),
}


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _default_sigterm() -> None:
    # Processes the peer forks keep the kernel's SIGTERM: a Python handler can miss a signal
    # that arrives just before a blocking call, and the peer's clean-up would wait for them.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    os.register_at_fork(after_in_child=_default_sigterm)
    peer, count, cores, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    times = RUNNERS[peer](count, cores, workdir)
    print(json.dumps(times), flush=True)


if __name__ == "__main__":
    main()
