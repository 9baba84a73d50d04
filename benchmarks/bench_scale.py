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
(task starts + ends per second that 100% occupancy needs), the sustained rate (starts + ends per
second in the steady window), slot occupancy while work remains (from the master's start, and
in the steady window: from the first time >= 98% of slots were busy to the last start), client
statements and transactions (per second, per task), the server's ``pg_stat_database`` commits
and rows changed, master CPU (process CPU minus the simulation's own, measured around its
code) and its share of the run, ``master CPU per task event`` (the rate one core could
sustain is its inverse) and peak RSS (process; the simulation's bookkeeping is in it).

Correctness is checked after each run (exit otherwise): every job JOB_FINISHED, with exactly
one RUNNING, one RUN_DONE and one JOB_FINISHED event, and the simulation started exactly as
many tasks as there are jobs (so none twice).

``--launchers K`` runs K masters as K processes, each with its own session and N/K nodes, on
one database (they claim from the same jobs): the same checks, and the total rate.

Each master runs in a process of its own. ``--writers 1,2,4`` runs each N once per
``launcher.status_writers`` value (1: the master's own connection; K > 1: K writer threads with
a connection each, :mod:`balsam.launcher.status_writers`, and then claimer threads with a
connection each, ``serial_claims.CLAIMERS``); ``--compare-with SRC`` first runs
each N with the ``balsam`` package of source tree SRC (``PYTHONPATH``; e.g. ``git archive`` of
main), against a DB of its own made by that tree's migrations (so index and trigger changes
are compared too), and prints same-run ratios. Server CPU is the master's connections' server processes and
the whole cluster's (postmaster, its children, the exited ones: WAL writer, autovacuum...).

Run: ``python benchmarks/bench_scale.py [--nodes 128,1024,4096] [--slots 64]
[--tasks-per-slot 4] [--time-scale 1] [--launchers 1] [--writers 0] [--compare-with SRC]
[--profile]``.
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TICK_SECONDS = 0.001
"""A simulated worker's loop period: ends within one tick on one worker make one report."""
BUSY_GOAL = 0.98


