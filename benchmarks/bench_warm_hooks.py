"""Benchmark: site app hooks through processing, cold (a new ``python -m balsam.api.hooks``
per hook, as before 2026-12-06) against warm (each transition worker's warm hook runner,
:mod:`balsam.processing.warm_hooks`), in one run.

Each round, on one throwaway DB, both sides take ``-n`` (default 200) new jobs of
``<db>/apps/bench.py``'s ``Hooked`` (a ``preprocess`` hook that prints a line, sets
``self.job.data`` and ``self.job.state = "PREPROCESSED"``) from READY to PREPROCESSED through a
real :class:`~balsam.processing.worker.TransitionPool` (``--threads`` workers, default: cores;
stage-in then the hook), the only difference being the pool's ``warm_hooks``. Timed: hooks per
second (jobs / wall time from the pool's start until the last job is PREPROCESSED) and CPU per
hook (this process -- the workers' threads -- plus every child it reaped, i.e. hook processes
or runners and their forks, plus the DB server). Sides alternate, medians; the load is printed.

Run: ``python benchmarks/bench_warm_hooks.py [-n 200] [--rounds 3] [--threads T]``.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line, throwaway_db  # noqa: E402
from bench_launcher_serial import server_cpu  # noqa: E402

APP = '''from balsam.site import ApplicationDefinition


class Hooked(ApplicationDefinition):
    command_template = "/bin/true {{ x }}"

    def preprocess(self):
        print("preprocessing", self.job.parameters["x"])
        self.job.data = {"x": self.job.parameters["x"]}
        self.job.state = "PREPROCESSED"


class Plain(ApplicationDefinition):
    command_template = "/bin/true {{ x }}"
'''
TRUE = "/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true"


def cpu_total() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def side(db_path: str, kind: str, count: int, threads: int, tag: str) -> tuple[float, ...]:
    """(hooks/s, CPU ms/hook of this process and its children, DB server CPU ms/hook, load)."""
    from balsam.api import Job
    from balsam.core import schema
    from balsam.db.connect import connect
    from balsam.processing import transitions
    from balsam.processing.steps import Limits
    from balsam.processing.worker import TransitionPool

    app = "bench.Plain" if kind == "true script" else "bench.Hooked"
    jobs = Job.objects.bulk_create([Job(db_path, app_name=app,
                                        workdir=f"{tag}/{kind}/{i}", parameters={"x": i})
                                    for i in range(count)])
    ids = [str(j.id) for j in jobs]
    conn = connect(db_path)
    cur = conn.cursor()
    if kind == "true script":  # the floor: a classic script that does nothing, spawned
        cur.execute(f"UPDATE {schema.APP_TABLE} SET preprocess = %s WHERE name = %s",
                    [TRUE, app])
        conn.commit()
    log = logging.getLogger("bench")
    states: dict[str, int] = {}
    cpu0, server0, wall0 = cpu_total(), server_cpu(db_path), time.perf_counter()
    pool = TransitionPool(threads, db_path, wf_filter=None, base_env=dict(os.environ),
                          limits=Limits(300.0), log=log, heartbeat_seconds=10.0,
                          lease_seconds=60, idle_wait_seconds=1.0, reconnect_max_seconds=30.0,
                          warm_hooks=(kind != "cold"))
    pool.start()
    try:
        while True:
            transitions.advance(cur, None, 5000)  # CREATED -> READY, as a launcher's loop does
            conn.commit()
            if time.perf_counter() - wall0 > 900:
                sys.exit(f"bench_warm_hooks: {kind} side not done after 900 s: {states}")
            cur.execute(f"SELECT state, count(*) FROM {schema.JOB_TABLE} "
                        "WHERE job_id::text = ANY(%s) GROUP BY state", [ids])
            states = dict(cur.fetchall())
            conn.commit()
            if states.get("FAILED"):
                sys.exit(f"bench_warm_hooks: {states['FAILED']} job(s) FAILED ({kind})")
            if states.get("PREPROCESSED", 0) == count:
                break
            time.sleep(0.05)
        wall = time.perf_counter() - wall0
    finally:
        pool.stop()
    cpu, server = cpu_total() - cpu0, server_cpu(db_path) - server0
    conn.close()
    return count / wall, cpu * 1000 / count, server * 1000 / count, os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="jobs per side and round (200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    cores = os.cpu_count() or 1
    parser.add_argument("--threads", type=int, default=cores,
                        help=f"transition workers (default: cores = {cores})")
    args = parser.parse_args()
    print(machine_line())
    print(f"# {args.n} jobs with a preprocess hook per side, {args.threads} transition workers")
    got: dict[str, list[tuple[float, ...]]] = {"cold": [], "warm": [], "true script": []}
    with throwaway_db() as db_path:
        os.makedirs(os.path.join(db_path, "apps"), exist_ok=True)
        with open(os.path.join(db_path, "apps", "bench.py"), "w") as fh:
            fh.write(APP)
        from balsam.db.django_setup import use_database

        use_database(db_path)
        for r in range(1, args.rounds + 1):
            order = ("cold", "warm", "true script")
            for kind in order if r % 2 else order[::-1]:
                res = side(db_path, kind, args.n, args.threads, f"r{r}")
                got[kind].append(res)
                print(f"round {r} {kind:11}: {res[0]:6.1f} hooks/s  CPU ms/hook: workers+children "
                      f"{res[1]:7.1f}  DB server {res[2]:5.1f}  load {res[3]:.1f}", flush=True)
    med = {k: [statistics.median(x[i] for x in v) for i in range(4)] for k, v in got.items()}
    for kind in ("cold", "warm", "true script"):
        m = med[kind]
        print(f"{kind:11} median: {m[0]:6.1f} hooks/s  CPU ms/hook: workers+children {m[1]:7.1f}  "
              f"DB server {m[2]:5.1f}  (load {m[3]:.1f})")
    print(f"warm / cold: hooks/s {med['warm'][0] / med['cold'][0]:.1f}x, CPU per hook "
          f"{med['warm'][1] / med['cold'][1]:.3f}x ({med['cold'][1] / med['warm'][1]:.0f}x less)")
    base = med["true script"][1]
    print(f"the hook alone (CPU per job minus the true script side's {base:.1f} ms): cold "
          f"{med['cold'][1] - base:.1f} ms, warm {med['warm'][1] - base:.1f} ms")
    print(machine_line())


if __name__ == "__main__":
    main()
