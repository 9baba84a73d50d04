"""Benchmark: the serial-mode master at scale, by simulation (issue 16).

The REAL :class:`balsam.launcher.serial_master.Master` runs against the real database with its
real claim and status code (:class:`JobSource`, :class:`StatusBuffer`, the session lease, the
processing pass), in one process; the workers are simulated: :class:`SimWorkers` implements the
master's :class:`MasterChannel` and answers as ``N`` workers of ``S`` slots each would
(:mod:`balsam.launcher.serial_worker`'s protocol: ``work``/``kill``/``recall``/``stop``/``exit``/
``abort`` orders; ``started``/``done``/``killed``/``stopped``/``returned``/``recalled``/``drained``/
``bye`` reports).
A simulated worker starts queued work the moment a slot frees (as a real one does, without
waiting for the master), on a simulated clock that follows the real one; each task runs a
duration drawn uniformly from 1-10 s times ``--time-scale``; ends within the same
``TICK_SECONDS`` on one worker make one report (a real worker's loop sends one report per
iteration). Messages are pickled both ways, as mpi4py does: the master pays for pickling its
orders and unpickling reports (what its MPI calls cost), the simulated side for the rest.

Printed per N (``--nodes``, default 128, 1024, 4096; ``--slots`` S, default 64): the demand
(task starts + ends per second that 100% occupancy needs in equilibrium: 2 N S / 5.5 s x the
time scale; ``--demand EV_PER_S`` picks the time scale giving that demand at each N, so every N
runs at the same share of the machine), the sustained rate (starts + ends per second in the
steady window: from the first time >= 98% of slots were busy to the master's last work order),
slot occupancy from the master's start to the last start and in the steady window, and *while
work remained* (from that first full moment to the last start: work was left in the master's
hold or some worker's queue; issue 16's measure) with its rate and the fill's share of the time,
a timeline of occupancy and events/s per tenth of the time to the last start (after a
synchronous fill the first ends come 1-10 time-scaled seconds later: the rate climbs to the
demand over ~2 mean task times), client statements and transactions (per second, per task),
the server's ``pg_stat_database`` commits and rows changed, master CPU (process CPU minus the
simulation's own, measured around its code; the writer and claimer threads' Python is in it)
and its share of the run, ``master CPU per task event`` (the rate one core could sustain is its
inverse) and peak RSS (process; the simulation's bookkeeping is in it).

The simulated workers are in ``_scale_sim.py``, the figures in ``_scale_figures.py``, one run
(fill, the master, the checks) in ``_scale_run.py``.

Correctness is checked after each run (exit otherwise): every job JOB_FINISHED, with exactly
one RUNNING, one RUN_DONE and one JOB_FINISHED event, and the simulation started exactly as
many tasks as there are jobs (so none twice).

``--launchers K`` runs K masters as K processes, each with its own session and N/K nodes, on
one database (they claim from the same jobs): the same checks (so claims never collided: every
job ran once), each launcher's demand, rate and occupancy while work remained, and the totals.

Each master runs in a process of its own. ``--writers 1,2,4`` runs each N once per
``launcher.status_writers`` value (1: the master's own connection; K > 1: K writer threads with
a connection each, :mod:`balsam.launcher.status_writers`, and then claimer threads with a
connection each, ``serial_claims.CLAIMERS``); ``--compare-with SRC`` first runs
each N with the ``balsam`` package of source tree SRC (``PYTHONPATH``; e.g. ``git archive`` of
main), against a DB of its own made by that tree's migrations (so index and trigger changes
are compared too), and prints same-run ratios. Server CPU is the master's connections' server processes and
the whole cluster's (postmaster, its children, the exited ones: WAL writer, autovacuum...).

Run: ``python benchmarks/bench_scale.py [--nodes 128,1024,4096] [--slots 64]
[--tasks-per-slot 4] [--time-scale 1 | --demand EV_PER_S] [--launchers 1] [--writers 0]
[--compare-with SRC] [--profile]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _scale_figures import BUSY_GOAL, server_counters, time_scale_for  # noqa: E402
from _scale_run import base_db, check, child_result, fill, fill_apart, run_child, simulate  # noqa: E402

__all__ = ["base_db", "fill"]  # what other benchmarks use


# ---- printing ---------------------------------------------------------------------------------
def line(nodes: int, slots: int, count: int, m: dict[str, Any], server: dict[str, int]) -> str:
    steady = "never full" if m["occ_steady"] is None else f"{m['occ_steady']:.1%}"
    full = "never" if m["full_at"] is None else f"{m['full_at']:.1f} s"
    tail = "none" if m["occ_tail"] != m["occ_tail"] else f"{m['occ_tail']:.1%}"  # nan: no tail
    events = 2 * count
    return (f"N={nodes:5d} x S={slots}: {count} tasks, demand {m['demand']:8.0f} ev/s, "
            f"sustained {m['rate']:8.0f} ev/s; occupancy {m['occ_all']:.1%} from start to "
            f"last start, steady {steady}, tail {tail} (>= {BUSY_GOAL:.0%} busy at "
            f"{full}, last work order {m['last_work']:.1f} s, last start "
            f"{m['last_start']:.1f} s, wall {m['wall']:.1f} s)\n"
            f"    statements {m['statements']} ({m['statements'] / m['wall']:.0f}/s, "
            f"{m['statements'] / count:.3f}/task) in {m['transactions']} transactions; "
            f"server: {server['commits']} commits, {server['updated']} rows updated, "
            f"{server['inserted']} inserted; job rows updated {server['job_updates']} "
            f"({server['job_updates'] / count:.2f}/task, {server['job_hot']} HOT)\n"
            f"    master CPU {m['master_cpu']:.1f} s ({m['master_cpu'] / m['wall']:.0%} of the "
            f"wall time; {1e6 * m['master_cpu'] / events:.0f} us per task event -> one core "
            f"sustains ~{events / m['master_cpu']:.0f} ev/s), simulation CPU "
            f"{m['sim_cpu']:.1f} s, {m['reports']} reports; its server processes "
            f"{m['server_cpu']:.1f} s CPU ({1e6 * m['server_cpu'] / count:.0f} us per task), "
            f"the whole cluster {m.get('cluster_cpu', float('nan')):.1f} s "
            f"({1e6 * m.get('cluster_cpu', float('nan')) / count:.0f} us per task); "
            f"peak RSS {m['rss_mb']:.0f} MB "
            f"(before the run {m['rss0_mb']:.0f} MB; the simulation's bookkeeping is in it)\n"
            f"{remains(m)}\n"
            f"    statements by work (master's connection): {by_work(m['by_work'])}\n"
            f"    the master's wall seconds in transactions: "
            f"{by_work(m.get('seconds_by_work', {}), '{:.1f}')}")


def remains(m: dict[str, Any]) -> str:
    """While work remained (from the first moment >= ``BUSY_GOAL`` busy to the last start):
    occupancy and events/s; the start-up fill; the timeline from the start to the last start."""
    parts = " ".join(f"{occ:.0%}/{rate / 1000:.1f}" for _, occ, rate in m["timeline"])
    if m["occ_remains"] is None:
        head = f"    while work remained: never {BUSY_GOAL:.0%} busy"
    else:
        window = m["last_start"] - m["full_at"]
        head = (f"    while work remained ({m['full_at']:.1f}-{m['last_start']:.1f} s, "
                f"{window:.1f} s): occupancy {m['occ_remains']:.1%}, "
                f"{m['rate_remains']:.0f} ev/s ({m['rate_remains'] / m['demand']:.0%} of the "
                f"demand); the fill {m['full_at'] / m['last_start']:.0%} of the time to the "
                f"last start")
    return f"{head}\n    timeline to the last start (occupancy/k ev/s per tenth): {parts}"


def by_work(counts: dict[str, Any], fmt: str = "{}") -> str:
    return ", ".join(f"{k} {fmt.format(v)}"
                     for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def child_argv(db_path: str, nodes: int, slots: int, args: Any, writers: int,
               seed: int = 1) -> list[str]:
    return ([sys.executable, os.path.abspath(__file__), "--child", db_path,
             "--nodes", str(nodes), "--slots", str(slots), "--time-scale", repr(args.time_scale),
             "--writers", str(writers), "--seed", str(seed)]
            + (["--claim-batch", str(args.claim_batch)] if args.claim_batch else [])
            + (["--no-processing"] if args.no_processing else []))




def one(db_path: str, nodes: int, slots: int, tasks_per_slot: float, args: Any,
        writers: int, code: Optional[str]) -> dict[str, Any]:
    """One master (its own process, ``code`` first on its path) with ``writers``; printed."""
    from balsam.db.connect import connect

    count = int(nodes * slots * tasks_per_slot)
    t = time.perf_counter()
    fill_apart(db_path, count, slots)
    filled = time.perf_counter() - t  # (this once also counted the run: it printed after it)
    load = os.getloadavg()[0]
    conn = connect(db_path)
    before = server_counters(conn)
    if args.profile:
        m = simulate(db_path, nodes, slots, time_scale=args.time_scale,
                     processing=not args.no_processing, claim_batch=args.claim_batch,
                     writers=writers, profile=f"/tmp/bench_scale_{nodes}.prof")
    else:
        m = child_result(run_child(child_argv(db_path, nodes, slots, args, writers), code))
    after = server_counters(conn)
    conn.close()
    server = {k: after[k] - before[k] for k in after}
    if not m["ok"]:
        raise SystemExit(f"the master exited with {m['rc']}")
    if not args.no_processing:
        check(db_path, count, m["started"])
    name = "before (" + m["code"] + ")" if code else f"after, {m['writers']} writer(s)"
    print(f"# {name}: {count} jobs inserted in {filled:.1f} s; tasks 1-10 s x "
          f"{args.time_scale:.3g}; load "
          f"{load:.2f} -> {os.getloadavg()[0]:.2f}", flush=True)
    print(line(nodes, slots, count, m, server), flush=True)
    if args.profile:
        import pstats

        pstats.Stats(f"/tmp/bench_scale_{nodes}.prof").sort_stats("tottime").print_stats(25)
    m["count"] = count
    return m


def compare(base: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Same-run ratios of each run to the ``--compare-with`` run."""
    def per_task(m: dict[str, Any], key: str) -> float:
        return float(1e6 * m[key] / m["count"])

    for m in runs:
        print(f"    after/before with {m['writers']} writer(s): sustained rate "
              f"{m['rate'] / base['rate']:.2f}x; server CPU per task (its connections) "
              f"{per_task(m, 'server_cpu'):.0f}/{per_task(base, 'server_cpu'):.0f} us = "
              f"{m['server_cpu'] / base['server_cpu']:.2f}x, whole cluster "
              f"{per_task(m, 'cluster_cpu'):.0f}/{per_task(base, 'cluster_cpu'):.0f} us = "
              f"{m['cluster_cpu'] / base['cluster_cpu']:.2f}x; master CPU per event "
              f"{per_task(m, 'master_cpu') / 2:.0f}/{per_task(base, 'master_cpu') / 2:.0f} us",
              flush=True)