class SimWorkers:
    """``nodes`` simulated workers of ``slots`` slots each, as a :class:`MasterChannel`.

    Tasks take ``duration()`` seconds of the simulated clock (``time.monotonic``); ``sim_cpu``
    is the process CPU time spent simulating (not the master's). ``starts``/``ends`` are the
    simulated times at which tasks started and ended, ``started`` how many were started.
    """

    def __init__(self, nodes: int, slots: int, duration: Any) -> None:
        self.workers: Sequence[int] = range(1, nodes + 1)
        self.slots = slots
        self.duration = duration
        self.free = [slots] * (nodes + 1)
        self.queued: list[deque[str]] = [deque() for _ in range(nodes + 1)]
        self.heap: list[tuple[float, int, str]] = []
        self.cancelled: set[str] = set()
        self.stopping: set[int] = set()
        self.outbox: deque[tuple[int, bytes]] = deque()
        self.starts = array("d")
        self.ends = array("d")
        self.started = 0
        self.reports = 0
        self.sim_cpu = 0.0
        self.last_work = 0.0
        """When the master last sent new work (after it, it had no more to hand out; work given
        back by a ``recall`` and sent again is not new: the tail's rebalancing)."""
        self.recalled: set[str] = set()

    # ---- the master's side ------------------------------------------------------------------
    def send(self, worker: int, message: dict[str, Any]) -> None:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)  # the master's isend pickles
        t0 = time.process_time()
        self._obey(worker, pickle.loads(data))
        self.sim_cpu += time.process_time() - t0

    def receive(self) -> Optional[tuple[int, dict[str, Any]]]:
        if not self.outbox and self.heap:
            t0 = time.process_time()
            self._advance(time.monotonic())
            self.sim_cpu += time.process_time() - t0
        if not self.outbox:
            return None
        worker, data = self.outbox.popleft()
        return worker, pickle.loads(data)  # the master's recv unpickles

    def flush(self, timeout: float) -> None:
        pass

    # ---- the workers' side ------------------------------------------------------------------
    def _report(self, worker: int, report: dict[str, Any]) -> None:
        self.reports += 1
        self.outbox.append((worker, pickle.dumps(report, pickle.HIGHEST_PROTOCOL)))

    def _start(self, worker: int, now: float) -> list[str]:
        queue, started = self.queued[worker], []
        while queue and self.free[worker] > 0:
            job_id = queue.popleft()
            self.free[worker] -= 1
            started.append(job_id)
            heapq.heappush(self.heap, (now + self.duration(), worker, job_id))
            self.starts.append(now)
        self.started += len(started)
        return started

    def _obey(self, worker: int, message: dict[str, Any]) -> None:
        now = time.monotonic()
        report: dict[str, Any] = {}
        if message.get("abort") or message.get("exit"):
            self._drop_running(worker, now)
            self.queued[worker].clear()
            self._report(worker, {"bye": True})
            return
        if message.get("work"):
            ids = [w.job_id for w in message["work"]]
            if any(job_id not in self.recalled for job_id in ids):  # new work, not a recall's
                self.last_work = now
            if worker in self.stopping:
                report["returned"] = ids
            else:
                self.queued[worker].extend(ids)
        for job_id in message.get("kill", ()):
            if job_id in self.queued[worker]:
                self.queued[worker].remove(job_id)
            else:
                self._drop_running(worker, now, [job_id])
            report.setdefault("killed", []).append(job_id)
        if "recall" in message:  # queued work taken back for idle nodes (serial_rebalance)
            queue = self.queued[worker]
            count = min(len(queue), int(message["recall"] * self.slots + 1e-6))
            report["recalled"] = [queue.pop() for _ in range(count)]
            self.recalled.update(report["recalled"])
        if "stop" in message:
            self.stopping.add(worker)
            if self.queued[worker]:
                report.setdefault("returned", []).extend(self.queued[worker])
                self.queued[worker].clear()
            report["stopped"] = [(j, -15) for j in self._drop_running(worker, now)]
            report["drained"] = True
        started = [] if worker in self.stopping else self._start(worker, now)
        if started:
            report["started"] = started
        if report:
            self._report(worker, report)

    def _drop_running(self, worker: int, now: float,
                      only: Optional[list[str]] = None) -> list[str]:
        """Stop running tasks of ``worker`` (``only`` those); their ids (rare: a linear scan)."""
        dropped = [j for _, w, j in self.heap if w == worker and j not in self.cancelled
                   and (only is None or j in only)]
        self.cancelled.update(dropped)
        self.free[worker] += len(dropped)
        for _ in dropped:
            self.ends.append(now)
        return dropped

    def _advance(self, now: float) -> None:
        """Run every simulated worker up to ``now``: ends, then starts in the freed slots;
        one report per worker per tick."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            tick_end = min(now, heap[0][0] + TICK_SECONDS)
            done: dict[int, list[str]] = {}
            while heap and heap[0][0] <= tick_end:
                t, worker, job_id = heapq.heappop(heap)
                if job_id in self.cancelled:
                    self.cancelled.discard(job_id)
                    continue
                self.free[worker] += 1
                self.ends.append(t)
                done.setdefault(worker, []).append(job_id)
            for worker, ids in done.items():
                report: dict[str, Any] = {"done": ids}
                if worker not in self.stopping:
                    started = self._start(worker, tick_end)
                    if started:
                        report["started"] = started
                self._report(worker, report)


# ---- measuring ---------------------------------------------------------------------------------
def occupancy(starts: array, ends: array, slots: int, a: float, b: float) -> float:
    """Busy slot-seconds in [a, b] over ``slots`` x (b - a) (a task's overlap is
    clip(end) - clip(start), so starts and ends need not be paired)."""
    if b <= a:
        return float("nan")
    busy = (sum(min(max(e, a), b) for e in ends) - sum(min(max(s, a), b) for s in starts))
    busy += sum(b - max(s, a) for s in starts[len(ends):]) if len(ends) < len(starts) else 0.0
    return busy / (slots * (b - a))


def peak_busy(starts: array, ends: array) -> int:
    """Most tasks running at once."""
    busy = peak = 0
    for _, step in sorted([(e, -1) for e in ends] + [(s, 1) for s in starts]):
        busy += step
        peak = max(peak, busy)
    return peak


def first_full(starts: array, ends: array, slots: int) -> Optional[float]:
    """The first simulated time at which >= ``BUSY_GOAL`` of the slots were busy."""
    points = sorted([(s, 1) for s in starts] + [(e, -1) for e in ends])
    busy, goal = 0, BUSY_GOAL * slots
    for t, step in points:
        busy += step
        if busy >= goal:
            return t
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set since it started (``VmHWM``; ``ru_maxrss`` would
    include the parent's at the fork), in MB."""
    try:
        with open("/proc/self/status") as fh:
            for text in fh:
                if text.startswith("VmHWM:"):
                    return int(text.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def backend_cpu(db: Any) -> float:
    """CPU seconds of the master's server process so far (from /proc: the server is local;
    nan where it cannot be read)."""
    try:
        with open(f"/proc/{db._backend_pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _proc_cpu(pid: int, children: bool = False) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:  # cutime + cstime: children that exited and were waited for
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def cluster_cpu(db: Any) -> float:
    """CPU seconds of the whole PostgreSQL cluster so far: the postmaster with its exited
    children (autovacuum workers, old backends) and every living child (backends, WAL writer,
    checkpointer, ...); nan where /proc cannot be read."""
    try:
        with open(f"/proc/{db._backend_pid}/stat") as fh:
            postmaster = int(fh.read().rsplit(")", 1)[1].split()[1])
        total = _proc_cpu(postmaster, children=True)
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) != postmaster:
                        continue
                total += _proc_cpu(int(name))
            except (OSError, IndexError, ValueError):
                continue
        return total
    except (OSError, IndexError, ValueError):
        return float("nan")


def server_counters(conn: Any) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_fetched "
                    "FROM pg_stat_database WHERE datname = current_database()")
        row = cur.fetchone()
        cur.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                    "WHERE relname = 'core_balsamjob'")
        row += cur.fetchone()
    conn.commit()
    return dict(zip(("commits", "inserted", "updated", "deleted", "fetched", "job_updates",
                     "job_hot"), row))


