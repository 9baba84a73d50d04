"""One simulated run of ``bench_scale.py``: fill the DB, run the real master with simulated
workers (:func:`simulate`), check that every job ran exactly once (:func:`problems`); the
``--compare-with`` tree's DB (:func:`base_db`) and the master's child processes."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

from _scale_figures import backend_cpu, cluster_cpu, demand, peak_rss_mb, window_figures
from _scale_sim import SimWorkers

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_scale.py")


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
    subprocess.run([sys.executable, BENCH, "--fill", db_path, "--nodes",
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
           "demand": demand(nodes, slots, time_scale), "time_scale": time_scale}
    db.close()
    out.update(window_figures(channel.starts, channel.ends, nodes * slots, t0,
                              channel.last_work))
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

