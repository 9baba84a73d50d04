"""Benchmark: what an idle launcher costs the shared database, and how fast it still reacts.

Issue 16, session 20: a launcher with nothing to run (``--persistent``, or staying while
another launcher holds work) shares its user's PostgreSQL server with other launchers, the
service and the CLI. For each job mode (``--modes serial mpi``) a real ``balsam launcher
--consume-all --persistent`` runs against a throwaway DB whose server logs every statement
(:mod:`_statement_log`): once it is up and has settled, its transactions during
``--idle-seconds`` are counted by ``application_name`` (the launcher, the serial master, the
transition and transfer workers), with the statements that made them. Then its reaction
(``--tries`` times, ``--settle`` seconds of idling before each, medians):

* ``new job``: a runnable job (PREPROCESSED, ``/bin/true``) inserted -> its RUNNING event;
  (with ``--launchers N``, N idle launchers at once, their transactions added up; with
  ``--held N``, a session of the script holds N runnable jobs claimed and never started and
  the launchers are not persistent: they stay, idle, for work they could be given; with
  ``--busy-neighbour N``, they take only workflow ``idle`` and, once up, a neighbour launcher
  runs N ``true`` jobs of another workflow: only the idle launchers' connections are counted);
* ``child``: a parent (runnable) and its child (CREATED, one dependency) inserted; the
  launcher runs the parent -> from the parent's JOB_FINISHED event to the child's RUNNING
  (processing checks the parent, the child is claimed and started).

``--compare-with SRC`` runs the same on the Balsam of another source tree (first on
``PYTHONPATH``, its DB made by its own migrations: ``git archive main | tar -x -C /tmp/base``):
before/after from one run, under the same load (printed: the load average).

Run: ``python benchmarks/bench_idle.py [--modes serial mpi] [--idle-seconds 20] [--tries 5]
[--compare-with SRC]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _procs import family  # noqa: E402
from _statement_log import StatementLog, wait_until  # noqa: E402
from _throwaway import machine_line, throwaway_db  # noqa: E402

TRUE = "/usr/bin/true" if os.path.exists("/usr/bin/true") else "/bin/true"
SETTLE_UP_SECONDS = 4.0
"""After its parts are up, the launcher settles this long before the idle window opens."""


def prepare(db_path: str) -> None:
    """One emulated node, the launcher's default tunables, one app running ``true``."""
    import yaml

    from balsam.core import schema
    from balsam.db.connect import connect

    path = os.path.join(db_path, "settings.yml")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    data["local_nodes"] = 1
    data.pop("launcher", None)  # a --compare-with tree may lack newer keys
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh)
    conn = connect(db_path)
    with conn, conn.cursor() as cur:
        cur.execute(f"DELETE FROM {schema.APP_TABLE} WHERE name = 'noop'")
        cur.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, preprocess, "
                    "envscript, postprocess) VALUES ('noop', '', %s, '', '', '')", [TRUE])
    conn.close()


def hold(conn: Any, count: int) -> None:
    """A session of this script's holds ``count`` runnable jobs claimed and never started (as a
    busy launcher holds work queued behind its running tasks)."""
    from balsam.core import leases

    insert(conn, [{"name": f"held{i}", "state": "PREPROCESSED"} for i in range(count)])
    with conn.cursor() as cur:
        holder = leases.open_session(cur, hostname="bench", pid=1, job_mode="serial",
                                     num_nodes=1, lease_seconds=3600)
        leases.claim(cur, holder, count, serial=True, max_nodes=1)
    conn.commit()