# ---- one run --------------------------------------------------------------------------------
def fill(db_path: str, count: int, slots: int) -> None:
    """``count`` runnable no-op jobs (node_packing_count ``slots``) in an emptied DB."""
    from balsam.core import bulk, schema
    from balsam.db.connect import connect

    conn = connect(db_path)
    with conn, conn.cursor() as cur:
        cur.execute(f"TRUNCATE {schema.EVENT_TABLE}, {schema.DEP_TABLE}, {schema.JOB_TABLE}, "
                    f"{schema.APP_TABLE}, {schema.SESSION_TABLE} CASCADE")
        cur.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, "
                    "preprocess, envscript, postprocess) VALUES ('noop', '', 'true', '', '', '')")
        for first in range(0, count, 100_000):
            rows = [schema.new_job_row({"name": f"t{i}", "workflow": "sim", "application": "noop",
                                        "state": "PREPROCESSED", "node_packing_count": slots})
                    for i in range(first, min(count, first + 100_000))]
            bulk.copy_jobs(cur, rows)
        cur.execute(f"ANALYZE {schema.JOB_TABLE}")
    conn.close()


def fill_apart(db_path: str, count: int, slots: int) -> None:
    """:func:`fill` in a child process (so the master's peak RSS is its own)."""
    subprocess.run([sys.executable, os.path.abspath(__file__), "--fill", db_path, "--nodes",
                    str(count), "--slots", str(slots)], check=True)


