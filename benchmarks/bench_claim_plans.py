"""The claim's plan for each kind of launcher filter, generic vs custom, on a skewed database.

A throwaway DB gets ``--jobs`` jobs (default 1,000,000, written server-side by ``INSERT ...
SELECT generate_series``): 40% JOB_FINISHED history (incl. a workflow "idle" with no runnable
job), one big workflow "big" of runnable single-node jobs (tag site=main, 60 min),
``--small-workflows`` (default 200) small workflows "small<k>" sharing max(40,000, that many)
runnable jobs (30 min; campaigns of one workflow per parameter point; ``--small-first``:
priority 1, ahead in the claim order), a rare workflow "rare" of 10 runnable jobs (tag
campaign=rare, 5 min: last in the claim order) and 1,000 four-node MPI jobs. ``ANALYZE``.

For each filter kind the claim's own statement (``leases._claim_sql``, prepared as
``leases.claim`` prepares it) runs under ``EXPLAIN (ANALYZE, BUFFERS) EXECUTE`` two ways in a
transaction rolled back after each: with its generic plan (what ``leases.claim`` runs) and a
custom plan, alternated, ``--repeat`` times each. Printed: the median run's execution ms and
shared buffers (hit+read), its scans of the job table (rows read, filtered ones included), and
the wall ms of ``leases.claim`` itself (its refresh of the workflows' keys included). Then the
sweep's ``prune_workflows`` (ms) and, with ``--stale N``, three ``--wf small`` claims after an
unfiltered claim of N jobs left the stored keys of the workflows it emptied early.
``--compare-with SRC`` runs the same first with the balsam package of source tree SRC (a
``git archive`` export of main: before/after in one run, each on its own throwaway DB).
Usage: ``python benchmarks/bench_claim_plans.py [--jobs N] [--limit 125] [--small-workflows W]
[--stale N] [--compare-with SRC]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FILTERS: list[tuple[str, dict[str, Any]]] = [
    ("serial, no filter", dict(serial=True, max_nodes=1)),
    ("serial, --wf big (most jobs)", dict(serial=True, max_nodes=1, wf_filter="big")),
    ("serial, --wf small7 (200)", dict(serial=True, max_nodes=1, wf_filter="small7")),
    ("serial, --wf small (all small)", dict(serial=True, max_nodes=1, wf_filter="small")),
    ("serial, --wf rare (10)", dict(serial=True, max_nodes=1, wf_filter="rare")),
    ("serial, --wf idle (none runnable)", dict(serial=True, max_nodes=1, wf_filter="idle")),
    ("serial, --wf nosuch (no job)", dict(serial=True, max_nodes=1, wf_filter="nosuch")),
    ("serial, --tag site=main (most)", dict(serial=True, max_nodes=1, tags={"site": "main"})),
    ("serial, --tag campaign=rare (10)", dict(serial=True, max_nodes=1,
                                             tags={"campaign": "rare"})),
    ("serial, time left 10 min (10 fit)", dict(serial=True, max_nodes=1, max_wall_minutes=10.0)),
    ("serial, time left 120 min (all)", dict(serial=True, max_nodes=1, max_wall_minutes=120.0)),
    ("serial, --wf big + time 10 (0 fit)", dict(serial=True, max_nodes=1, wf_filter="big",
                                                max_wall_minutes=10.0)),
    ("serial, gpus 0", dict(serial=True, max_nodes=1, gpus_per_node=0)),
    ("serial, --wf rare + time + gpus", dict(serial=True, max_nodes=1, wf_filter="rare",
                                             max_wall_minutes=10.0, gpus_per_node=0)),
    ("mpi, 8 nodes, no filter", dict(serial=False, max_nodes=8)),
    ("mpi, 8 nodes, --wf rare", dict(serial=False, max_nodes=8, wf_filter="rare")),
    ("mpi, 8 nodes, --tag campaign=rare", dict(serial=False, max_nodes=8,
                                               tags={"campaign": "rare"})),
    ("mpi, 8 nodes, time left 10 min", dict(serial=False, max_nodes=8, max_wall_minutes=10.0)),
]


def populate(cur: Any, jobs: int, workflows: int = 200, small_first: bool = False
             ) -> dict[str, int]:
    """Write the skewed mix (see the module docstring); returns {part: rows}."""
    from balsam.core import schema

    job = schema.JOB_TABLE
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                "ORDER BY ordinal_position", [job])
    columns = [c for (c,) in cur.fetchall()]
    finished = jobs * 4 // 10
    small = max(200 * 200, workflows)
    parts = {"finished": finished - 1000, "idle": 1000, "small": small, "rare": 10,
             "mpi": 1000}
    parts["big"] = jobs - sum(parts.values())
    # part -> (state, workflow, wall minutes, tags, num_nodes)
    shape = {
        "finished": ("JOB_FINISHED", "'old' || g %% 100", 60, '{"site": "main"}', 1),
        "idle": ("JOB_FINISHED", "'idle'", 60, '{}', 1),
        "big": ("PREPROCESSED", "'big'", 60, '{"site": "main"}', 1),
        "small": ("PREPROCESSED", f"'small' || g %% {workflows}", 30, '{"site": "main"}', 1),
        "rare": ("PREPROCESSED", "'rare'", 5, '{"campaign": "rare"}', 1),
        "mpi": ("PREPROCESSED", "'mpiwf'", 60, '{}', 4),
    }
    for part, count in parts.items():
        state, wf, wall, tags, nodes = shape[part]
        changed = {"job_id": "gen_random_uuid()", "state": f"'{state}'", "workflow": wf,
                   "name": "'j' || g", "wall_time_minutes": str(wall),
                   "tags": f"'{tags}'::jsonb", "num_nodes": str(nodes),
                   "ranks_per_node": "1", "node_packing_count": "1",
                   "priority": "1" if small_first and part == "small" else "0",
                   "gpus_per_rank": "0", "session_id": "NULL"}
        values = ", ".join(changed.get(c, f"j.{c}") for c in columns)
        cur.execute(f"INSERT INTO {job} ({', '.join(columns)}) SELECT {values} "
                    f"FROM (SELECT * FROM {job} LIMIT 1) j, generate_series(1, %s) g", [count])
    cur.execute(f"DELETE FROM {job} WHERE name = 'template'")
    return parts


def explain(conn: Any, sid: int, limit: int, filt: dict[str, Any], mode: str
            ) -> tuple[float, int, str, int, int]:
    """(execution ms, shared buffers, the job table's scans (rows read, filtered ones
    included), rows claimed, WAL records: row locks and the update) of one claim under
    ``plan_cache_mode = mode``, rolled back."""
    from balsam.core import launcher_moves, leases, schema

    sql, params, _ = leases._claim_sql(sid, limit, **{"wf_filter": None, "max_wall_minutes": None,
                                                         "exclude_ids": (), **filt})
    text = f"WITH {sql} SELECT * FROM c_upd"
    name = leases._prepared_name("bench_claim", text)
    run, prepare = launcher_moves._prepared_texts(name, text)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = %s", [name])
        if not cur.fetchone()[0]:
            cur.execute(prepare.split("; EXECUTE")[0])
        cur.execute(f"SET LOCAL plan_cache_mode = {mode}")
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) " + run, params)
        plan = cur.fetchone()[0][0]
    conn.rollback()
    scans: dict[str, float] = {}  # the job table's scans but the update's: rows read

    def walk(node: dict[str, Any]) -> None:
        if node["Node Type"] == "ModifyTable":  # the update of the claimed rows
            return
        if node.get("Relation Name") == schema.JOB_TABLE:
            index = node.get("Index Name", "")
            label = f"{node['Node Type']} {index}".strip()
            scans[label] = scans.get(label, 0) + node["Actual Rows"] * node["Actual Loops"] + (
                node.get("Rows Removed by Filter", 0) * node["Actual Loops"])
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan["Plan"])
    buffers = plan["Plan"].get("Shared Hit Blocks", 0) + plan["Plan"].get("Shared Read Blocks", 0)
    return plan["Execution Time"], buffers, ", ".join(
        f"{k} ({v:,.0f} rows)" for k, v in scans.items()), plan["Plan"]["Actual Rows"], int(
        plan["Plan"].get("WAL Records", 0))


def timed_claim(conn: Any, sid: int, limit: int, filt: dict[str, Any]) -> float:
    """Wall ms of one ``leases.claim`` as a launcher calls it (its refresh of the workflows'
    keys included, after the claim statement), rolled back."""
    from balsam.core import leases

    with conn.cursor() as cur:
        t0 = time.perf_counter()
        leases.claim(cur, sid, limit, **filt)
        ms = (time.perf_counter() - t0) * 1e3
    conn.rollback()
    return ms


def stale_then_claims(conn: Any, sid: int, limit: int, stale: int) -> None:
    """An unfiltered claim of ``stale`` jobs (committed: the stored keys of the workflows it
    emptied or thinned are now early), then three committed ``--wf small`` claims: their
    wall ms (the first may read every matching workflow; it refreshes what it found stale)."""
    from balsam.core import leases

    with conn.cursor() as cur:
        leases.claim(cur, sid, stale, serial=True, max_nodes=1)
        conn.commit()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            got = leases.claim(cur, sid, limit, serial=True, max_nodes=1, wf_filter="small")
            times.append((time.perf_counter() - t0) * 1e3)
            conn.commit()
    print(f"# after an unfiltered claim of {stale:,}: three --wf small claims (leases.claim, "
          f"committed): {', '.join(f'{t:.1f}' for t in times)} ms (last got {len(got)})")


def timed_prune(conn: Any) -> None:
    """Wall ms of ``claim_sql.prune_workflows`` (what each sweep runs; before session 18 its
    lock was held from there to the sweep's commit; since, its refresh runs at the commit and is
    timed here directly), rolled back, median of 3."""
    try:
        from balsam.core import claim_sql
    except ImportError:
        return
    runs = []
    refresh = getattr(claim_sql, "refresh_workflows", None)
    for bucket in range(3):
        with conn.cursor() as cur:
            t0 = time.perf_counter()
            if refresh is None:  # before session 18: the prune's own statements
                claim_sql.prune_workflows(cur)
            else:  # its scan of the names and the refresh it queues for the commit, run here
                cur.execute(f"SELECT ARRAY(SELECT workflow FROM {claim_sql.WORKFLOWS_TABLE} "
                            f"WHERE hashtext(workflow) & {claim_sql.LOCK_BUCKETS - 1} = %s "
                            "LIMIT %s)", [bucket, claim_sql.PRUNE_BATCH])
                refresh(cur, cur.fetchone()[0])
            runs.append((time.perf_counter() - t0) * 1e3)
        conn.rollback()
    print(f"# prune_workflows: {sorted(runs)[1]:.1f} ms (median of 3: "
          f"{', '.join(f'{r:.1f}' for r in runs)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--limit", type=int, default=125)
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (median shown)")
    parser.add_argument("--small-workflows", type=int, default=200,
                        help="small workflows (one per parameter point)")
    parser.add_argument("--small-first", action="store_true",
                        help="the small workflows ahead in the claim order (priority 1)")
    parser.add_argument("--stale", type=int, default=0, metavar="N",
                        help="at the end, an unfiltered claim of N jobs, then three filtered")
    parser.add_argument("--compare-with", metavar="SRC", default="",
                        help="first run the same with the balsam package of source tree SRC")
    args = parser.parse_args()
    if args.small_workflows < 1 or args.limit < 1 or args.repeat < 1 or args.stale < 0:
        raise SystemExit("bench_claim_plans: --small-workflows, --limit and --repeat must be >= 1"
                         ", --stale >= 0")
    if args.compare_with:
        from _procs import rerun_with_source

        rerun_with_source(args.compare_with, __file__)
    from _throwaway import machine_line, throwaway_db

    from balsam.core import leases

    try:
        from balsam.core import claim_sql
    except ImportError:  # an older tree (--compare by PYTHONPATH): always generic
        claim_sql = None  # type: ignore[assignment]

    print(machine_line())
    with throwaway_db() as path:
        from balsam.core import bulk, schema
        from balsam.db.connect import connect

        conn = connect(path)
        cur = conn.cursor()
        cur.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, "
                    "preprocess, envscript, postprocess) VALUES ('noop', '', 'true', '', '', '')")
        bulk.copy_jobs(cur, [schema.new_job_row({"name": "template", "workflow": "t",
                                                 "application": "noop",
                                                 "state": "PREPROCESSED"})])
        t0 = time.perf_counter()
        parts = populate(cur, args.jobs, args.small_workflows, args.small_first)
        conn.commit()
        conn.autocommit = True
        cur.execute(f"VACUUM ANALYZE {schema.JOB_TABLE}")
        conn.autocommit = False
        print(f"# {args.jobs:,} jobs in {time.perf_counter() - t0:.0f} s: {json.dumps(parts)}")
        sid = leases.open_session(cur, hostname="bench", pid=os.getpid(), job_mode="serial",
                                  num_nodes=1, lease_seconds=3600)
        conn.commit()
        print(f"# claim of {args.limit}; ms = execution (EXPLAIN ANALYZE), buf = shared "
              "buffers hit+read; wal = WAL records (row locks, the update); r = the plan "
              "leases.claim runs (g generic, c custom)")
        print(f"{'filter':36} {'rows':>4} {'generic ms':>10} {'buf':>7} {'wal':>6} "
              f"{'custom ms':>9} {'buf':>7} {'claim()':>7} r  job table scans: generic | "
              "custom")
        for label, filt in FILTERS:
            runs: dict[str, list[tuple[float, int, str, int, int]]] = {"g": [], "c": []}
            for _ in range(args.repeat):  # alternated: neither mode always reads cold pages
                runs["g"].append(explain(conn, sid, args.limit, filt, "force_generic_plan"))
                runs["c"].append(explain(conn, sid, args.limit, filt, "force_custom_plan"))
            g, c = (sorted(runs[k])[len(runs[k]) // 2] for k in "gc")  # the median run
            calls = sorted(timed_claim(conn, sid, args.limit, filt) for _ in range(args.repeat))
            runs_as = "c" if getattr(claim_sql, "planned_per_call", lambda _: False)(
                filt.get("tags")) else "g"  # what leases.claim runs: generic or custom
            print(f"{label:36} {g[3]:>4} {g[0]:>10.2f} {g[1]:>7} {g[4]:>6} {c[0]:>9.2f} {c[1]:>7} "
                  f"{calls[len(calls) // 2]:>7.2f} {runs_as}  {g[2]} | "
                  f"{'same' if c[2] == g[2] else c[2]}")
        timed_prune(conn)
        if args.stale:
            stale_then_claims(conn, sid, args.limit, args.stale)
        print(machine_line())
        conn.close()


if __name__ == "__main__":
    main()
