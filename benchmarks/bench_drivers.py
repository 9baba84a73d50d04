"""Benchmark: psycopg2 vs psycopg 3 on the same DB, in one run, on Balsam's own statements.

Four workloads, each variant alternating with the others for ``--rounds`` rounds (median kept),
on bare connections of each driver unless said otherwise:

* **bulk_create** of ``-n`` constructed ``BalsamJob`` objects through the ORM, in a fresh
  process per run with ``BALSAM_DB_DRIVER`` set to each driver.
* **COPY** ``-n`` new jobs: :func:`balsam.core.bulk.copy_jobs` (what ``bulk_create`` runs:
  validation, Cython text encoder, COPY) on psycopg2 and on psycopg 3; and psycopg 3's binary
  COPY (``write_row`` of Python values after the same validation). Rows are built untimed.
* **Status writes**: a launcher's flush, :meth:`StatusBuffer.write`'s two statements (``--batch``
  jobs to RUNNING, the previous batch to RUN_DONE, through :func:`balsam.core.leases`) and the
  commit, ``--cycles`` times; on psycopg2, psycopg 3, and psycopg 3 in pipeline mode, where both
  statements and the commit go in one round trip (results read after the sync: the best case).
* **Claims**: :func:`balsam.core.leases.claim` of ``--claim`` jobs plus commit, ``--cycles``
  times; on psycopg2, psycopg 3 (client-side binding, as Django uses it) and psycopg 3 with
  server-side binding and ``prepare=True`` (planned once per connection).

Prints, per variant, the median wall time per operation (its range over the rounds) and the
client's CPU time per operation (what the driver itself costs, and what a loaded machine
disturbs least), and the speed of each relative to psycopg2.

Run: ``python benchmarks/bench_drivers.py [-n 50000] [--rounds 7] [--cycles 100]``
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line, throwaway_db  # noqa: E402


def connections(path: str) -> dict[str, Any]:
    """One connection per variant family: psycopg2, psycopg 3 client-side, psycopg 3 server-side."""
    import psycopg

    from balsam.db.connect import connect, connection_params

    params = connection_params(path, "bench-drivers")
    return {"psycopg2": connect(path),
            "psycopg3": psycopg.connect(**params, cursor_factory=psycopg.ClientCursor),
            "psycopg3-server": psycopg.connect(**params)}


def new_rows(n: int, workflow: str, state: str = "CREATED") -> list[dict]:
    from balsam.core import bulk, schema

    base = schema.new_job_row({"workflow": workflow, "application": "app", "state": state})
    rows = []
    for i in range(n):
        row = dict(base, name=f"job{i}", args=f"--input {i}", job_id=bulk.uuid4(), data={})
        rows.append(row)
    return rows


def copy_text(conn: Any, rows: list[dict]) -> None:
    from balsam.core import bulk

    with conn.cursor() as cur:
        bulk.copy_jobs(cur, rows)
    conn.commit()


def copy_binary(conn: Any, rows: list[dict], types: list[str]) -> None:
    from psycopg.types.json import Jsonb

    from balsam.core import bulk, lifecycle, schema

    bulk.normalize_rows(rows)
    cols = bulk.COLUMNS
    json_cols = {i for i, t in enumerate(types) if t == "jsonb"}
    with conn.cursor() as cur:
        with cur.copy(f"COPY {schema.JOB_TABLE} ({', '.join(cols)}) FROM STDIN "
                      "WITH (FORMAT binary)") as copy:
            copy.set_types(types)
            for row in rows:
                values = [row[c] for c in cols]
                for i in json_cols:
                    values[i] = Jsonb(values[i])
                copy.write_row(values)
        lifecycle.record_created(cur, [(r["job_id"], r["state"]) for r in rows
                                       if r["state"] != "CREATED"])
    conn.commit()


def column_types(conn: Any) -> list[str]:
    from balsam.core import bulk, schema

    with conn.cursor() as cur:
        cur.execute("SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t "
                    "ON t.oid = a.atttypid WHERE a.attrelid = %s::regclass AND a.attnum > 0",
                    [schema.JOB_TABLE])
        by_name = dict(cur.fetchall())
    conn.commit()
    return [by_name[c] for c in bulk.COLUMNS]


def truncate(conn: Any) -> None:
    from balsam.core import schema

    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE {schema.EVENT_TABLE}, {schema.DEP_TABLE}, {schema.JOB_TABLE}, "
                    f"{schema.WAKE_TABLE} CASCADE")
        cur.execute("CHECKPOINT")
    conn.commit()


def clock() -> tuple[float, float]:
    """(wall, this process's CPU) seconds now."""
    return time.perf_counter(), time.process_time()


def since(t0: tuple[float, float], ops: int) -> tuple[float, float]:
    """(wall, client CPU) seconds per operation since ``t0``."""
    return (time.perf_counter() - t0[0]) / ops, (time.process_time() - t0[1]) / ops


def bench_copy(conns: dict[str, Any], n: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    types = column_types(conns["psycopg3"])
    runs: dict[str, Callable[[list[dict]], None]] = {
        "psycopg2 text COPY": lambda rows: copy_text(conns["psycopg2"], rows),
        "psycopg3 text COPY": lambda rows: copy_text(conns["psycopg3"], rows),
        "psycopg3 binary COPY": lambda rows: copy_binary(conns["psycopg3"], rows, types),
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for r in range(rounds + 1):  # round 0 warms up, untimed
        for label in _rotated(list(runs), r):
            truncate(conns["psycopg2"])
            rows = new_rows(n, "copy")
            t0 = clock()
            runs[label](rows)
            if r:
                times[label].append(since(t0, n))
    return times


ORM_RUN = """
import json, time
from balsam.core.models import BalsamJob
BalsamJob.objects.exists()  # connect outside the timing
jobs = [BalsamJob(name=f"job{i}", workflow="orm", application="app", args=f"--input {i}")
        for i in range(N)]
t0 = time.perf_counter(), time.process_time()
BalsamJob.objects.bulk_create(jobs)
print(json.dumps([(time.perf_counter() - t0[0]) / N, (time.process_time() - t0[1]) / N]))
"""


def bench_orm(conns: dict[str, Any], path: str, n: int, rounds: int
              ) -> dict[str, list[tuple[float, float]]]:
    """``BalsamJob.objects.bulk_create`` of ``n`` constructed jobs in a fresh process per run,
    the ORM on each driver (``BALSAM_DB_DRIVER``); constructing the objects is not timed."""
    import json
    import subprocess

    times: dict[str, list[tuple[float, float]]] = {"psycopg2": [], "psycopg": []}
    for r in range(rounds + 1):
        for label in _rotated(list(times), r):
            truncate(conns["psycopg2"])
            env = dict(os.environ, BALSAM_DB_PATH=path, BALSAM_DB_DRIVER=label)
            out = subprocess.run([sys.executable, "-c", f"N = {n}\n" + ORM_RUN], env=env,
                                 capture_output=True, text=True, timeout=600, check=True)
            if r:
                times[label].append(tuple(json.loads(out.stdout)))  # type: ignore[arg-type]
    return times


def _rotated(items: list[str], r: int) -> list[str]:
    k = r % len(items)
    return items[k:] + items[:k]


class _Deferred:
    """Cursor for pipeline mode: each execute on a fresh cursor; results read after the sync."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.cursors: list[Any] = []

    def execute(self, sql: str, params: Any = None) -> None:
        cur = self.conn.cursor()
        cur.execute(sql, params)
        self.cursors.append(cur)

    def fetchall(self) -> list:
        return []  # the caller reads ``cursors`` after the commit


class _Prepared:
    """Cursor whose statements are prepared on the server (psycopg 3 server-side binding)."""

    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def execute(self, sql: str, params: Any = None) -> None:
        self.cur.execute(sql, params, prepare=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cur, name)


def _session(conn: Any) -> int:
    from balsam.core import leases

    with conn.cursor() as cur:
        sid = leases.open_session(cur, hostname="bench", pid=os.getpid(), job_mode="serial",
                                  num_nodes=1, lease_seconds=3600)
    conn.commit()
    return sid


def status_cycles(conn: Any, ids: list[str], batch: int, pipeline: bool
                  ) -> tuple[tuple[float, float], int]:
    """Claim ``ids`` (untimed), then time start(batch i) + finish(batch i-1) + commit per cycle;
    returns ((wall, CPU) seconds per flush, jobs that reached RUN_DONE)."""
    from balsam.core import leases, schema
    from balsam.core.states import State

    sid = _session(conn)
    with conn.cursor() as cur:
        cur.execute(f"UPDATE {schema.JOB_TABLE} SET session_id = %s WHERE job_id = ANY(%s::uuid[])",
                    [sid, ids])
    conn.commit()
    batches = [ids[i:i + batch] for i in range(0, len(ids), batch)]
    t0 = clock()
    for i in range(len(batches) + 1):
        if pipeline:
            with conn.pipeline():
                cur = _Deferred(conn)
                _write(cur, leases, State, sid, batches, i)
                conn.commit()
            for c in cur.cursors:
                c.fetchall()
        else:
            with conn.cursor() as cur:
                _write(cur, leases, State, sid, batches, i)
            conn.commit()
    dt = since(t0, len(batches) + 1)
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE session_id IS NULL AND "
                    "state = 'RUN_DONE' AND job_id = ANY(%s::uuid[])", [ids])
        done = cur.fetchone()[0]
    conn.commit()
    return dt, done


def _write(cur: Any, leases: Any, State: Any, sid: int, batches: list, i: int) -> None:
    if i < len(batches):
        leases.start(cur, sid, batches[i])
    if i > 0:
        leases.finish(cur, sid, batches[i - 1], State.RUN_DONE)


def bench_status(conns: dict[str, Any], rounds: int, cycles: int, batch: int
                 ) -> dict[str, list[tuple[float, float]]]:
    from balsam.core import bulk

    runs = {"psycopg2": (conns["psycopg2"], False), "psycopg3": (conns["psycopg3"], False),
            "psycopg3 pipeline": (conns["psycopg3"], True)}
    per_run = cycles * batch
    pool = new_rows(per_run * len(runs) * (rounds + 1), "status", state="PREPROCESSED")
    conn2 = conns["psycopg2"]
    with conn2.cursor() as cur:
        bulk.copy_jobs(cur, pool)
    conn2.commit()
    ids = [str(r["job_id"]) for r in pool]
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for r in range(rounds + 1):
        for label in _rotated(list(runs), r):
            mine, ids = ids[:per_run], ids[per_run:]
            conn, pipeline = runs[label]
            dt, done = status_cycles(conn, mine, batch, pipeline)
            assert done == per_run, f"{label}: {done} of {per_run} jobs reached RUN_DONE"
            if r:
                times[label].append(dt)
    return times


def claim_cycles(conn: Any, prepared: bool, cycles: int, limit: int) -> tuple[float, float]:
    """Time ``cycles`` claims of ``limit`` jobs (each committed), then release them untimed."""
    from balsam.core import leases, schema

    sid = _session(conn)
    t0 = clock()
    got = 0
    for _ in range(cycles):
        with conn.cursor() as raw:
            cur = _Prepared(raw) if prepared else raw
            got += len(leases.claim(cur, sid, limit, serial=True, max_nodes=1))
        conn.commit()
    dt = since(t0, cycles)
    assert got == cycles * limit, f"claimed {got} jobs, not {cycles * limit}"
    with conn.cursor() as cur:
        cur.execute(f"UPDATE {schema.JOB_TABLE} SET session_id = NULL WHERE session_id = %s", [sid])
    conn.commit()
    return dt


def bench_claims(conns: dict[str, Any], rounds: int, cycles: int, limit: int
                 ) -> dict[str, list[tuple[float, float]]]:
    from balsam.core import bulk

    conn2 = conns["psycopg2"]
    with conn2.cursor() as cur:
        bulk.copy_jobs(cur, new_rows(cycles * limit * 2, "claims", state="PREPROCESSED"))
    conn2.commit()
    runs = {"psycopg2": (conn2, False), "psycopg3": (conns["psycopg3"], False),
            "psycopg3 prepared": (conns["psycopg3-server"], True)}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for r in range(rounds + 1):
        for label in _rotated(list(runs), r):
            conn, prepared = runs[label]
            dt = claim_cycles(conn, prepared, cycles, limit)
            if r:
                times[label].append(dt)
    return times


def report(title: str, unit: str, scale: float, times: dict[str, list[tuple[float, float]]]
           ) -> None:
    """Median wall and client-CPU time per operation (times ``scale``, in ``unit``) of each
    variant, and its speed relative to the first (psycopg2): > 1 is faster."""
    print(f"\n{title} ({unit} per operation, median of {len(next(iter(times.values())))} rounds)")
    base_wall = base_cpu = 0.0
    for label, xs in times.items():
        wall = statistics.median(x[0] for x in xs) * scale
        cpu = statistics.median(x[1] for x in xs) * scale
        base_wall, base_cpu = (base_wall or wall), (base_cpu or cpu)
        spread = f"{min(x[0] for x in xs) * scale:.2f}-{max(x[0] for x in xs) * scale:.2f}"
        print(f"  {label:22s} wall {wall:8.2f} (range {spread:>13s})  client CPU {cpu:8.2f}   "
              f"speed vs psycopg2: wall {base_wall / wall:.2f}x, client CPU {base_cpu / cpu:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000, help="jobs per COPY (default 50000)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--cycles", type=int, default=100,
                        help="status flushes and claims per round (default 100)")
    parser.add_argument("--batch", type=int, default=32, help="jobs per status batch (default 32)")
    parser.add_argument("--claim", type=int, default=32, help="jobs per claim (default 32)")
    args = parser.parse_args()
    import psycopg
    import psycopg2

    print(machine_line())
    print(f"# psycopg2 {psycopg2.__version__.split()[0]}, psycopg {psycopg.__version__} "
          f"({psycopg.pq.__impl__} implementation, libpq {psycopg.pq.version()})")
    with throwaway_db() as path:
        conns = connections(path)
        try:
            copy = bench_copy(conns, args.n, args.rounds)
            orm = bench_orm(conns, path, args.n, args.rounds)
            truncate(conns["psycopg2"])
            status = bench_status(conns, args.rounds, args.cycles, args.batch)
            claims = bench_claims(conns, args.rounds, args.cycles, args.claim)
        finally:
            for conn in conns.values():
                conn.close()
    report(f"COPY of {args.n:,} jobs incl. validation, per job", "us", 1e6, copy)
    report(f"ORM bulk_create of {args.n:,} jobs, per job", "us", 1e6, orm)
    report(f"status flush: {args.batch} jobs to RUNNING + {args.batch} to RUN_DONE + commit",
           "ms", 1e3, status)
    report(f"claim of {args.claim} jobs + commit", "ms", 1e3, claims)
    print(f"\n# {os.getloadavg()[0]:.2f} load at the end")


if __name__ == "__main__":
    main()