def simulate(db_path: str, nodes: int, slots: int, *, time_scale: float = 1.0, seed: int = 1,
             processing: bool = True, profile: Optional[str] = None,
             launcher: str = "", claim_batch: Optional[int] = None,
             writers: int = 0) -> dict[str, Any]:
    """Run one real master with ``nodes`` simulated workers until it exits idle; the figures.
    ``writers``: ``launcher.status_writers`` (0: the launcher's auto choice). Works with an
    older tree on ``PYTHONPATH`` (``--compare-with``): without ``status_writers`` it builds
    the one :class:`StatusBuffer` as that tree's launcher does."""
    import logging

    import balsam
    from balsam.core import leases
    from balsam.core.tunables import Tunables
    from balsam.db import dbsettings
    from balsam.launcher.context import Context
    from balsam.launcher.ensemble_watch import start_message
    from balsam.launcher.job_source import JobSource
    from balsam.launcher.metered import MeteredDatabase
    from balsam.launcher.serial_master import Master
    from balsam.launcher.serial_mode import EXIT_FINISHED, EXIT_IDLE
    from balsam.launcher.status import StatusBuffer
    from balsam.platform.allocation import Allocation

    settings = dbsettings.load(db_path)
    launcher_settings = dict(settings["launcher"], idle_exit_seconds=0.2,
                             idle_wait_seconds=0.2)
    if claim_batch:
        launcher_settings["claim_batch"] = claim_batch
    try:
        from balsam.launcher import status_writers
    except ImportError:  # a tree from before the writers
        status_writers = None  # type: ignore[assignment]
    if status_writers is not None:
        launcher_settings["status_writers"] = writers
    tunables = Tunables.from_settings(launcher_settings)
    stop = threading.Event()
    db = MeteredDatabase(db_path, "balsam-sim-master", stop=stop)
    session_id = db.run(leases.open_session, hostname="sim", pid=os.getpid(), job_mode="serial",
                        num_nodes=nodes, lease_seconds=tunables.lease_seconds,
                        label=f"serial --consume-all (simulated {launcher})")
    log = logging.getLogger(f"balsam.sim.master{launcher}")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    alloc = Allocation(tuple(f"sim{i}" for i in range(nodes)), slots, 0, "local", "", None)
    ctx = Context(db_path=db_path, settings=settings, tunables=tunables, alloc=alloc, db=db,
                  session_id=session_id, job_mode="serial", wf_filter=None, persistent=False,
                  processing=processing, gpus_per_node=0, stop=stop, log=log, base_env={},
                  flavour="", mpi_executable=None)
    source = JobSource(db, session_id, alloc, db_path, "serial", None, base_env={})
    if status_writers is not None:
        k = status_writers.writer_count(tunables.status_writers, nodes)
        status: Any = status_writers.open_status(
            db, session_id, writers=k, flush_seconds=tunables.status_flush_seconds,
            start_message=start_message(session_id), processing=processing)
        databases = getattr(status, "databases", [])
    else:
        k = 0
        status = StatusBuffer(db, session_id, tunables.status_flush_seconds,
                              start_message=start_message(session_id))
        databases = []
    rng = random.Random(seed)
    channel = SimWorkers(nodes, slots, lambda: rng.uniform(1.0, 10.0) * time_scale)
    master = Master(ctx, source, status, channel)
    claimer_dbs = [c.db for c in getattr(master, "claimers", [])]  # a connection each
    claimer_closes = [d.close for d in claimer_dbs]
    for claimer_db in claimer_dbs:  # left open by the master until measured, closed here
        claimer_db.close = lambda: None
    databases = [*databases, *claimer_dbs]
    rss0 = peak_rss_mb()
    db.run(lambda cur: cur.execute("SELECT 1"))  # connected: its server process exists
    for writer_db in databases:
        writer_db.run(lambda cur: cur.execute("SELECT 1"))
    server_cpu0 = backend_cpu(db) + sum(backend_cpu(d) for d in databases)
    cluster_cpu0 = cluster_cpu(db)
    cpu0 = time.process_time()
    t0 = time.monotonic()
    if profile:
        import cProfile

        prof = cProfile.Profile()
        rc = prof.runcall(master.run)
        prof.dump_stats(profile)
    else:
        rc = master.run()
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    server_cpu = backend_cpu(db) + sum(backend_cpu(d) for d in databases) - server_cpu0
    all_server_cpu = cluster_cpu(db) - cluster_cpu0
    statements = db.statements + sum(d.statements for d in databases)
    transactions = db.transactions + sum(d.transactions for d in databases)
    if status_writers is not None:
        status_writers.close_status(status)
    for close in claimer_closes:
        close()
    db.run(leases.close_session, session_id, "simulation ended")
    out = {"rc": rc, "ok": rc in (EXIT_IDLE, EXIT_FINISHED), "wall": wall, "cpu": cpu,
           "sim_cpu": channel.sim_cpu,
           "server_cpu": server_cpu, "cluster_cpu": all_server_cpu, "writers": k,
           "code": os.path.dirname(os.path.dirname(os.path.abspath(balsam.__file__))),
           "master_cpu": cpu - channel.sim_cpu, "t0": t0, "started": channel.started,
           "reports": channel.reports, "statements": statements,
           "transactions": transactions, "by_work": dict(db.by_work),
           "seconds_by_work": dict(getattr(db, "seconds_by_work", {})),
           "rss_mb": peak_rss_mb(), "rss0_mb": rss0, "slots": nodes * slots,
           "demand": 2 * nodes * slots / (5.5 * time_scale)}
    db.close()
    out.update(window_figures(channel.starts, channel.ends, nodes * slots, t0,
                              channel.last_work))
    return out


