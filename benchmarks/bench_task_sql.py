"""Benchmark: what one task costs the database server, statement by statement (issue 16).

The serial master's SQL for each task, run directly on one connection without a master or
workers, so that the server's own cost can be read off on any machine (this VM, or a real
database server before trusting it with 4,096 nodes): claims of ``--batch`` jobs
(:func:`balsam.core.leases.claim`), then per batch the RUNNING move and the run's end with its
follow-on to JOB_FINISHED (:func:`balsam.core.launcher_moves.move` with
:data:`balsam.processing.transitions.FINISH_ON_RECORD`), each committed, as the master's writers
do. ``--hold H`` keeps H claimed jobs ahead of the moves (a master at scale holds about its
slots' worth). Printed: the server process's CPU per task by phase (from /proc: run it on the
server's host), WAL bytes per task, and the tasks per second one server core would carry at
that cost. Every job is checked JOB_FINISHED with its three events.

``--combined`` writes RUNNING and the end in one move (one row update: serial mode's runs that
start and end within one flush period).

``--setup SQL`` runs SQL once on the fresh DB before the rounds (ablations: ``--setup "DROP
INDEX job_created"`` prices one index; a scratch DB, thrown away after). ``--finished F`` adds F
finished jobs (JOB_FINISHED, with no events) to the table, so that the indexes are the size of a
database that has run F jobs before (the costs of an index descent grow with its depth).

``--compare-with SRC`` (before/after): every round also runs the same benchmark with the
``balsam`` package of source tree SRC (first on ``PYTHONPATH``; e.g. ``git archive`` of main),
each side in a process and on a DB of its own, the order flipping every round (ABBA), and prints
the server CPU per task of both and their ratio per round and as a median.

Run: ``python benchmarks/bench_task_sql.py [--jobs 32768] [--batch 1024] [--hold 0]
[--combined] [--setup SQL] [--finished F] [--rounds R] [--compare-with SRC]``.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def add_finished(cur: Any, count: int) -> None:
    """``count`` JOB_FINISHED jobs (100 workflows, created before the runnable ones), copies of
    a runnable job's row with their own ids: the history of a database that ran jobs before."""
    from balsam.core import schema

    job = schema.JOB_TABLE
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                "ORDER BY ordinal_position", [job])
    columns = [c for (c,) in cur.fetchall()]
    changed = {"job_id": "gen_random_uuid()", "state": "'JOB_FINISHED'",
               "workflow": "'old' || g %% 100", "created_at": "j.created_at - g * interval '1 s'",
               "session_id": "NULL"}
    values = ", ".join(changed.get(c, f"j.{c}") for c in columns)
    cur.execute(f"INSERT INTO {job} ({', '.join(columns)}) SELECT {values} "
                f"FROM (SELECT * FROM {job} LIMIT 1) j, generate_series(1, %s) g", [count])
    cur.execute(f"ANALYZE {job}")


def run(db_path: str, jobs: int, batch: int, hold: int, combined: bool = False,
        finished: int = 0) -> None:
    from bench_scale import fill

    from balsam.core import launcher_moves, leases
    from balsam.core.states import State
    from balsam.db.connect import connect
    from balsam.processing import transitions

    fill(db_path, jobs, 64)
    conn = connect(db_path)
    cur = conn.cursor()
    if finished:
        add_finished(cur, finished)
        conn.commit()
    cur.execute("SELECT pg_backend_pid()")
    pid = cur.fetchone()[0]
    sid = leases.open_session(cur, hostname="bench", pid=os.getpid(), job_mode="serial",
                              num_nodes=1, lease_seconds=3600)
    conn.commit()

    def cpu() -> float:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wal() -> int:
        cur.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
        value = int(cur.fetchone()[0])
        conn.commit()
        return value

    totals: dict[str, list[float]] = {p: [0.0, 0.0, 0.0] for p in ("claim", "running", "end")}

    def phase(name: str, work: Callable[..., Any], *args: Any) -> Any:
        w0 = wal()  # before the CPU reading: the WAL probe's own statement is not the task's
        c0, t0 = cpu(), time.perf_counter()
        out = work(*args)
        conn.commit()
        c1, t1 = cpu(), time.perf_counter()
        totals[name][0] += c1 - c0
        totals[name][1] += wal() - w0
        totals[name][2] += t1 - t0
        return out

    follow = transitions.FINISH_ON_RECORD
    held: list[str] = []
    done = 0
    while True:
        while len(held) < hold + batch:
            rows = phase("claim", lambda: leases.claim(cur, sid, batch, serial=True,
                                                       max_nodes=1))
            held += [r["job_id"] for r in rows]
            if not rows:
                break
        if not held:
            break
        ids, held = held[:batch], held[batch:]
        if combined:  # runs that started and ended within one flush: one row update each
            phase("end", launcher_moves.move, cur,
                  [(j, State.RUN_DONE, "", State.RUNNING, "started") for j in ids], sid, follow)
        else:
            phase("running", launcher_moves.move, cur,
                  [(j, State.RUNNING, "started") for j in ids], sid, follow)
            phase("end", launcher_moves.move, cur, [(j, State.RUN_DONE, "") for j in ids], sid,
                  follow)
        done += len(ids)
    cur.execute("SELECT state, count(*) FROM core_balsamjob WHERE workflow = 'sim' GROUP BY 1")
    states = dict(cur.fetchall())
    cur.execute("SELECT count(*) FROM core_jobevent WHERE to_state IN "
                "('RUNNING', 'RUN_DONE', 'JOB_FINISHED')")
    events = cur.fetchone()[0]
    conn.commit()
    conn.close()
    if states != {"JOB_FINISHED": jobs} or events != 3 * jobs:
        raise SystemExit(f"CHECK FAILED: states {states}, {events} run events for {jobs} jobs")
    server = sum(v[0] for v in totals.values())
    print(f"{jobs} jobs{f' (and {finished} finished)' if finished else ''}, claims and moves "
          f"of {batch}, hold {hold}"
          f"{', RUNNING with the end' if combined else ''}: server CPU "
          f"{1e6 * server / done:.0f} us per task ("
          + ", ".join(f"{k} {1e6 * v[0] / done:.0f}" for k, v in totals.items())
          + f"); WAL {sum(v[1] for v in totals.values()) / done:.0f} B per task ("
          + ", ".join(f"{k} {v[1] / done:.0f}" for k, v in totals.items())
          + f"); one server core: ~{done / server:.0f} tasks/s, ~{2 * done / server:.0f} "
          f"task events/s; wall {1e6 * sum(v[2] for v in totals.values()) / done:.0f} us "
          f"per task; load {os.getloadavg()[0]:.2f}", flush=True)


