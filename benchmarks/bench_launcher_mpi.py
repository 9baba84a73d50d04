"""Benchmark: 200 single-rank no-op tasks (`true`) in MPI mode (one `mpiexec` per task), every
state change recorded, against a raw loop of the same `mpiexec` calls; and the delay from a job
becoming runnable to RUNNING while a launcher is idle.

Goals (issue 3): launcher rate >= 0.5 x the raw rate (issue 16: >= 0.8, and <= 1 statement
per task at steady state); idle runnable -> RUNNING median <= 50 ms;
statements per task reported (the <= 0.1 goal is serial mode's: MPI mode writes each start
before its `mpiexec` and has at most `nodes` tasks per batch). Printed, not asserted.

* Rate round: the jobs are inserted runnable (PREPROCESSED); a real `balsam launcher
  --consume-all --job-mode mpi` subprocess with ``local_nodes = cores`` emulated nodes (so
  ``cores`` tasks run at once) runs them, recording RUNNING, RUN_DONE and (processing)
  JOB_FINISHED. ``run rate`` = tasks / (last RUN_DONE event - first RUNNING event);
  ``end-to-end`` also pays for starting the launcher. ``ratio``: median rate / median raw
  rate; ``against its own round's raw loop``: the median of each round's rate / that round's
  raw rate (the raw rate swings with the machine's load from round to round). Each round
  prints its ratios; with ``--compare-with`` the two trees alternate which runs first (ABBA
  over pairs of rounds) and ``launcher / other by round`` pairs the rounds.
* Raw round: the same argv (built by the same flavour: ``mpiexec -n 1 -ppn 1 -hosts H
  -bind-to none true``), the same concurrency (``cores`` at a time, each in its own session,
  output to a file in its own directory), started and reaped by a plain Python loop.
* Server commits: ``pg_stat_database.xact_commit`` of the Balsam database before and after
  each launcher run: every session's transactions (the launcher's loop and its transition and
  transfer workers), where ``statements`` counts the loop's only.
* CPU per task: the launcher's own process (all its threads; printed by the launcher at exit),
  its tasks (``mpiexec`` and what it starts: the launcher's reaped children), the DB server
  (its processes' ``/proc`` times); for the raw loop, the loop's process and its tasks. On a
  loaded machine these say more than rates do. ``marginal``: as for statements (start-up and
  exit cancel out).
* Statements: the launcher's ``Database.statements`` (its exit log line). ``whole run`` / tasks
  includes start-up and the idle exit; ``marginal`` = (statements for N - statements for N/2) /
  (N/2), the steady-state cost of one more task.
* Idle latency: a persistent launcher waits idle (``idle_wait_seconds`` 30, so only the
  database notification can wake it); jobs are inserted one at a time, each after the previous
  one finished. ``runnable->RUNNING`` = RUNNING event - PREPROCESSED event of jobs inserted
  runnable; ``insert->RUNNING`` = RUNNING event - creation of jobs inserted CREATED (the
  launcher's processing makes them runnable first).

Run: ``python benchmarks/bench_launcher_mpi.py [-n 200] [--rounds 3] [--latency-jobs 20]
[--compare-with SRC]`` (``--compare-with``: also the rate rounds of another source tree's
launcher, e.g. ``git archive OLD | tar -x -C /tmp/old``: before/after from the same run, that
tree on a DB made by its own migrations and settings).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _scale_run import base_db  # noqa: E402
from _throwaway import finished_run_interval, machine_line, throwaway_db  # noqa: E402
from bench_launcher_serial import children_cpu, server_cpu  # noqa: E402

TRUE = "/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true"
LAUNCHER = [sys.executable, "-m", "balsam", "launcher", "--consume-all", "--job-mode", "mpi"]
SELF_CPU = "balsam launcher process CPU"
RUN_WITH_CPU = [sys.executable, "-c", (
    "import atexit, os, resource, sys, runpy\n"
    "def cpu():\n"
    "    use = resource.getrusage(resource.RUSAGE_SELF)\n"
    f"    sys.stderr.write('{SELF_CPU} %.6f\\n' % (use.ru_utime + use.ru_stime))\n"
    "    sys.stderr.flush()\n"
    "atexit.register(cpu)\n"
    "_exit = os._exit\n"  # `balsam launcher` ends with os._exit (no teardown): report first
    "def exit_now(status):\n"
    "    cpu()\n"
    "    _exit(status)\n"
    "os._exit = exit_now\n"
    "sys.argv = ['balsam'] + sys.argv[1:]\n"
    "runpy.run_module('balsam', run_name='__main__')\n")] + LAUNCHER[3:]
"""The launcher, printing its own process's CPU seconds (all threads, not its tasks) at exit
(also when it ends with ``os._exit``, as ``balsam launcher`` does once its threads are joined)."""


def settings(db_path: str, nodes: int, idle_wait: float) -> None:
    import yaml

    path = os.path.join(db_path, "settings.yml")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    data["local_nodes"] = nodes
    data.setdefault("launcher", {}).update(idle_exit_seconds=1, idle_wait_seconds=idle_wait,
                                           heartbeat_seconds=10)
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh)


def connect(db_path: str):  # noqa: ANN201 - a psycopg2 connection
    from balsam.db.connect import connect as db_connect

    return db_connect(db_path, autocommit=True)


def fill(db_path: str, count: int, state: str = "PREPROCESSED", truncate: bool = True) -> None:
    from balsam.core import bulk, schema

    conn = connect(db_path)
    with conn.cursor() as cur:
        if truncate:
            cur.execute(f"TRUNCATE {schema.EVENT_TABLE}, {schema.DEP_TABLE}, {schema.JOB_TABLE}, "
                        f"{schema.APP_TABLE}, {schema.SESSION_TABLE} CASCADE")
            cur.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, "
                        "preprocess, envscript, postprocess) VALUES ('noop', '', %s, '', '', '')",
                        [TRUE])
        bulk.copy_jobs(cur, [schema.new_job_row({"name": f"t{i}", "workflow": "bench",
                                                 "application": "noop", "state": state})
                             for i in range(count)])
    conn.close()


def launcher_round(db_path: str, count: int, source: str = "") -> dict[str, float]:
    """One launcher run; ``source``: the Balsam of that source tree instead (its working
    directory and first on ``PYTHONPATH``)."""
    env = dict(os.environ, BALSAM_DB_PATH=db_path)
    if source:
        env["PYTHONPATH"] = source
    commits = server_commits(db_path)
    server0, tree0 = server_cpu(db_path), children_cpu()
    started = time.time()
    proc = subprocess.run(RUN_WITH_CPU, capture_output=True, text=True, timeout=600, env=env,
                          cwd=source or None)
    server, tree = server_cpu(db_path) - server0, children_cpu() - tree0
    if proc.returncode != 0:
        raise SystemExit(f"launcher failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    commits = server_commits(db_path) - commits
    own = re.search(SELF_CPU + r" ([\d.]+)", proc.stderr)
    assert own is not None, proc.stderr
    conn = connect(db_path)
    try:
        first_running, last_done = finished_run_interval(conn, count)
    finally:
        conn.close()
    log_path = proc.stdout.split(", log ")[1].strip()
    with open(log_path) as fh:
        found = re.search(r"; (\d+) statements in (\d+) transactions", fh.read())
    assert found is not None, log_path
    return {"run": count / (float(last_done) - float(first_running)),
            "e2e": count / (float(last_done) - started),
            "statements": int(found.group(1)), "transactions": int(found.group(2)),
            "commits": commits, "launcher_cpu": float(own.group(1)),
            "tasks_cpu": tree - float(own.group(1)), "server_cpu": server}


def server_commits(db_path: str) -> int:
    """The server's committed transactions in the Balsam database so far (pg_stat_database:
    every session's, the launcher's transition and transfer workers' too). Statistics of a
    session that ended reach it within a second, so this waits that long first."""
    time.sleep(1.0)
    conn = connect(db_path)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_clear_snapshot()")
            cur.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def raw_argv() -> list[str]:
    from balsam.platform import mpi

    spec = mpi.RunSpec(argv=[TRUE], ranks=1, ranks_per_node=1, hosts=[socket.gethostname()])
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")  # what the launcher uses
    return mpi.get("mpich").argv(spec, beside if os.access(beside, os.X_OK) else shutil.which("mpiexec"))


def raw_round(count: int, concurrency: int) -> tuple[float, float, float]:
    """(tasks/s, CPU seconds of the loop, of its tasks) of a plain loop running ``count``
    launches, ``concurrency`` at a time."""
    argv = raw_argv()
    own0, tree0 = time.process_time(), children_cpu()
    root = tempfile.mkdtemp(prefix="balsam-bench-raw-")
    env = dict(os.environ)
    running: dict[int, subprocess.Popen] = {}
    started = 0
    t0 = time.perf_counter()
    while started < count or running:
        while started < count and len(running) < concurrency:
            workdir = os.path.join(root, f"t{started}")
            os.makedirs(workdir)
            with open(os.path.join(workdir, "t.out"), "wb") as out:
                proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, restore_signals=False)
            running[proc.pid] = proc
            started += 1
        pid, status = os.wait()
        proc = running.pop(pid, None)
        if proc is None:
            continue
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {proc.returncode}")
    rate = count / (time.perf_counter() - t0)
    own, tree = time.process_time() - own0, children_cpu() - tree0
    shutil.rmtree(root, ignore_errors=True)
    return rate, own, tree


def latency(db_path: str, jobs: int, state: str) -> list[float]:
    """Seconds from runnable (or insertion) to RUNNING for ``jobs`` jobs inserted one by one
    into a DB whose persistent launcher is idle."""
    from balsam.core import schema

    fill(db_path, 0)
    launcher = subprocess.Popen(LAUNCHER + ["--persistent"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
    delays = []
    conn = connect(db_path)
    try:
        launcher.stdout.readline()  # the start line: the launcher is up
        time.sleep(1.0)
        with conn.cursor() as cur:
            for _ in range(jobs):
                fill(db_path, 1, state, truncate=False)
                deadline = time.monotonic() + 30
                while True:
                    cur.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} "
                                "WHERE state <> 'JOB_FINISHED'")
                    if cur.fetchone()[0] == 0:
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit("a job did not finish within 30 s")
                    time.sleep(0.02)
                time.sleep(0.2)  # idle again
            since = ("max(e.timestamp) FILTER (WHERE e.to_state = 'PREPROCESSED')"
                     if state == "PREPROCESSED" else "j.created_at")
            cur.execute(f"SELECT extract(epoch FROM max(e.timestamp) FILTER "
                        f"(WHERE e.to_state = 'RUNNING') - {since}) "
                        f"FROM {schema.JOB_TABLE} j JOIN {schema.EVENT_TABLE} e "
                        "ON e.job_id = j.job_id GROUP BY j.job_id, j.created_at")
            delays = [float(r[0]) for r in cur.fetchall()]
    finally:
        conn.close()
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=30)
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="tasks per rate round (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each (default 3)")
    parser.add_argument("--latency-jobs", type=int, default=20,
                        help="jobs inserted one at a time for the idle latency (default 20)")
    parser.add_argument("--compare-with", metavar="SRC", default="",
                        help="also run, in every rate round, the Balsam of this source tree "
                             "(e.g. `git archive` of an older commit): same-run before/after")
    cores = os.cpu_count() or 1
    args = parser.parse_args()
    print(machine_line())
    print(f"# {args.n} x {' '.join(raw_argv())}; launcher and raw loop: {cores} at a time")
    sides = {"launcher": ""}
    if args.compare_with:
        sides = {"other": os.path.abspath(args.compare_with), "launcher": ""}
    full: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    half: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    raw: list[float] = []
    raw_cpu: list[tuple[float, float]] = []
    with throwaway_db() as db_path, base_db(sides.get("other", "")) as other_db:
        dbs = {"launcher": db_path, "other": other_db}  # each tree on a DB of its migrations
        for path in filter(None, set(dbs.values())):
            settings(path, cores, idle_wait=0.5)
        for r in range(1, args.rounds + 1):
            rate, own, tree = raw_round(args.n, cores)
            raw.append(rate)
            raw_cpu.append((own, tree))
            print(f"round {r} raw loop: {raw[-1]:6.1f} tasks/s; CPU per task: loop "
                  f"{own / args.n * 1e3:.2f} ms, tasks {tree / args.n * 1e3:.2f} ms")
            order = list(sides.items())
            if r % 2 == 0:  # ABBA over pairs of rounds: neither tree always runs first
                order.reverse()
            for side, source in order:
                fill(dbs[side], args.n)
                full[side].append(launcher_round(dbs[side], args.n, source))
                m = full[side][-1]
                print(f"round {r} {side:8s}: {m['run']:6.1f} tasks/s run, {m['e2e']:6.1f} "
                      f"tasks/s end-to-end, {m['statements']} statements in "
                      f"{m['transactions']} transactions; server: {m['commits']} commits; CPU "
                      f"per task: launcher {m['launcher_cpu'] / args.n * 1e3:.2f} ms, tasks "
                      f"{m['tasks_cpu'] / args.n * 1e3:.2f} ms, server "
                      f"{m['server_cpu'] / args.n * 1e3:.2f} ms")
                fill(dbs[side], args.n // 2)
                half[side].append(launcher_round(dbs[side], args.n // 2, source))
            print(f"round {r} ratios: " + ", ".join(
                f"{side} {full[side][-1]['run'] / rate:.2f} of the raw loop" for side in sides)
                + (f"; launcher / other {full['launcher'][-1]['run'] / full['other'][-1]['run']:.2f}"
                   f" (order: {', '.join(side for side, _ in order)})" if len(sides) > 1 else "")
                + f"; load {os.getloadavg()[0]:.2f}")
        settings(db_path, cores, idle_wait=30.0)
        runnable = latency(db_path, args.latency_jobs, "PREPROCESSED")
        inserted = latency(db_path, args.latency_jobs, "CREATED")
    raw_rate = statistics.median(raw)
    print(f"raw mpiexec loop:            median {raw_rate:6.1f} tasks/s; CPU per task: loop "
          f"{statistics.median(c[0] for c in raw_cpu) / args.n * 1e3:.2f} ms, tasks "
          f"{statistics.median(c[1] for c in raw_cpu) / args.n * 1e3:.2f} ms")
    for side in sides:
        launcher = full[side]
        run_rate = statistics.median(m["run"] for m in launcher)
        e2e_rate = statistics.median(m["e2e"] for m in launcher)
        whole = statistics.median(m["statements"] for m in launcher) / args.n
        marginal = (statistics.median(m["statements"] for m in launcher)
                    - statistics.median(m["statements"] for m in half[side])) / (
                        args.n - args.n // 2)
        print(f"== {'MPI launcher' if side == 'launcher' else args.compare_with}")
        own = statistics.median(m["run"] / r for m, r in zip(launcher, raw))
        print(f"run:                         median {run_rate:6.1f} tasks/s   ratio "
              f"{run_rate / raw_rate:.2f}  (goal >= 0.8); against its own round's raw loop: "
              f"median {own:.2f}")
        print(f"end-to-end:                  median {e2e_rate:6.1f} tasks/s   ratio "
              f"{e2e_rate / raw_rate:.2f}")
        print(f"DB statements per task:      {whole:.2f} whole run, {marginal:.2f} marginal "
              "(goal <= 1)")
        commits = statistics.median(m["commits"] for m in launcher) / args.n
        print(f"server commits per task:     {commits:.2f} (all of the launcher's sessions: "
              "its loop, transition and transfer workers)")
        cpu = {key: (statistics.median(m[key] for m in launcher),
                     statistics.median(m[key] for m in half[side]))
               for key in ("launcher_cpu", "tasks_cpu", "server_cpu")}
        print("CPU per task (medians):      " + ", ".join(
            f"{name} {cpu[key][0] / args.n * 1e3:.2f} ms (marginal "
            f"{(cpu[key][0] - cpu[key][1]) / (args.n - args.n // 2) * 1e3:.2f})"
            for name, key in (("launcher process", "launcher_cpu"), ("its tasks", "tasks_cpu"),
                              ("DB server", "server_cpu"))))
    if len(sides) > 1:
        paired = [m["run"] / o["run"] for m, o in zip(full["launcher"], full["other"])]
        print(f"launcher / other by round:   {', '.join(f'{x:.2f}' for x in paired)} (median "
              f"{statistics.median(paired):.2f}; rounds alternate which tree runs first)")
    print(f"idle runnable->RUNNING:      median {statistics.median(runnable) * 1000:5.1f} ms, "
          f"max {max(runnable) * 1000:5.1f} ms  (goal <= 50 ms; {len(runnable)} jobs)")
    print(f"idle insert->RUNNING:        median {statistics.median(inserted) * 1000:5.1f} ms, "
          f"max {max(inserted) * 1000:5.1f} ms  (includes processing CREATED -> PREPROCESSED)")
    print("# load at the end: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