def start_launcher(db_path: str, mode: str, source: str, persistent: bool,
                   wf: str = "") -> subprocess.Popen:
    env = dict(os.environ, BALSAM_DB_PATH=db_path)
    if source:
        env["PYTHONPATH"] = source
    return subprocess.Popen(
        [sys.executable, "-m", "balsam", "launcher"]
        + (["--wf-filter", wf] if wf else ["--consume-all"])
        + (["--persistent"] if persistent else []) + ["--job-mode", mode], env=env,
        cwd=source or None, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def stop_launcher(proc: subprocess.Popen) -> None:
    """SIGTERM its session, wait (30 s), then SIGKILL whatever of its family is left."""
    import signal

    start = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[19]
    members = family(proc.pid, start)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pid in family(proc.pid, start) or members:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def backends(conn: Any) -> set[int]:
    """The server processes of every Balsam connection now."""
    with conn.cursor() as cur:
        cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'balsam-%'")
        pids = {int(r[0]) for r in cur.fetchall()}
    conn.commit()
    return pids


def apps_up(conn: Any, mode: str) -> bool:
    wanted = {"balsam-transitions", "balsam-transfers"} | (
        {"balsam-serial-master"} if mode == "serial" else {"balsam-launcher"})
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT application_name FROM pg_stat_activity")
        names = {r[0] for r in cur.fetchall()}
    conn.commit()  # (a transaction sees one snapshot of the activity)
    return wanted <= names


def insert(conn: Any, specs: list[dict[str, Any]], edges: list[tuple[int, int]] = ()) -> list[str]:
    from balsam.core import bulk, schema

    rows = [schema.new_job_row({"workflow": "idle", "application": "noop", **s}) for s in specs]
    with conn.cursor() as cur:
        bulk.copy_jobs(cur, rows)
        for parent, child in edges:
            cur.execute(f"INSERT INTO {schema.DEP_TABLE} (parent_id, child_id) VALUES (%s, %s)",
                        [str(rows[parent]["job_id"]), str(rows[child]["job_id"])])
    conn.commit()
    return [str(r["job_id"]) for r in rows]


def busy_started(conn: Any) -> bool:
    from balsam.core import schema

    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE workflow = 'busy' "
                    "AND state <> 'PREPROCESSED'")
        started = cur.fetchone()[0] > 0
    conn.commit()
    return started


def event_time(conn: Any, job_id: str, state: str) -> Any:
    from balsam.core import schema

    with conn.cursor() as cur:
        cur.execute(f"SELECT extract(epoch FROM min(timestamp)) FROM {schema.EVENT_TABLE} "
                    "WHERE job_id = %s AND to_state = %s", [job_id, state])
        found = cur.fetchone()[0]
    conn.commit()
    return None if found is None else float(found)


def await_event(conn: Any, job_id: str, state: str, what: str) -> float:
    """The epoch time of the job's first event into ``state``, waiting for it up to 30 s."""
    return float(wait_until(what, lambda: event_time(conn, job_id, state), 30.0))


def reactions(conn: Any, tries: int, settle: float) -> dict[str, list[float]]:
    """Seconds from new work to RUNNING, ``tries`` times each (see the module docstring)."""
    out: dict[str, list[float]] = {"new job": [], "child": []}
    for i in range(tries):
        time.sleep(settle)  # idling again (its looks back off) before the work comes
        (job,) = insert(conn, [{"name": f"new{i}", "state": "PREPROCESSED"}])
        inserted = time.time()
        out["new job"].append(await_event(conn, job, "RUNNING", "the new job's RUNNING")
                              - inserted)
        await_event(conn, job, "JOB_FINISHED", "the new job's end")
        time.sleep(settle)
        parent, child = insert(conn, [{"name": f"p{i}", "state": "PREPROCESSED"},
                                      {"name": f"c{i}", "state": "CREATED"}], [(0, 1)])
        finished = await_event(conn, parent, "JOB_FINISHED", "the parent's end")
        out["child"].append(await_event(conn, child, "RUNNING", "the child's RUNNING")
                            - finished)
        await_event(conn, child, "JOB_FINISHED", "the child's end")
    return out


