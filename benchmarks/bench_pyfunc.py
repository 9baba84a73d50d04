"""Benchmark: 1,000 no-op Python-function tasks through a real serial-mode launcher (warm
workers, every state and every return value recorded), against a plain
``multiprocessing.Pool`` and Parsl's HighThroughputExecutor running the same no-op on this
machine, in the same run.

Goal (issue 14): launcher rate >= 1.5 x Parsl HTEX's rate. Printed, not asserted.

Each round:

* **launcher**: N jobs of a site app ``class Noop(ApplicationDefinition): def run(self, i):
  return i`` created with ``Job.objects.bulk_create`` (node_packing_count = cores) in a
  throwaway DB; a real ``balsam launcher --consume-all --job-mode serial`` subprocess runs them
  (processing moves them CREATED -> PREPROCESSED, warm workers run ``run()``, RUNNING, RUN_DONE
  and JOB_FINISHED recorded, each return value written to ``core_jobpayload``). ``run rate``:
  N / (last RUN_DONE - first RUNNING event), once the ensemble is up; ``steady``: 80% of N
  over the 10th to 90th percentile of RUN_DONE times, or the run rate if those share one
  commit's timestamp (the warm workers start lazily, in the first 10%); ``end-to-end``:
  N / (last RUN_DONE - launcher process start), also paying for Python, mpiexec, the ranks,
  their connections and the warm workers' start. Every result is then read back with
  ``as_completed`` + ``result()`` and checked (not timed).
* **Pool**: ``multiprocessing.Pool(cores).map(noop, range(N), chunksize=1)``; ``run``: the map
  alone on a started pool; ``end-to-end``: pool start included.
* **Parsl** (if ``import parsl`` works): a ``HighThroughputExecutor`` with ``cores`` workers
  on a ``LocalProvider``; ``run``: N ``python_app`` no-op calls submitted and all results
  gathered, after one warm-up call (so the interpreter pool is up); ``end-to-end``: from
  ``parsl.load`` to the last result.

With ``--compare-with SRC`` every round also runs the launcher of another source tree (e.g. a
``git archive`` of main: its directory first on ``PYTHONPATH``), in alternating order, and the
medians of both sides are printed with their ratios: same-run before/after. The ``uptime`` load
is printed before and after.

Run: ``python benchmarks/bench_pyfunc.py [-n 1000] [--rounds 3] [--no-parsl] [--compare-with SRC]``.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _procs import run_in_session  # noqa: E402
from _throwaway import finished_run_interval, machine_line, throwaway_db  # noqa: E402
from bench_site_apps import settings as site_settings  # noqa: E402

APP = '''from balsam.site import ApplicationDefinition


class Noop(ApplicationDefinition):
    def run(self, i):
        return i
'''


def noop(i: int) -> int:
    return i


def settings(db_path: str) -> None:
    """bench_site_apps's one-node settings, and the site's apps folder."""
    site_settings(db_path)
    os.makedirs(os.path.join(db_path, "apps"), exist_ok=True)
    with open(os.path.join(db_path, "apps", "bench.py"), "w") as fh:
        fh.write(APP)


def fill(db_path: str, count: int, packing: int) -> list[Any]:
    from django.db import connection

    from balsam.api import Job
    from balsam.core import schema

    with connection.cursor() as cur:
        cur.execute(f"TRUNCATE {schema.EVENT_TABLE}, {schema.DEP_TABLE}, {schema.JOB_TABLE}, "
                    f"{schema.SESSION_TABLE} CASCADE")
    jobs = [Job(site_path=db_path, app_name="bench.Noop", workdir=f"noop/{i}",
                parameters={"i": i}, node_packing_count=packing) for i in range(count)]
    return Job.objects.bulk_create(jobs)


def launcher_round(db_path: str, jobs: list[Any], source: str = "") -> dict[str, float]:
    """One launcher run over ``jobs``; ``source``: a source tree to run the launcher from."""
    from balsam.api import as_completed
    from balsam.db.connect import connect

    count = len(jobs)
    env = dict(os.environ, PYTHONPATH=source) if source else None
    started = time.time()
    # In ``source`` (as bench_launcher_serial.py does): ``python -m`` puts the current directory
    # first on sys.path, before PYTHONPATH, so run from this repository's root the "base" side
    # ran this tree's launcher, ranks and warm workers (until session 13).
    proc = run_in_session([sys.executable, "-m", "balsam", "launcher", "--consume-all",
                           "--job-mode", "serial"], what="balsam launcher", timeout=600, env=env,
                          cwd=source or None)
    if proc.returncode != 0:
        raise SystemExit(f"launcher failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    conn = connect(db_path)
    try:
        first_running, last_done = finished_run_interval(conn, count)
        with conn.cursor() as cur:
            cur.execute("SELECT count(DISTINCT worker) FROM core_jobpayload")
            (workers,) = cur.fetchone()
            cur.execute("SELECT percentile_disc(ARRAY[0.1, 0.9]) WITHIN GROUP (ORDER BY "
                        "extract(epoch FROM timestamp)) FROM core_jobevent "
                        "WHERE to_state = 'RUN_DONE'")
            (p10, p90), = cur.fetchone()
    finally:
        conn.close()
    values = sorted(j.result() for j in as_completed(jobs, timeout=60))
    if values != list(range(count)):
        raise SystemExit("the launcher's results are not 0..N-1")
    run = count / (last_done - first_running)
    # A short run can record its middle 80% of RUN_DONE events in one transaction, under one
    # timestamp: no steady rate to measure then, so the run rate stands for it.
    spread = float(p90) - float(p10)
    return {"run": run, "e2e": count / (last_done - started),
            "steady": 0.8 * count / spread if spread > 0 else run, "workers": workers}


def pool_round(count: int, cores: int) -> dict[str, float]:
    t0 = time.perf_counter()
    with multiprocessing.Pool(cores) as pool:
        t1 = time.perf_counter()
        values = pool.map(noop, range(count), chunksize=1)
        t2 = time.perf_counter()
    assert values == list(range(count))
    return {"run": count / (t2 - t1), "e2e": count / (t2 - t0)}


def parsl_round(count: int, cores: int) -> Optional[dict[str, float]]:
    try:
        import parsl
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider
    except ImportError:
        return None

    @parsl.python_app
    def parsl_noop(i: int) -> int:
        return i

    run_dir = tempfile.mkdtemp(prefix="balsam-bench-parsl-")
    config = Config(executors=[HighThroughputExecutor(
        label="htex", max_workers_per_node=cores, cores_per_worker=1,
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))],
        run_dir=run_dir, strategy="none")
    t0 = time.perf_counter()
    dfk = parsl.load(config)
    try:
        parsl_noop(-1).result()  # the workers are up
        t1 = time.perf_counter()
        values = [f.result() for f in [parsl_noop(i) for i in range(count)]]
        t2 = time.perf_counter()
    finally:
        dfk.cleanup()
        parsl.clear()
        shutil.rmtree(run_dir, ignore_errors=True)
    assert values == list(range(count))
    return {"run": count / (t2 - t1), "e2e": (count + 1) / (t2 - t0)}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="tasks (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (default 3)")
    parser.add_argument("--no-parsl", action="store_true", help="skip Parsl")
    parser.add_argument("--compare-with", metavar="SRC", default="",
                        help="also run, in every round, the launcher of this source tree "
                             "(e.g. `git archive` of main): same-run before/after")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(machine_line())
    print(f"# uptime before: {uptime()}")
    print(f"# {args.n} no-op Python-function tasks; {cores} workers each")
    sides = {"launcher": ""}
    if args.compare_with:
        sides = {"base": os.path.abspath(args.compare_with), "launcher": ""}
    results: dict[str, list[dict[str, float]]] = {"pool": [], "parsl": []}
    results.update((side, []) for side in sides)
    with throwaway_db() as db_path:
        settings(db_path)
        for r in range(1, args.rounds + 1):
            results["pool"].append(pool_round(args.n, cores))
            if not args.no_parsl:
                got = parsl_round(args.n, cores)
                if got is not None:
                    results["parsl"].append(got)
            order = list(sides) if r % 2 else list(reversed(sides))
            for side in order:
                jobs = fill(db_path, args.n, cores)
                results[side].append(launcher_round(db_path, jobs, sides[side]))
            line = " | ".join(f"{k} {v[-1]['run']:6.0f} run, {v[-1]['e2e']:6.0f} e2e"
                              for k, v in results.items() if len(v) == r)
            steady = ", ".join(f"{side} steady {results[side][-1]['steady']:.0f}"
                               for side in sides)
            print(f"round {r} (tasks/s): {line}; {steady}; warm workers used: "
                  f"{results['launcher'][-1]['workers']:.0f}")
    print(f"# uptime after: {uptime()}")
    med = {k: (statistics.median(m["run"] for m in v), statistics.median(m["e2e"] for m in v))
           for k, v in results.items() if v}
    steady = {side: statistics.median(m["steady"] for m in results[side]) for side in sides}
    labels = {"pool": "multiprocessing.Pool", "parsl": "Parsl HTEX",
              "base": f"base ({args.compare_with})", "launcher": "Balsam serial launcher"}
    for name, label in labels.items():
        if name in med:
            print(f"{label[:24]:24s} median {med[name][0]:6.0f} tasks/s run, {med[name][1]:6.0f} "
                  "tasks/s end-to-end" + (f", {steady[name]:6.0f} steady (10th-90th "
                                          "percentile of RUN_DONE)" if name in steady else ""))
    for side in sides:
        launcher = med[side]
        print(f"{side} / Pool:  run {launcher[0] / med['pool'][0]:.2f}, end-to-end "
              f"{launcher[1] / med['pool'][1]:.2f}")
        if "parsl" in med:
            print(f"{side} / Parsl: run {launcher[0] / med['parsl'][0]:.2f}, steady "
                  f"{steady[side] / med['parsl'][0]:.2f}, end-to-end "
                  f"{launcher[1] / med['parsl'][1]:.2f}  (goal >= 1.5)")
        else:
            print("Parsl: not installed (pip install parsl) - not compared")
    if "base" in sides:
        mine, base = med["launcher"], med["base"]
        print(f"launcher / base: run {mine[0] / base[0]:.2f}, steady "
              f"{steady['launcher'] / steady['base']:.2f}, end-to-end {mine[1] / base[1]:.2f}")


if __name__ == "__main__":
    main()
