"""The claimable-workflow triggers' cost on a bulk insert: the same COPY with them and without.

A throwaway DB; ``-n`` (default 100,000) claimable jobs in ``--workflows`` workflows (one or
more counts, default 50 and 50,000) are loaded by ``bulk.copy_jobs`` (one ``COPY``, committed)
into an emptied job table, ``--rounds`` times with the ``claimworkflow_*`` triggers enabled
("on") and disabled ("off", ``ALTER TABLE ... DISABLE TRIGGER``), alternated, first one of each
untimed. Printed per count: the median wall seconds and the server backend's CPU seconds
(``/proc/<pid>/stat``; the server is local) of each, and on/off. The rows are built once (their
Python cost is not timed). ``--compare-with SRC`` runs the same first with the balsam package of
source tree SRC (a ``git archive`` export of main: its triggers, before/after in one run).
Then, per count, each trigger's own ms on an ``INSERT ... SELECT`` of the same rows
(``EXPLAIN ANALYZE``, rolled back): the trigger's share without the swing of whole loads.

Run: ``python benchmarks/bench_claim_triggers.py [-n 100000] [--workflows 50 50000]
[--rounds 5] [--compare-with SRC]``
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _procs import rerun_with_source  # noqa: E402
from _throwaway import machine_line, throwaway_db  # noqa: E402
from bench_bulk_insert import backend_cpu, backend_pid  # noqa: E402

TRIGGERS = ("claimworkflow_insert", "claimworkflow_update", "claimworkflow_truncate")


def load(conn: Any, rows: list[Any], pid: int) -> tuple[float, float]:
    """(wall s, server CPU s) of one COPY of ``rows`` and its commit, into an emptied table."""
    from balsam.core import bulk, schema

    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE {schema.JOB_TABLE} CASCADE")
        cur.execute("TRUNCATE core_claimworkflow")
        conn.commit()
        cpu0, t0 = backend_cpu(pid), time.perf_counter()
        bulk.copy_jobs(cur, rows)
        conn.commit()
        return time.perf_counter() - t0, backend_cpu(pid) - cpu0


def trigger_times(conn: Any) -> str:
    """The job table's triggers' own ms on one ``INSERT ... SELECT`` of the rows just loaded
    (``EXPLAIN ANALYZE`` reports each trigger's time), into the emptied table, rolled back."""
    from balsam.core import schema

    with conn.cursor() as cur:
        cur.execute(f"CREATE TEMP TABLE staged ON COMMIT DROP AS SELECT * FROM {schema.JOB_TABLE}")
        cur.execute(f"TRUNCATE {schema.JOB_TABLE} CASCADE")
        cur.execute("TRUNCATE core_claimworkflow")
        cur.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) INSERT INTO {schema.JOB_TABLE} "
                    "SELECT * FROM staged")
        (doc,) = cur.fetchone()
    conn.rollback()
    plan = doc[0] if isinstance(doc, list) else __import__("json").loads(doc)[0]
    return ", ".join(f"{t['Trigger Name']} {t['Time']:.1f}" for t in plan.get("Triggers", []))


def set_triggers(conn: Any, on: bool) -> None:
    from balsam.core import schema

    with conn.cursor() as cur:
        for name in TRIGGERS:
            cur.execute(f"ALTER TABLE {schema.JOB_TABLE} "
                        f"{'ENABLE' if on else 'DISABLE'} TRIGGER {name}")
    conn.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--workflows", type=int, nargs="+", default=[50, 50_000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compare-with", metavar="SRC", default="",
                        help="first run the same with the balsam package of source tree SRC")
    args = parser.parse_args()
    if args.n < 1 or args.rounds < 1 or min(args.workflows) < 1:
        raise SystemExit("bench_claim_triggers: -n, --rounds and --workflows must be >= 1")
    if args.compare_with:
        rerun_with_source(args.compare_with, __file__)
    print(machine_line())
    with throwaway_db() as path:
        from balsam.core import schema
        from balsam.db.connect import connect

        conn = connect(path)
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, "
                        "preprocess, envscript, postprocess) VALUES ('app', '', 'true', '', '', '')")
            pid = backend_pid(cur)
        conn.commit()
        print(f"# {args.n:,} claimable jobs by one COPY, {args.rounds} rounds (+1 untimed) "
              "per mode, alternated; median wall s / server CPU s")
        for workflows in args.workflows:
            rows = [schema.new_job_row({"name": f"j{i}", "workflow": f"wf{i % workflows}",
                                        "application": "app", "state": "PREPROCESSED",
                                        "priority": i % 3, "wall_time_minutes": 1 + i % 60})
                    for i in range(args.n)]
            runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for k in range(args.rounds + 1):
                for on in ((True, False) if k % 2 else (False, True)):
                    set_triggers(conn, on)
                    wall, cpu = load(conn, rows, pid)
                    if k:
                        runs[on].append((wall, cpu))
            set_triggers(conn, True)
            print(f"# {workflows:,} workflows, INSERT ... SELECT of the same rows, the triggers' "
                  f"own ms (EXPLAIN ANALYZE): {trigger_times(conn)}", flush=True)
            on_w, off_w = (statistics.median(w for w, _ in runs[m]) for m in (True, False))
            on_c, off_c = (statistics.median(c for _, c in runs[m]) for m in (True, False))
            print(f"{workflows:>7,} workflows: on {on_w:.2f} s / {on_c:.2f} s CPU, off "
                  f"{off_w:.2f} s / {off_c:.2f} s CPU; on/off wall {on_w / off_w:.3f}, CPU "
                  f"{on_c / off_c:.3f} (on CPU by round: "
                  f"{', '.join(f'{c:.2f}' for _, c in runs[True])}; off: "
                  f"{', '.join(f'{c:.2f}' for _, c in runs[False])})", flush=True)
        print(machine_line())
        conn.close()


if __name__ == "__main__":
    main()