def one_side(db_path: str, mode: str, source: str, args: argparse.Namespace) -> dict[str, Any]:
    from balsam.db.connect import connect

    prepare(db_path)
    conn = connect(db_path, "bench-idle")
    with StatementLog(db_path) as log:
        if args.held:
            hold(conn, args.held)
        wf = "idle" if args.busy_neighbour else ""
        procs = [start_launcher(db_path, mode, source, not args.held, wf)
                 for _ in range(args.launchers)]
        try:
            wait_until(f"the {mode} launcher's connections", lambda: apps_up(conn, mode), 60.0)
            time.sleep(SETTLE_UP_SECONDS)
            ours = backends(conn) if args.busy_neighbour else None
            if args.busy_neighbour:
                insert(conn, [{"name": f"b{i}", "workflow": "busy", "state": "PREPROCESSED"}
                              for i in range(args.busy_neighbour)])
                procs.append(start_launcher(db_path, mode, source, False, "busy"))
                wait_until("the neighbour's first RUNNING", lambda: busy_started(conn), 60.0)
            start = time.time()
            time.sleep(args.idle_seconds)
            window = log.between(start, time.time(), ours)
            react = reactions(conn, args.tries, args.settle)
        finally:
            for proc in procs:
                stop_launcher(proc)
            conn.close()
    return {"window": window, "react": react}


def report(name: str, mode: str, launchers: int, held: str, result: dict[str, Any]) -> None:
    window = result["window"]
    held = f", {held}" if held else ""
    apps = [a for a in window.apps() if a.startswith("balsam-")]
    total = sum(window.per_second(a) for a in apps)
    print(f"== {name}, {mode} mode, {launchers} launcher(s){held}: idle {total:.2f} "
          f"transactions/s "
          f"({window.seconds:.0f} s window)")
    for app in apps:
        print(f"   {app:24s} {window.per_second(app):6.2f} tx/s")
        for kind, n in window.statements[app].most_common():
            if kind not in ("BEGIN", "COMMIT"):
                print(f"        {n / window.seconds:6.2f}/s  {kind}")
    for what, times in result["react"].items():
        print(f"   reaction, {what:8s}: median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}, {len(times)} tries)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=("serial", "mpi"), default=["serial", "mpi"])
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--tries", type=int, default=5, help="reactions of each kind")
    parser.add_argument("--held", type=int, default=0,
                        help="a session of this script holds this many runnable jobs claimed and "
                             "not started; the launchers run without --persistent (they stay "
                             "for work they could be given: a campaign's tail; serial mode)")
    parser.add_argument("--busy-neighbour", type=int, default=0, metavar="N",
                        help="once the launchers idle (--wf-filter idle), a neighbour launcher "
                             "runs N `true` jobs of another workflow; only the idle launchers' "
                             "connections are counted (make the window shorter than its run)")
    parser.add_argument("--launchers", type=int, default=1,
                        help="idle launchers at once on the DB (default 1; counted together)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="idle seconds before each piece of new work (default 3)")
    parser.add_argument("--compare-with", metavar="SRC", default="",
                        help="also run the Balsam of this source tree, for a same-run before/after")
    args = parser.parse_args()
    from bench_scale import base_db

    print(machine_line())
    sides = {"this tree": ""}
    if args.compare_with:
        sides = {args.compare_with: os.path.abspath(args.compare_with), "this tree": ""}
    with throwaway_db() as db_path, base_db(sides.get(args.compare_with)) as base_path:
        paths = {"": db_path, os.path.abspath(args.compare_with or "."): base_path}
        for mode in args.modes:
            for name, source in sides.items():
                result = one_side(paths[source], mode, source, args)
                extra = (f"{args.held} jobs held elsewhere" if args.held else
                         f"a neighbour running {args.busy_neighbour} jobs"
                         if args.busy_neighbour else "")
                report(name, mode, args.launchers, extra, result)
            print(machine_line())


if __name__ == "__main__":
    main()
