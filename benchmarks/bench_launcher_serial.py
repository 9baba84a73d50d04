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

xargs runs ``seq 2000 | xargs -P <cores> -n 1 /usr/bin/true``. Rounds alternate; medians.

Run: ``python benchmarks/bench_launcher_serial.py [-n 2000] [--rounds 3] [--packing P]
[--nodes N] [--compare-with SRC]`` (default packing: the number of cores, the same concurrency
as xargs). ``--compare-with`` runs, in every round, also the launcher of another source tree
(first on ``PYTHONPATH``; e.g. ``git archive OLD | tar -x -C /tmp/old``): before/after
numbers from the same run, under the same load.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _procs import run_in_session  # noqa: E402
from _throwaway import finished_run_interval, machine_line, throwaway_db  # noqa: E402

TRUE = "/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true"


def settings(db_path: str, nodes: int) -> None:
    import yaml

    path = os.path.join(db_path, "settings.yml")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    data["local_nodes"] = nodes  # the launcher's own tunables stay the defaults
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


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def launcher_round(db_path: str, count: int, source: str = "") -> dict[str, float]:
    """One launcher run; ``source``: run the Balsam in that source tree instead (its working
    directory and first on ``PYTHONPATH``: the launcher and its ranks import it)."""
    from balsam.db.connect import connect

    env = dict(os.environ, PYTHONPATH=source) if source else None
    server0, tree0 = server_cpu(db_path), children_cpu()
    started = time.time()
    proc = run_in_session([sys.executable, "-m", "balsam", "launcher", "--consume-all",
                           "--job-mode", "serial"], what="balsam launcher", timeout=600,
                          env=env, cwd=source or None)
    ended = time.time()
    server, tree = server_cpu(db_path) - server0, children_cpu() - tree0
    if proc.returncode != 0:
        raise SystemExit(f"launcher failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    conn = connect(db_path)
    try:
        first_running, last_done = finished_run_interval(conn, count)
    finally:
        conn.close()
    log_path = proc.stdout.split(", log ")[1].strip()
    with open(log_path) as fh:
        log = fh.read()
    master = re.search(r"serial master exits: (\d+) statements in (\d+) transactions, "
                       r"([\d.]+) s CPU", log)
    workers = [float(x) for x in re.findall(r"serial worker \d+ .*exits: \d+ task\(s\) "
                                            r"started, ([\d.]+) s CPU", log)]
    assert master is not None, log
    return {"run": count / (float(last_done) - float(first_running)),
            "e2e": count / (float(last_done) - started),
            "full": count / (ended - started),
            "startup": float(first_running) - started, "exit": ended - float(last_done),
            "statements": int(master.group(1)) / count,
            "master_cpu": float(master.group(3)), "worker_cpu": sum(workers),
            "server_cpu": server, "tree_cpu": tree}


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
    parser.add_argument("--compare-with", metavar="SRC", default="",
                        help="also run, in every round, the Balsam of this source tree (e.g. "
                             "`git archive` of an older commit), for a same-run before/after")
    args = parser.parse_args()
    print(machine_line())
    print(f"# {args.n} x {TRUE}; launcher: {args.nodes} worker rank(s), node_packing_count "
          f"{args.packing}; xargs -P {cores}")
    sides = {"launcher": ""}
    if args.compare_with:
        sides = {"other": os.path.abspath(args.compare_with), "launcher": ""}
    results: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    raw = []
    with throwaway_db() as db_path:
        settings(db_path, args.nodes)
        for r in range(1, args.rounds + 1):
            rate, cpu = xargs_round(args.n, cores)
            raw.append(rate)
            print(f"round {r} xargs:    {rate:7.0f} processes/s, CPU {cpu:.2f} s")
            for side, source in sides.items():
                fill(db_path, args.n, args.packing)
                results[side].append(launcher_round(db_path, args.n, source))
                m = results[side][-1]
                print(f"round {r} {side:8s}: {m['run']:7.0f} tasks/s run, {m['e2e']:7.0f} "
                      f"tasks/s to the last end, {m['full']:7.0f} tasks/s start to exit; first "
                      f"RUNNING {m['startup']:.2f} s after start, exit {m['exit']:.2f} s after "
                      f"the last end; {m['statements']:.3f} statements/task; CPU: launcher with "
                      f"its tasks {m['tree_cpu']:.2f} s (master {m['master_cpu']:.2f} s, "
                      f"workers {m['worker_cpu']:.2f} s), DB server {m['server_cpu']:.2f} s")
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
        print(f"exit after the last end:    median "
              f"{statistics.median(m['exit'] for m in launcher):.2f} s")
        print(f"DB statements per task:     median {statements:.3f}  (goal <= 0.1; whole run)")
        print(f"CPU per task:               median launcher tree "
              f"{statistics.median(m['tree_cpu'] for m in launcher) / args.n * 1e3:.2f} ms "
              f"(tasks included), DB server "
              f"{statistics.median(m['server_cpu'] for m in launcher) / args.n * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