def window_figures(starts: array, ends: array, slots: int, t0: float,
                   last_work: float) -> dict[str, Any]:
    """Occupancy and event rates from the simulated start and end times: from the master's
    start to the last task start (work remained: ``occ_all``); steady, from the first time
    ``BUSY_GOAL`` of the slots were busy to the master's last work order (it still had work
    to hand out; ``occ_steady``, ``rate``); and the tail, from then to the last start (work
    was left only in some workers' queues: ``occ_tail``)."""
    last_start = max(starts) if starts else t0
    full = first_full(starts, ends, slots)
    out: dict[str, Any] = {"last_start": last_start - t0, "last_work": last_work - t0,
                           "peak_busy": peak_busy(starts, ends),
                           "occ_all": occupancy(starts, ends, slots, t0, last_start),
                           "occ_tail": occupancy(starts, ends, slots, last_work, last_start),
                           "full_at": None if full is None else full - t0}
    a = full if full is not None and full < last_work else t0
    b = last_work
    out["occ_steady"] = (occupancy(starts, ends, slots, a, b)
                         if full is not None and full < last_work else None)
    events = sum(1 for s in starts if a <= s <= b) + sum(1 for e in ends if a <= e <= b)
    out["rate"] = events / (b - a) if b > a else float("nan")
    return out


def check(db_path: str, count: int, started: int) -> None:
    """Exit unless every job finished exactly once, every state recorded once."""
    found = problems(db_path, count, started)
    if found:
        raise SystemExit("CHECK FAILED: " + "; ".join(found))


def problems(db_path: str, count: int, started: int) -> list[str]:
    """What is wrong with a finished run of ``count`` jobs of which the simulated workers
    started ``started`` tasks: jobs not JOB_FINISHED, a state not recorded exactly once."""
    from balsam.core import schema
    from balsam.db.connect import connect

    conn = connect(db_path)
    with conn, conn.cursor() as cur:
        cur.execute(f"SELECT state, count(*) FROM {schema.JOB_TABLE} GROUP BY state")
        states = dict(cur.fetchall())
        cur.execute(f"""SELECT to_state, count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n > 1)
                        FROM (SELECT job_id, to_state, count(*) AS n FROM {schema.EVENT_TABLE}
                              WHERE to_state IN ('RUNNING', 'RUN_DONE', 'JOB_FINISHED')
                              GROUP BY job_id, to_state) x GROUP BY to_state""")
        events = {s: (once, more) for s, once, more in cur.fetchall()}
    conn.close()
    problems = []
    if states != {"JOB_FINISHED": count}:
        problems.append(f"job states {states}")
    for state in ("RUNNING", "RUN_DONE", "JOB_FINISHED"):
        once, more = events.get(state, (0, 0))
        if once != count or more:
            problems.append(f"{state}: {once} jobs once, {more} more than once (of {count})")
    if started != count:
        problems.append(f"the simulated workers started {started} tasks for {count} jobs")
    return problems


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
            f"    statements by work (master's connection): {by_work(m['by_work'])}\n"
            f"    the master's wall seconds in transactions: "
            f"{by_work(m.get('seconds_by_work', {}), '{:.1f}')}")


def by_work(counts: dict[str, Any], fmt: str = "{}") -> str:
    return ", ".join(f"{k} {fmt.format(v)}"
                     for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def child_argv(db_path: str, nodes: int, slots: int, args: Any, writers: int,
               seed: int = 1) -> list[str]:
    return ([sys.executable, os.path.abspath(__file__), "--child", db_path,
             "--nodes", str(nodes), "--slots", str(slots), "--time-scale", str(args.time_scale),
             "--writers", str(writers), "--seed", str(seed)]
            + (["--claim-batch", str(args.claim_batch)] if args.claim_batch else [])
            + (["--no-processing"] if args.no_processing else []))


def child_env(code: Optional[str]) -> dict[str, str]:
    """The environment of a master process: ``code`` (a source tree) first on the path."""
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (code, env.get("PYTHONPATH")) if p)
    return env


def run_child(argv: list[str], code: Optional[str]) -> subprocess.Popen[str]:
    if code:  # an older tree refuses a settings.yml naming tunables it does not know
        path = os.path.join(argv[argv.index("--child") + 1], "settings.yml")
        with open(path) as fh:
            text = [t for t in fh if not t.strip().startswith("status_writers:")]
        with open(path, "w") as fh:
            fh.writelines(text)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=child_env(code))


