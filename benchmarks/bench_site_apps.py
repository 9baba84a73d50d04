"""Benchmark: templated site apps (``balsam.site.ApplicationDefinition`` with a
``command_template``) against classic apps (``balsam app``) for the same no-op command, through
the same serial launcher, in one run.

Goal (issue 14): templated shell apps at >= 0.9 x the rate of classic apps. Printed, not asserted.

Each round, on one throwaway DB, both sides run 2,000 jobs of ``true``:

* **classic**: an app row with ``executable=/usr/bin/true``; jobs made with
  ``BalsamJob.objects.bulk_create`` (name, workflow);
* **templated**: ``<db>/apps/bench.py`` holding ``class Noop(ApplicationDefinition)`` with
  ``command_template = "/usr/bin/true {{ x }}"``; jobs made with ``balsam.api.Job(...)`` and
  ``Job.objects.bulk_create`` (``workdir``, ``parameters={"x": i}``: the template is rendered
  and every value shell-quoted per job).

Timed: **create** (constructing the job objects and inserting them in one call: the newer API
loads the app, checks and renders the parameters per job) and **run** (a real
``balsam launcher --consume-all --job-mode serial`` subprocess; 2,000 / (last RUN_DONE event -
first RUNNING event), every state change recorded; both sides start from PREPROCESSED, made so
by one untimed processing pass). The table is emptied between sides; sides alternate, medians.

Run: ``python benchmarks/bench_site_apps.py [-n 2000] [--rounds 3] [--packing P]``.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import finished_run_interval, machine_line, throwaway_db  # noqa: E402

TRUE = "/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true"
APP = f'''from balsam.site import ApplicationDefinition


class Noop(ApplicationDefinition):
    command_template = "{TRUE} {{{{ x }}}}"
'''


def settings(db_path: str) -> None:
    import yaml

    path = os.path.join(db_path, "settings.yml")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    data["local_nodes"] = 1
    data.setdefault("launcher", {}).update(idle_exit_seconds=1, idle_wait_seconds=0.5)
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh)


def empty(db_path: str) -> None:
    from balsam.core import schema
    from balsam.db.connect import connect

    conn = connect(db_path)
    with conn, conn.cursor() as cur:
        cur.execute(f"TRUNCATE {schema.EVENT_TABLE}, {schema.DEP_TABLE}, {schema.JOB_TABLE}, "
                    f"{schema.SESSION_TABLE} CASCADE")
    conn.close()
    shutil.rmtree(os.path.join(db_path, "data"), ignore_errors=True)


def create_classic(count: int, packing: int) -> float:
    from balsam.core.models import ApplicationDefinition, BalsamJob

    ApplicationDefinition.objects.get_or_create(name="noop", defaults={"executable": TRUE})
    t0 = time.perf_counter()
    BalsamJob.objects.bulk_create([BalsamJob(name=f"t{i}", workflow="bench", application="noop",
                                             node_packing_count=packing)
                                   for i in range(count)])
    return time.perf_counter() - t0


def create_templated(db_path: str, count: int, packing: int) -> float:
    from balsam.api import Job

    t0 = time.perf_counter()
    Job.objects.bulk_create([Job(db_path, app_name="bench.Noop", workdir=f"bench/{i}",
                                 parameters={"x": i}, node_packing_count=packing)
                             for i in range(count)])
    return time.perf_counter() - t0


def make_runnable(db_path: str) -> None:
    from balsam.core import schema
    from balsam.db.connect import connect
    from balsam.processing import transitions

    conn = connect(db_path)
    try:
        while True:
            with conn, conn.cursor() as cur:
                transitions.advance(cur, None, 5000)
                cur.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} "
                            "WHERE state <> 'PREPROCESSED'")
                if cur.fetchone()[0] == 0:
                    return
    finally:
        conn.close()


def run(db_path: str, count: int) -> tuple[float, float, float]:
    """(tasks/s, launcher CPU ms per task: master + workers, master statements per task; the
    last two from its log)."""
    from balsam.db.connect import connect

    proc = subprocess.run([sys.executable, "-m", "balsam", "launcher", "--consume-all",
                           "--job-mode", "serial"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"launcher failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    conn = connect(db_path)
    try:
        first_running, last_done = finished_run_interval(conn, count)
    finally:
        conn.close()
    with open(proc.stdout.split(", log ")[1].strip()) as fh:
        log = fh.read()
    cpu = sum(float(x) for x in re.findall(r"serial (?:master|worker \d+) exits: .*?([\d.]+) s CPU",
                                           log))
    statements = re.search(r"serial master exits: (\d+) statements", log)
    assert statements is not None, log
    return (count / (last_done - first_running), cpu * 1000 / count,
            int(statements.group(1)) / count)


def side(db_path: str, kind: str, count: int, packing: int) -> tuple[float, ...]:
    """(jobs created per second, tasks run per second, launcher CPU ms per task, statements
    per task) of one side."""
    empty(db_path)
    took = (create_classic(count, packing) if kind == "classic"
            else create_templated(db_path, count, packing))
    make_runnable(db_path)
    return (count / took, *run(db_path, count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="jobs per side (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    cores = os.cpu_count() or 1
    parser.add_argument("--packing", type=int, default=cores,
                        help=f"node_packing_count of the jobs (default: cores = {cores})")
    args = parser.parse_args()
    print(machine_line())
    print(f"# {args.n} jobs of {TRUE} per side, serial launcher, node_packing_count "
          f"{args.packing}")
    results: dict[str, list[tuple[float, ...]]] = {"classic": [], "templated": []}
    with throwaway_db() as db_path:
        settings(db_path)
        os.makedirs(os.path.join(db_path, "apps"), exist_ok=True)
        with open(os.path.join(db_path, "apps", "bench.py"), "w") as fh:
            fh.write(APP)
        from balsam.db.django_setup import use_database

        use_database(db_path)
        for r in range(1, args.rounds + 1):
            order = ("classic", "templated") if r % 2 else ("templated", "classic")
            for kind in order:
                created, ran, cpu, sql = side(db_path, kind, args.n, args.packing)
                results[kind].append((created, ran, cpu, sql))
                print(f"round {r} {kind:9}: create {created:8,.0f} jobs/s   run {ran:6.0f} "
                      f"tasks/s   launcher CPU {cpu:.2f} ms/task   {sql:.3f} statements/task")
    med = {k: [statistics.median(x[i] for x in v) for i in range(4)] for k, v in results.items()}
    for kind in ("classic", "templated"):
        print(f"{kind:9} median: create {med[kind][0]:8,.0f} jobs/s   run {med[kind][1]:6.0f} "
              f"tasks/s   launcher CPU {med[kind][2]:.2f} ms/task   {med[kind][3]:.3f} "
              "statements/task")
    print(f"templated / classic: run {med['templated'][1] / med['classic'][1]:.2f} "
          f"(goal >= 0.9), create {med['templated'][0] / med['classic'][0]:.2f}, launcher CPU "
          f"per task {med['templated'][2] / med['classic'][2]:.2f}")


if __name__ == "__main__":
    main()
