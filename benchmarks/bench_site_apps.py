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
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line, throwaway_db  # noqa: E402
from bench_launcher_serial import launcher_round  # noqa: E402

TRUE = "/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true"
APP = f'''from balsam.site import ApplicationDefinition


class Noop(ApplicationDefinition):
    command_template = "{TRUE} {{{{ x }}}}"


class Clean(ApplicationDefinition):
    command_template = "{TRUE}"
    cleanup_files = ["*.tmp"]
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


def run(db_path: str, count: int) -> tuple[float, ...]:
    """(tasks/s, master CPU ms per task, worker ranks' CPU ms per task, master statements per
    task -- these three from the launcher's log --, CPU ms per task of the whole launcher
    process tree (its processing threads, the MPI launcher, the ranks, the tasks) and of the
    database server, over the launcher's run): one :func:`bench_launcher_serial.launcher_round`.
    (Before 2026-12-06 this script's own log pattern missed the worker ranks' line, so the
    "launcher CPU" it printed was the master's alone.)"""
    r = launcher_round(db_path, count)
    assert r["worker_cpu"] > 0, r
    return (r["run"], r["master_cpu"] * 1000 / count, r["worker_cpu"] * 1000 / count,
            r["statements"], r["tree_cpu"] * 1000 / count, r["server_cpu"] * 1000 / count)


def side(db_path: str, kind: str, count: int, packing: int) -> tuple[float, ...]:
    """(jobs created per second, then :func:`run`'s values, then the 1-minute load average at
    the end) of one side."""
    empty(db_path)
    took = (create_classic(count, packing) if kind == "classic"
            else create_templated(db_path, count, packing))
    make_runnable(db_path)
    return (count / took, *run(db_path, count), os.getloadavg()[0])


def run_path_cpu(db_path: str, count: int, rounds: int) -> dict[str, tuple[float, ...]]:
    """The launcher's per-task work for each kind, in this process, in CPU microseconds (not
    wall time, so the load matters less): (the master's part: building the task spec from
    the claimed row and the message for the worker, pickled; the worker's parts: creating the
    working directory, then posix_spawn of the command and reaping it, as ``serial_worker``
    does). Medians of ``rounds`` alternating rounds over the same claimed rows (both kinds in
    the table)."""
    import pickle
    import resource
    from types import SimpleNamespace

    from balsam.core import leases, schema
    from balsam.db.connect import connect
    from balsam.launcher import spawn
    from balsam.launcher.job_source import JobSource
    from balsam.launcher.serial_master import work_item

    def cpu() -> float:
        use = resource.getrusage(resource.RUSAGE_SELF)
        return use.ru_utime + use.ru_stime

    empty(db_path)
    create_classic(count, 2)
    create_templated(db_path, count, 2)
    make_runnable(db_path)
    conn = connect(db_path)
    rows: dict[str, list[dict]] = {}
    try:
        with conn, conn.cursor() as cur:
            cols = ", ".join(leases.CLAIM_COLUMNS)
            for kind, where in (("classic", "= 'noop'"), ("templated", "<> 'noop'")):
                cur.execute(f"SELECT {cols}, 0 AS runs, ARRAY[]::text[] AS parents "
                            f"FROM {schema.JOB_TABLE} WHERE application {where}")
                names = [d[0] for d in cur.description]
                rows[kind] = [dict(zip(names, r)) for r in cur.fetchall()]
            source = JobSource(None, 0, SimpleNamespace(num_nodes=1, gpus_per_node=0),  # type: ignore[arg-type]
                               db_path, "serial", None, {})
            source._load_apps(cur, {"noop", "bench.Noop"})
    finally:
        conn.close()
    parts: dict[str, list[tuple[float, float, float]]] = {"classic": [], "templated": []}
    env = dict(os.environ)
    for r in range(rounds):
        for kind in ("classic", "templated") if r % 2 == 0 else ("templated", "classic"):
            t0 = cpu()
            works = [work_item(source.build(row, row["parents"])) for row in rows[kind]]
            pickle.dumps(works, protocol=pickle.HIGHEST_PROTOCOL)
            t1 = cpu()
            shutil.rmtree(os.path.join(db_path, "data"), ignore_errors=True)
            t2 = cpu()
            for w in works:  # what SpawnedTask does first; timed apart: mkdir is noisy here
                os.makedirs(w.workdir, exist_ok=True)
            t3 = cpu()
            for w in works:
                os.waitpid(spawn.SpawnedTask(w.job_id, w.argv, env | w.env, w.workdir,
                                             w.output_path).pid, 0)
            parts[kind].append(((t1 - t0) * 1e6 / count, (t3 - t2) * 1e6 / count,
                                (cpu() - t3) * 1e6 / count))
    os.chdir(os.path.dirname(db_path))  # SpawnedTask moved us into the last workdir
    return {k: tuple(statistics.median(x[i] for x in v) for i in range(3))
            for k, v in parts.items()}


def postprocess_cost(db_path: str, count: int) -> dict[str, tuple[float, float]]:
    """The postprocess script of an app with ``cleanup_files`` and no hook, run as processing
    runs it (:func:`balsam.processing.scripts.run_script`) for ``count`` jobs, each with a file
    to remove: the hook runner (what such an app's row named before 2026-12-06) against the
    stdlib-only cleanup script (what it names now). (wall ms, children's CPU ms) per job,
    alternating, medians of 3."""
    import resource

    from balsam.api import Job
    from balsam.api.sites import HOOK_RUNNER
    from balsam.processing import scripts
    from balsam.site import registry

    def children_cpu() -> float:
        use = resource.getrusage(resource.RUSAGE_CHILDREN)
        return use.ru_utime + use.ru_stime

    empty(db_path)
    jobs = Job.objects.bulk_create([Job(db_path, app_name="bench.Clean", workdir=f"clean/{i}")
                                    for i in range(count)])
    commands = {"hook runner": f"{HOOK_RUNNER} postprocess",
                "cleanup script": registry.cleanup_command(["*.tmp"])}
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in commands}
    for r in range(3):
        for kind in list(commands) if r % 2 == 0 else list(commands)[::-1]:
            wall, cpu = time.perf_counter(), children_cpu()
            for job in jobs:
                work = os.path.join(db_path, "data", job.workdir)
                os.makedirs(work, exist_ok=True)
                open(os.path.join(work, "scratch.tmp"), "w").close()
                env = dict(os.environ, BALSAM_JOB_ID=str(job.id), BALSAM_DB_PATH=db_path)
                result = scripts.run_script("postprocess", commands[kind], work, env,
                                            timeout=120)
                assert result.ok and not os.path.exists(os.path.join(work, "scratch.tmp")), \
                    result.tail
            got[kind].append(((time.perf_counter() - wall) * 1000 / count,
                              (children_cpu() - cpu) * 1000 / count))
    return {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
            for k, v in got.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="jobs per side (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--cpu-rounds", type=int, default=6,
                        help="rounds of the in-process run-path CPU comparison (default 6; 0: "
                             "skip it)")
    parser.add_argument("--cleanup-jobs", type=int, default=20,
                        help="jobs of the cleanup_files postprocess comparison (default 20; 0: "
                             "skip it)")
    cores = os.cpu_count() or 1
    parser.add_argument("--packing", type=int, default=cores,
                        help=f"node_packing_count of the jobs (default: cores = {cores})")
    args = parser.parse_args()
    print(machine_line())
    print(f"# {args.n} jobs of {TRUE} per side, serial launcher, node_packing_count "
          f"{args.packing}")
    results: dict[str, list[tuple[float, ...]]] = {"classic": [], "templated": []}
    pairs: list[float] = []
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
                got = side(db_path, kind, args.n, args.packing)
                results[kind].append(got)
                created, ran, mcpu, wcpu, sql, tree, server, load = got
                print(f"round {r} {kind:9}: create {created:6,.0f} jobs/s  run {ran:4.0f} "
                      f"tasks/s  CPU ms/task: master {mcpu:.2f} workers {wcpu:.2f} tree "
                      f"{tree:.2f} server {server:.2f}  {sql:.3f} stmts/task  load {load:.1f}")
            pairs.append(results["templated"][-1][1] / results["classic"][-1][1])
        cpu_path = run_path_cpu(db_path, args.n, args.cpu_rounds) if args.cpu_rounds else {}
        cleanup = postprocess_cost(db_path, args.cleanup_jobs) if args.cleanup_jobs else {}
    med = {k: [statistics.median(x[i] for x in v) for i in range(8)] for k, v in results.items()}
    for kind in ("classic", "templated"):
        m = med[kind]
        print(f"{kind:9} median: create {m[0]:6,.0f} jobs/s  run {m[1]:4.0f} tasks/s  CPU "
              f"ms/task: master {m[2]:.2f} workers {m[3]:.2f} tree {m[5]:.2f} server {m[6]:.2f}"
              f"  {m[4]:.3f} stmts/task")
    print(f"templated / classic: run {med['templated'][1] / med['classic'][1]:.2f} (medians; "
          f"goal >= 0.9), per round {statistics.median(pairs):.2f} median, "
          f"{min(pairs):.2f}-{max(pairs):.2f} ({', '.join(f'{p:.2f}' for p in pairs)}); "
          f"create {med['templated'][0] / med['classic'][0]:.2f}; CPU per task: launcher tree "
          f"{med['templated'][5] / med['classic'][5]:.2f}, server "
          f"{med['templated'][6] / med['classic'][6]:.2f}")
    for kind, (m, d, w) in cpu_path.items():
        print(f"run path in-process, {kind:9}: us CPU/task: master {m:6.1f} (spec + message), "
              f"worker {d:6.1f} (mkdir workdir) + {w:6.1f} (spawn + reap)")
    if cpu_path:
        c, t = cpu_path["classic"], cpu_path["templated"]
        print(f"run path templated / classic: master {t[0] / c[0]:.2f}, worker mkdir "
              f"{t[1] / c[1]:.2f}, spawn {t[2] / c[2]:.2f}")
    for kind, (wall, cpu) in cleanup.items():
        print(f"postprocess of a cleanup_files app, {kind:14}: {wall:6.1f} ms/job wall, "
              f"{cpu:6.1f} ms/job CPU")


if __name__ == "__main__":
    main()