_CPU = re.compile(r"server CPU (\d+) us per task \(([^)]*)\)")


def compare(args: argparse.Namespace, argv: list[str]) -> None:
    """Before/after: each round runs this benchmark once with ``--compare-with``'s tree and
    once with this one (subprocesses, ABBA order); prints the server CPU per task and ratios."""
    source = os.path.abspath(args.compare_with)
    if not os.path.isdir(os.path.join(source, "balsam")):
        raise SystemExit(f"bench_task_sql: --compare-with {args.compare_with}: no balsam/ there")
    child = [sys.executable, os.path.abspath(__file__), *argv, "--rounds", "1"]
    ratios: list[float] = []
    for k in range(args.rounds):
        costs: dict[str, float] = {}
        for side in (("before", "after") if k % 2 == 0 else ("after", "before")):
            env = dict(os.environ)
            if side == "before":
                env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH"))
                                                    if p)
            out = subprocess.run(child, env=env, capture_output=True, text=True, check=False)
            lines = [ln for ln in out.stdout.splitlines() if "server CPU" in ln]
            found = _CPU.search(lines[-1]) if lines and out.returncode == 0 else None
            if found is None:
                raise SystemExit(f"bench_task_sql: the {side} run failed: "
                                 f"{(out.stderr.strip().splitlines() or ['no output'])[-1]}")
            costs[side] = float(found.group(1))
            print(f"round {k + 1} {side:6s} {lines[-1]}", flush=True)
        ratios.append(costs["after"] / costs["before"])
        print(f"round {k + 1}: server CPU per task after/before {ratios[-1]:.2f} "
              f"({costs['before']:.0f} -> {costs['after']:.0f} us); load "
              f"{os.getloadavg()[0]:.2f}", flush=True)
    print(f"median after/before {statistics.median(ratios):.2f} over {len(ratios)} rounds "
          f"({', '.join(f'{r:.2f}' for r in ratios)})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=32768)
    parser.add_argument("--batch", type=int, default=1024, help="claim and move batch")
    parser.add_argument("--hold", type=int, default=0, help="claimed jobs kept ahead")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--combined", action="store_true",
                        help="RUNNING and the end in one move (runs shorter than a flush)")
    parser.add_argument("--setup", default="", help="SQL run once on the fresh DB (ablations)")
    parser.add_argument("--finished", type=int, default=0,
                        help="finished jobs in the table besides the runnable ones")
    parser.add_argument("--compare-with", metavar="SRC", default="",
                        help="also run each round with the balsam package of source tree SRC "
                             "(before/after, ratios printed)")
    args = parser.parse_args()
    if args.jobs < 1 or args.batch < 1 or args.hold < 0 or args.rounds < 1 or args.finished < 0:
        raise SystemExit("bench_task_sql: --jobs, --batch and --rounds must be >= 1, "
                         "--hold and --finished >= 0")
    from _throwaway import machine_line, throwaway_db

    print(machine_line(), flush=True)
    if args.compare_with:
        argv = sys.argv[1:]
        for flag in ("--compare-with", "--rounds"):  # the child runs one round, this tree's
            while flag in argv:
                i = argv.index(flag)
                del argv[i:i + 2]
            argv = [a for a in argv if not a.startswith(flag + "=")]
        compare(args, argv)
        return
    with throwaway_db() as db_path:
        if args.setup:
            from balsam.db.connect import connect

            conn = connect(db_path)
            with conn, conn.cursor() as cur:
                cur.execute(args.setup)
            conn.close()
            print(f"# setup: {args.setup}", flush=True)
        for _ in range(args.rounds):
            run(db_path, args.jobs, args.batch, args.hold, args.combined, args.finished)


if __name__ == "__main__":
    main()