def child_result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, _ = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"a master failed ({proc.returncode}): {stdout}")
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def one(db_path: str, nodes: int, slots: int, tasks_per_slot: float, args: Any,
        writers: int, code: Optional[str]) -> dict[str, Any]:
    """One master (its own process, ``code`` first on its path) with ``writers``; printed."""
    from balsam.db.connect import connect

    count = int(nodes * slots * tasks_per_slot)
    t = time.perf_counter()
    fill_apart(db_path, count, slots)
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
    print(f"# {name}: {count} jobs inserted in {time.perf_counter() - t:.1f} s; load "
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
    label = f"before ({code})" if code else f"after, {writers} writer(s) each"
    print(f"# {label}: {count} jobs; {launchers} launchers of {nodes // launchers} nodes each; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    t0 = time.time()
    procs = [run_child(child_argv(db_path, nodes // launchers, slots, args, writers, k + 1),
                       code) for k in range(launchers)]
    results = [child_result(p) for p in procs]
    wall = time.time() - t0
    check(db_path, count, sum(r["started"] for r in results))
    total = 2 * count
    for k, r in enumerate(results):
        print(f"    launcher {k + 1}: {r['started']} tasks, sustained {r['rate']:.0f} ev/s, "
              f"occupancy {r['occ_all']:.1%} from start, master CPU {r['master_cpu']:.1f} s, "
              f"server processes {r['server_cpu']:.1f} s, "
              f"{r['statements']} statements, RSS {r['rss_mb']:.0f} MB")
    print(f"{launchers} launchers x N={nodes // launchers} x S={slots}: {count} tasks, every "
          f"job run once; total sustained {sum(r['rate'] for r in results):.0f} ev/s, "
          f"{total / wall:.0f} ev/s over the whole {wall:.1f} s; load after "
          f"{os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="128,1024,4096", help="N values (comma-separated)")
    parser.add_argument("--slots", type=int, default=64, help="slots per node S (default 64)")
    parser.add_argument("--tasks-per-slot", type=float, default=4.0,
                        help="jobs per slot (default 4)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="task durations are 1-10 s times this (default 1)")
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
    print(f"# simulated workers: S={args.slots} slots per node, tasks 1-10 s x "
          f"{args.time_scale:g}, {args.tasks_per_slot:g} tasks per slot", flush=True)
    writer_counts = [int(w) for w in args.writers.split(",")]
    base_code = os.path.abspath(args.compare_with) if args.compare_with else None
    with throwaway_db() as db_path, base_db(base_code) as base_path:
        for nodes in (int(n) for n in args.nodes.split(",")):
            if args.launchers > 1:
                if base_code:
                    concurrent(base_path, args.launchers, nodes, args.slots,
                               args.tasks_per_slot, args, 0, base_code)
                for writers in writer_counts:
                    concurrent(db_path, args.launchers, nodes, args.slots,
                               args.tasks_per_slot, args, writers, None)
                continue
            base = (one(base_path, nodes, args.slots, args.tasks_per_slot, args, 0, base_code)
                    if base_code else None)
            runs = [one(db_path, nodes, args.slots, args.tasks_per_slot, args, writers, None)
                    for writers in writer_counts]
            if base is not None:
                compare(base, runs)


@contextmanager
def base_db(code: Optional[str]) -> Iterator[str]:
    """A DB of its own for the ``--compare-with`` tree, made by that tree's ``dbdir.init`` (its
    migrations: schema changes are compared too); stopped and removed afterwards. "" if no
    tree."""
    if not code:
        yield ""
        return
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="balsam-bench-base-", dir="/tmp")
    os.chmod(root, 0o755)
    path = os.path.join(root, "benchdb")
    run = [sys.executable, "-c", "import sys; from balsam.db import cluster, dbdir; "
           "getattr(dbdir if sys.argv[1] == 'init' else cluster, sys.argv[1])(sys.argv[2])"]
    t0 = time.perf_counter()
    # In the tree's own directory: `python -c` puts the working directory first on the path, so
    # from this tree's checkout the DB was made by this tree's migrations, not SRC's (schema
    # changes then showed as no change).
    subprocess.run(run + ["init", path], check=True, env=child_env(code), cwd=code,
                   stdout=subprocess.DEVNULL)
    from balsam.db.connect import connect

    conn = connect(path)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT max(name) FROM django_migrations WHERE app = 'core'")
            last = cur.fetchone()[0]
    finally:
        conn.close()
    print(f"# the base tree's DB {path} created by its own migrations (the last {last}) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    try:
        yield path
    finally:
        subprocess.run(run + ["stop", path], env=child_env(code), cwd=code,
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
