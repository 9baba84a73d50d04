"""Benchmark: 2,000 no-op tasks (`true`) in serial mode on this machine, every state change
recorded, against `xargs -P <cores>` starting the same 2,000 processes.

Goals (issue 3): launcher rate >= 0.5 x the xargs rate (classic Balsam: ~0.02); database
statements per task at steady state <= 0.1. Issue 16: >= 0.8 x steady, >= 0.7 x from the
launcher's start to its exit, first task RUNNING <= 0.3 s after the start. Printed, not
asserted.

Each round: the jobs are inserted runnable (PREPROCESSED) into a throwaway DB, then a real
`balsam launcher --consume-all --job-mode serial` subprocess runs them (one mpiexec: a master
rank and one worker rank per emulated node, ``settings.yml`` ``local_nodes``), recording
RUNNING, RUN_DONE and (processing) JOB_FINISHED for every job. Times come from the job events
(the server's clock):

* ``run rate``: 2,000 / (last RUN_DONE event - first RUNNING event): tasks started, run and
  recorded per second once the ensemble is up;
* ``end-to-end rate``: 2,000 / (last RUN_DONE event - launcher process start): also pays for
  starting Python, mpiexec, the ranks and their database connection (~0.5-1 s);
* ``statements/task``: the master's whole-run count of executed statements (its log line
  ``serial master exits: N statements``), start-up and idle exit included, divided by 2,000:
  an upper bound of the steady-state figure.
* ``steady CPU per task``: CPU used during the run (first RUNNING .. last RUN_DONE; /proc
  sampled every 50 ms, the samples inside that window) by each part of the launcher's process
  tree and by the DB server's processes, per task run in the window: the tasks (reaped by the
  worker ranks), the worker ranks, the master rank, the launcher process (with its transition
  threads), the watchdogs, mpiexec and its proxy; the server by connection
  (``application_name``: the master's, the launcher's transition workers', others).
* ``start CPU`` (with ``--breakdown``): CPU by the same parts from the launcher's start until the
  ensemble's first RUNNING (:mod:`_startup_cpu`): the boot competing with the warm start.

Both trees' bytecode is compiled first, as an installed Balsam has it (``--compile this``: only
this tree's, ``none``: neither; with ``PYTHONDONTWRITEBYTECODE`` set, a tree without bytecode
has every process compile the modules it imports at every start).

xargs runs ``seq 2000 | xargs -P <cores> -n 1 /usr/bin/true``. Rounds alternate; medians.
With ``--compare-with`` the two launchers' order flips every round (ABBA: on the shared VM the
side that runs first in a round was sometimes the faster one, sometimes the slower one).

Run: ``python benchmarks/bench_launcher_serial.py [-n 2000] [--rounds 3] [--packing P]
[--nodes N] [--compare-with SRC]`` (default packing: the number of cores, the same concurrency
as xargs). ``--compare-with`` runs, in every round, also the launcher of another source tree
(first on ``PYTHONPATH``; e.g. ``git archive OLD | tar -x -C /tmp/old``), on a DB of its own
made by that tree's migrations (schema changes are compared too): before/after numbers from
the same run, under the same load. Job-row updates (HOT among them) and event rows per task
are read from ``pg_stat_user_tables``.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _procs import run_in_session  # noqa: E402
from _startup_cpu import compile_bytecode, ensemble_first_running, print_start_cpu, start_cpu  # noqa: E402
from _throwaway import finished_run_interval, machine_line, throwaway_db  # noqa: E402
from _tree_sampler import TreeSampler  # noqa: E402
from _worker_cpu import dir_cost, worker_line, worker_loop  # noqa: E402

TRUE = "/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true"


def settings(db_path: str, nodes: int) -> None:
    import yaml

    path = os.path.join(db_path, "settings.yml")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    data["local_nodes"] = nodes
    # The launcher's tunables stay the defaults: the section `balsam init` wrote is dropped,
    # so that a --compare-with tree that lacks a newer key does not refuse the file.
    data.pop("launcher", None)
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh)


def fill(db_path: str, count: int, packing: int) -> None:
    from balsam.core import bulk, schema
    from balsam.db.connect import connect

    conn = connect(db_path)
    with conn, conn.cursor() as cur:
        cur.execute(f"TRUNCATE {schema.EVENT_TABLE}, {schema.DEP_TABLE}, {schema.JOB_TABLE}, "
                    f"{schema.APP_TABLE}, {schema.SESSION_TABLE} CASCADE")
        cur.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, "
                    "preprocess, envscript, postprocess) VALUES ('noop', '', %s, '', '', '')",
                    [TRUE])
        rows = [schema.new_job_row({"name": f"t{i}", "workflow": "bench", "application": "noop",
                                    "state": "PREPROCESSED", "node_packing_count": packing})
                for i in range(count)]
        bulk.copy_jobs(cur, rows)
    conn.close()


def server_cpu(db_path: str) -> float:
    """CPU seconds used so far by the DB server: its live processes plus the reaped ones."""
    from balsam.db import cluster, postmaster

    found = postmaster.read(cluster.data_dir(db_path))
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in [found.pid] + [int(p) for p in open(f"/proc/{found.pid}/task/{found.pid}/children")
                              .read().split()]:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile: counted in the postmaster's children time
            continue
        total += sum(int(x) for x in fields[11:13]) / tick
        if pid == found.pid:
            total += sum(int(x) for x in fields[13:15]) / tick
    return total


def job_row_counters(db_path: str) -> tuple[int, int, int]:
    """(job rows updated, of them HOT, event rows inserted) so far (``pg_stat_user_tables``;
    a launcher's server processes report theirs when they exit, before its round ends)."""
    from balsam.core import schema
    from balsam.db.connect import connect

    conn = connect(db_path)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute("SELECT coalesce(sum(n_tup_upd) FILTER (WHERE relname = %s), 0), "
                        "coalesce(sum(n_tup_hot_upd) FILTER (WHERE relname = %s), 0), "
                        "coalesce(sum(n_tup_ins) FILTER (WHERE relname = %s), 0) "
                        "FROM pg_stat_user_tables",
                        [schema.JOB_TABLE, schema.JOB_TABLE, schema.EVENT_TABLE])
            row = cur.fetchone()
        conn.commit()
    finally:
        conn.close()
    return int(row[0]), int(row[1]), int(row[2])


_BACKENDS = ("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
             "AND pid <> pg_backend_pid()")


def client_backends(db_path: str) -> set[int]:
    """The server's client processes now (the benchmark's own, before a launcher starts)."""
    from balsam.db.connect import connect

    conn = connect(db_path)
    try:
        with conn.cursor() as cur:
            cur.execute(_BACKENDS)
            pids = {int(r[0]) for r in cur.fetchall()}
        conn.commit()
    finally:
        conn.close()
    return pids


def _settled_counters(db_path: str, earlier: set[int]) -> tuple[int, int, int]:
    """:func:`job_row_counters` once the launcher's server processes (those not in ``earlier``)
    are gone: each reports its counts as it exits (up to 10 s)."""
    from balsam.db.connect import connect

    conn = connect(db_path)
    try:
        end = time.monotonic() + 10.0
        with conn.cursor() as cur:
            while time.monotonic() < end:
                cur.execute(_BACKENDS)
                left = {int(r[0]) for r in cur.fetchall()} - earlier
                conn.commit()
                if not left:
                    break
                time.sleep(0.02)
    finally:
        conn.close()
    return job_row_counters(db_path)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def launcher_round(db_path: str, count: int, source: str = "",
                   breakdown: bool = False) -> dict[str, float]:
    """One launcher run; ``source``: run the Balsam in that source tree instead (its working
    directory and first on ``PYTHONPATH``: the launcher and its ranks import it).
    ``breakdown``: also sample /proc (:class:`TreeSampler`): key ``steady`` holds CPU ms per
    task by role during the run."""
    from balsam.db.connect import connect

    env = dict(os.environ, BALSAM_DB_PATH=db_path)
    if source:
        env["PYTHONPATH"] = source
    server0, tree0 = server_cpu(db_path), children_cpu()
    rows0, earlier = job_row_counters(db_path), client_backends(db_path)
    started = time.time()
    samplers: list[TreeSampler] = []
    try:
        proc = run_in_session(
            [sys.executable, "-m", "balsam", "launcher", "--consume-all", "--job-mode", "serial"],
            what="balsam launcher", timeout=600, env=env, cwd=source or None,
            on_start=(lambda pid: samplers.append(TreeSampler(pid, db_path))) if breakdown
            else None)
    finally:
        for sampler in samplers:
            sampler.close()
    ended = time.time()
    server, tree = server_cpu(db_path) - server0, children_cpu() - tree0
    rows = [b - a for a, b in zip(rows0, _settled_counters(db_path, earlier))]
    if proc.returncode != 0:
        raise SystemExit(f"launcher failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    log_path = proc.stdout.split(", log ")[1].strip()
    with open(log_path) as fh:
        log = fh.read()
    conn = connect(db_path)
    try:
        first_running, last_done = finished_run_interval(conn, count)
        ramp = ramp_measures(conn, started)
        own = (re.search(r"the launcher started (\d+) task\(s\)", log)  # its warm start, ramp
               or re.search(r"warm start: (\d+) task\(s\) started by the launcher", log))
        ensemble = ensemble_first_running(conn, int(own.group(1)) if own else 0)
    finally:
        conn.close()
    master = re.search(r"serial master exits: (\d+) statements in (\d+) transactions, "
                       r"([\d.]+) s CPU", log)
    workers = [float(x) for x in re.findall(r"serial worker \d+ .*exits: \d+ task\(s\) "
                                            r"started, ([\d.]+) s CPU", log)]
    assert master is not None, log
    loop = worker_loop(log)
    steady = samplers[0].steady(first_running, last_done, count) if samplers else {}
    boot = (start_cpu(samplers[0].samples, samplers[0].roles, samplers[0].server, ensemble)
            if samplers else {})
    return {**{f"steady: {role}": ms for role, ms in steady.items()},
            **{f"start: {role}": ms for role, ms in boot.items()},
            "ensemble_first": ensemble - started,
            "run": count / (float(last_done) - float(first_running)),
            "e2e": count / (float(last_done) - started),
            "full": count / (ended - started),
            "startup": float(first_running) - started, "exit": ended - float(last_done),
            **ramp, "own": float(own.group(1)) if own else 0.0,
            "statements": int(master.group(1)) / count,
            "job_updates": rows[0] / count, "job_hot": rows[1] / count,
            "events": rows[2] / count,
            "master_cpu": float(master.group(3)), "worker_cpu": sum(workers),
            "server_cpu": server, "tree_cpu": tree, **loop}


def ramp_measures(conn: Any, started: float) -> dict[str, float]:
    """The start's ramp: {"done_1s": tasks ended (RUN_DONE) within 1 s of the launcher's start,
    "pause": the longest time between two consecutive RUNNING events (the launcher's warm start
    to the ensemble's first, when node 1 idles between them)}."""
    from balsam.core import schema

    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM " + schema.EVENT_TABLE + " WHERE to_state = 'RUN_DONE' "
                    "AND extract(epoch FROM timestamp) <= %s", [started + 1.0])
        (done,) = cur.fetchone()
        cur.execute("SELECT coalesce(max(gap), 0) FROM (SELECT extract(epoch FROM timestamp - "
                    "lag(timestamp) OVER (ORDER BY timestamp)) AS gap FROM "
                    + schema.EVENT_TABLE + " WHERE to_state = 'RUNNING') g")
        (pause,) = cur.fetchone()
    conn.commit()
    return {"done_1s": float(done), "pause": float(pause)}


def xargs_round(count: int, cores: int) -> tuple[float, float]:
    """(processes/s, CPU seconds used by xargs and its processes)."""
    numbers = "".join(f"{i}\n" for i in range(count))
    tree0 = children_cpu()
    t0 = time.perf_counter()
    run_in_session(["xargs", "-P", str(cores), "-n", "1", TRUE], input=numbers, check=True,
                   what="xargs", timeout=600)
    return count / (time.perf_counter() - t0), children_cpu() - tree0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="tasks (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (default 3)")
    cores = os.cpu_count() or 1
    parser.add_argument("--packing", type=int, default=cores,
                        help=f"node_packing_count of the jobs (default: cores = {cores})")
    parser.add_argument("--nodes", type=int, default=1,
                        help="emulated nodes = worker ranks (default 1: this machine)")
    parser.add_argument("--breakdown", action="store_true",
                        help="sample /proc during each run: CPU per task of each process of "
                             "the launcher's tree and of the DB server's connections")
    parser.add_argument("--compare-with", metavar="SRC", default="",
                        help="also run, in every round, the Balsam of this source tree (e.g. "
                             "`git archive` of an older commit), for a same-run before/after")
    parser.add_argument("--compile", choices=("both", "this", "none"), default="both",
                        help="compile the bytecode of both trees first (default; as installed), "
                             "of this tree only (a same-run measure of bytecode against a copy "
                             "without it), or of none (see _startup_cpu.py)")
    args = parser.parse_args()
    print(machine_line())
    print(f"# {args.n} x {TRUE}; launcher: {args.nodes} worker rank(s), node_packing_count "
          f"{args.packing}; xargs -P {cores}")
    sides = {"launcher": ""}
    if args.compare_with:
        sides = {"other": os.path.abspath(args.compare_with), "launcher": ""}
    if args.compile != "none":
        import balsam

        here = os.path.dirname(os.path.dirname(os.path.abspath(balsam.__file__)))
        print(compile_bytecode([here] + [t for t in sides.values() if t and args.compile == "both"]))
    else:
        print(f"# bytecode as found (PYTHONDONTWRITEBYTECODE="
              f"{os.environ.get('PYTHONDONTWRITEBYTECODE') or '(unset)'})")
    results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    raw = []
    from bench_scale import base_db

    with throwaway_db() as db_path, base_db(sides.get("other")) as base_path:
        paths = {"launcher": db_path, "other": base_path}
        for path in set(paths.values()) - {""}:
            settings(path, args.nodes)
        for r in range(1, args.rounds + 1):
            rate, cpu = xargs_round(args.n, cores)
            raw.append(rate)
            print(f"round {r} xargs:    {rate:7.0f} processes/s, CPU {cpu:.2f} s")
            order = list(sides.items())
            if r % 2 == 0:  # ABBA: which side runs first, right after xargs, alternates
                order.reverse()
            for side, source in order:
                fill(paths[side], args.n, args.packing)
                fs_us = dir_cost(paths[side], f"{r}")
                results[side].append(launcher_round(paths[side], args.n, source,
                                                    args.breakdown))
                m = results[side][-1]
                m["fs_us"] = fs_us
                print(f"round {r} {side:8s}: {m['run']:7.0f} tasks/s run, {m['e2e']:7.0f} "
                      f"tasks/s to the last end, {m['full']:7.0f} tasks/s start to exit; first "
                      f"RUNNING {m['startup']:.2f} s after start (the ensemble's "
                      f"{m['ensemble_first']:.2f} s), {m['done_1s']:.0f} done 1 s "
                      f"after start ({m['own']:.0f} by the launcher itself), longest pause between "
                      f"starts {m['pause']:.2f} s, exit "
                      f"{m['exit']:.2f} s after "
                      f"the last end; {m['statements']:.3f} statements/task, job-row updates "
                      f"{m['job_updates']:.2f}/task ({m['job_hot']:.2f} HOT), events "
                      f"{m['events']:.2f}/task; CPU: launcher with "
                      f"its tasks {m['tree_cpu']:.2f} s (master {m['master_cpu']:.2f} s, "
                      f"workers {m['worker_cpu']:.2f} s), DB server {m['server_cpu']:.2f} s")
                print(f"round {r} {side:8s}: {worker_line(m)}")
    raw_rate = statistics.median(raw)
    print(f"xargs -P {cores}:               median {raw_rate:7.0f} processes/s")
    for side, launcher in results.items():
        name = "serial launcher" if side == "launcher" else f"{args.compare_with}"
        run_rate = statistics.median(m["run"] for m in launcher)
        e2e_rate = statistics.median(m["e2e"] for m in launcher)
        full_rate = statistics.median(m["full"] for m in launcher)
        statements = statistics.median(m["statements"] for m in launcher)
        print(f"== {name}")
        print(f"run:                        median {run_rate:7.0f} tasks/s   ratio "
              f"{run_rate / raw_rate:.2f}  (goal >= 0.8)")
        print(f"to the last end:            median {e2e_rate:7.0f} tasks/s   ratio "
              f"{e2e_rate / raw_rate:.2f}")
        print(f"start to exit:              median {full_rate:7.0f} tasks/s   ratio "
              f"{full_rate / raw_rate:.2f}  (goal >= 0.7)")
        print(f"first RUNNING after start:  median "
              f"{statistics.median(m['startup'] for m in launcher):.2f} s  (goal <= 0.3 s)")
        print(f"done 1 s after start:       median "
              f"{statistics.median(m['done_1s'] for m in launcher):.0f} tasks; longest pause "
              f"between starts {statistics.median(m['pause'] for m in launcher):.2f} s")
        print(f"exit after the last end:    median "
              f"{statistics.median(m['exit'] for m in launcher):.2f} s")
        print(f"DB statements per task:     median {statements:.3f}  (goal <= 0.1; whole run)")
        print(f"job-row updates per task:   median "
              f"{statistics.median(m['job_updates'] for m in launcher):.2f} "
              f"({statistics.median(m['job_hot'] for m in launcher):.2f} HOT), event rows "
              f"{statistics.median(m['events'] for m in launcher):.2f}")
        print(f"CPU per task:               median launcher tree "
              f"{statistics.median(m['tree_cpu'] for m in launcher) / args.n * 1e3:.2f} ms "
              f"(tasks included), DB server "
              f"{statistics.median(m['server_cpu'] for m in launcher) / args.n * 1e3:.2f} ms")
        roles = sorted({k for m in launcher for k in m if k.startswith("steady: ")})
        if roles:
            parts = {k[8:]: statistics.median(m.get(k, 0.0) for m in launcher) for k in roles}
            total = sum(v for k, v in parts.items() if not k.startswith("server"))
            server = sum(v for k, v in parts.items() if k.startswith("server"))
            print(f"steady CPU per task (ms):   launcher tree {total:.3f} + DB server "
                  f"{server:.3f} = {total + server:.3f}; medians by part:")
            for part, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
                if ms >= 0.0005:
                    print(f"    {part:34s} {ms:6.3f}")
        print(f"a directory and output file:  median "
              f"{statistics.median(m['fs_us'] for m in launcher):.0f} us of CPU before a round")
        print_start_cpu(launcher)


if __name__ == "__main__":
    main()