def concurrent(db_path: str, launchers: int, nodes: int, slots: int, tasks_per_slot: float,
               args: Any, writers: int, code: Optional[str]) -> None:
    """``launchers`` masters in their own processes on one DB, N/K nodes each."""
    count = int(nodes * slots * tasks_per_slot)
    fill_apart(db_path, count, slots)
    count_each = str(writers) if writers else "the launcher's number of"
    label = f"before ({code})" if code else f"after, {count_each} writer(s) each"
    print(f"# {label}: {count} jobs; {launchers} launchers of {nodes // launchers} nodes each, "
          f"tasks 1-10 s x {args.time_scale:.3g}; load {os.getloadavg()[0]:.2f}", flush=True)
    t0 = time.time()
    procs = [run_child(child_argv(db_path, nodes // launchers, slots, args, writers, k + 1),
                       code) for k in range(launchers)]
    results = [child_result(p) for p in procs]
    wall = time.time() - t0
    check(db_path, count, sum(r["started"] for r in results))
    total = 2 * count
    for k, r in enumerate(results):
        print(f"    launcher {k + 1} ({r['writers']} writer(s)): {r['started']} tasks, "
              f"demand {r['demand']:.0f} ev/s, "
              f"sustained {r['rate']:.0f} ev/s, occupancy {r['occ_all']:.1%} from start, "
              f"master CPU {r['master_cpu']:.1f} s "
              f"({1e6 * r['master_cpu'] / (2 * r['started']):.0f} us per event), "
              f"server processes {r['server_cpu']:.1f} s "
              f"({1e6 * r['server_cpu'] / r['started']:.0f} us per task), "
              f"{r['statements']} statements, RSS {r['rss_mb']:.0f} MB")
        kinds = sorted(r.get("by_work", {}).items(), key=lambda kv: -kv[1])[:6]
        print("    statements by work (the master's connection): "
              + ", ".join(f"{name} {n}" for name, n in kinds))
        print(remains(r))
    print(f"{launchers} launchers x N={nodes // launchers} x S={slots}: {count} tasks, every "
          f"job run once; demand {sum(r['demand'] for r in results):.0f} ev/s in all; total "
          f"sustained {sum(r['rate'] for r in results):.0f} ev/s, while work remained "
          f"{sum(r['rate_remains'] or 0.0 for r in results):.0f} ev/s, "
          f"{total / wall:.0f} ev/s over the whole {wall:.1f} s; load after "
          f"{os.getloadavg()[0]:.2f}", flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="128,1024,4096", help="N values (comma-separated)")
    parser.add_argument("--slots", type=int, default=64, help="slots per node S (default 64)")
    parser.add_argument("--tasks-per-slot", type=float, default=4.0,
                        help="jobs per slot (default 4)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="task durations are 1-10 s times this (default 1)")
    parser.add_argument("--demand", type=float, default=None, metavar="EV_PER_S",
                        help="instead of --time-scale: the time scale at which N x S slots "
                             "demand this many task starts + ends per second, for each N")
    parser.add_argument("--launchers", type=int, default=1,
                        help="concurrent masters on one DB (default 1)")
    parser.add_argument("--no-processing", action="store_true",
                        help="the master runs no processing pass (no JOB_FINISHED, no check)")
    parser.add_argument("--profile", action="store_true", help="cProfile the master")
    parser.add_argument("--claim-batch", type=int, default=None,
                        help="launcher.claim_batch for the master (default: the DB's setting)")
    parser.add_argument("--writers", default="0",
                        help="launcher.status_writers values to run (comma-separated; 0: the "
                             "launcher's auto choice, 1 per 512 nodes; default 0)")
    parser.add_argument("--compare-with", metavar="SRC", default=None,
                        help="also run each N with the balsam package of this source tree "
                             "(e.g. a git archive of main) first, and print the ratios")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", metavar="DB", help=argparse.SUPPRESS)
    parser.add_argument("--fill", metavar="DB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.demand is not None and not args.demand > 0:
        parser.error(f"--demand must be a positive rate of events/s, not {args.demand:g}")
    if not args.time_scale > 0:
        parser.error(f"--time-scale must be positive, not {args.time_scale:g}")
    return args


def at_scale(args: argparse.Namespace, nodes: int) -> argparse.Namespace:
    """``args`` with the time scale of N = ``nodes`` (``--demand``'s, else ``--time-scale``)."""
    if args.demand is None:
        return args
    return argparse.Namespace(**{**vars(args),
                                 "time_scale": time_scale_for(args.demand, nodes, args.slots)})


def main() -> None:
    args = parse_args()
    if args.fill:
        fill(args.fill, int(args.nodes), args.slots)
        return
    if args.child:
        m = simulate(args.child, int(args.nodes), args.slots, time_scale=args.time_scale,
                     seed=args.seed, launcher=str(args.seed), claim_batch=args.claim_batch,
                     processing=not args.no_processing, writers=int(args.writers))
        print(json.dumps(m))
        return
    from _throwaway import machine_line, throwaway_db

    print(machine_line())
    scale = (f"the time scale giving {args.demand:.0f} ev/s at each N" if args.demand
             else f"x {args.time_scale:g}")
    print(f"# simulated workers: S={args.slots} slots per node, tasks 1-10 s {scale}, "
          f"{args.tasks_per_slot:g} tasks per slot", flush=True)
    writer_counts = [int(w) for w in args.writers.split(",")]
    base_code = os.path.abspath(args.compare_with) if args.compare_with else None
    with throwaway_db() as db_path, base_db(base_code) as base_path:
        for nodes in (int(n) for n in args.nodes.split(",")):
            run_n(at_scale(args, nodes), nodes, writer_counts, db_path, base_path, base_code)


def run_n(args: argparse.Namespace, nodes: int, writer_counts: list[int], db_path: str,
          base_path: str, base_code: Optional[str]) -> None:
    """N = ``nodes``: one master per writer count (after the ``--compare-with`` tree's), or
    ``--launchers`` masters at once."""
    if args.launchers > 1:
        if base_code:
            concurrent(base_path, args.launchers, nodes, args.slots,
                       args.tasks_per_slot, args, 0, base_code)
        for writers in writer_counts:
            concurrent(db_path, args.launchers, nodes, args.slots,
                       args.tasks_per_slot, args, writers, None)
        return
    base = (one(base_path, nodes, args.slots, args.tasks_per_slot, args, 0, base_code)
            if base_code else None)
    runs = [one(db_path, nodes, args.slots, args.tasks_per_slot, args, writers, None)
            for writers in writer_counts]
    if base is not None:
        compare(base, runs)


if __name__ == "__main__":
    main()
