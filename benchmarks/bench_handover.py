"""Benchmark: how long queued work takes to move from a busy serial launcher to an idle one
(issue 16, session 20), with two real launchers on one throwaway DB, and the statements an idle
launcher costs while it waits for such work.

Each round: ``--jobs`` jobs (``sleep --seconds``, one per node) are inserted; launcher A (one
node, one slot) claims them all (its prefetch: 4 a slot), runs one and queues the rest; then
launcher B starts on an empty claim. B publishes its idle slot (``idle_slots`` on its session
row), A gives one queued job back (released: a job never started held by no session or by B),
B claims and runs it. The benchmark polls the rows every 2 ms
and prints, per round, the seconds from B's session row to its idle slot being published, from
the publish to the release of the given job, from the release to its RUNNING event (the
server's clock), and from the publish to that RUNNING; medians at the end. Both launchers are
then stopped (SIGTERM to their own process sessions).

Then the idle load: a session opened here holds ``--jobs`` jobs claimed and never started, and
B starts alone; once B idles (its slot published), the DB's transactions are counted over
``--idle-window`` seconds (``pg_stat_database``, this script's own reads subtracted).

Run: ``python benchmarks/bench_handover.py [--rounds 5] [--jobs 4] [--seconds 3]
[--compare-with SRC]`` (SRC: another source tree, run first on a DB made by its own migrations).
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _procs import end_session, rerun_with_source, start_of  # noqa: E402
from _throwaway import machine_line, throwaway_db  # noqa: E402

POLL_SECONDS = 0.002


def settings(db_path: str) -> None:
    import yaml

    path = os.path.join(db_path, "settings.yml")
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    data["local_nodes"] = 1
    data.pop("launcher", None)  # the defaults (an older tree refuses keys it lacks)
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh)


def fill(cur: Any, jobs: int, seconds: float) -> list[str]:
    from balsam.core import bulk, schema

    cur.execute(f"TRUNCATE {schema.EVENT_TABLE}, {schema.DEP_TABLE}, {schema.JOB_TABLE}, "
                f"{schema.APP_TABLE}, {schema.SESSION_TABLE} CASCADE")
    cur.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, preprocess, "
                "envscript, postprocess) VALUES ('sleep', '', '/bin/sleep', '', '', '')")
    rows = [schema.new_job_row({"name": f"s{i}", "workflow": "bench", "application": "sleep",
                                "args": f"{seconds:g}", "state": "PREPROCESSED",
                                "node_packing_count": 1}) for i in range(jobs)]
    bulk.copy_jobs(cur, rows)
    return [str(row["job_id"]) for row in rows]


class Launcher:
    """``balsam launcher`` in a process session of its own (ended by :meth:`stop`)."""

    def __init__(self, db_path: str) -> None:
        argv = [sys.executable, "-m", "balsam", "launcher", "--consume-all", "--job-mode",
                "serial"]
        self.proc = subprocess.Popen(argv, env=dict(os.environ, BALSAM_DB_PATH=db_path),
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, start_new_session=True, text=True,
                                     cwd=db_path)  # (`-m`: the working directory comes first
        # on the path; there the tree on PYTHONPATH decides, with --compare-with the older one)
        self.start = start_of(self.proc.pid)
        self.started = time.time()

    def session(self) -> int:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "... session N, log PATH"
        if ", session " not in line:
            raise SystemExit(f"the launcher did not start: {line!r}")
        return int(line.split(", session ", 1)[1].split(",", 1)[0])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        finally:
            end_session(self.proc.pid, 5.0, self.start)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def poll(cur: Any, what: str, query: str, params: list[Any], timeout: float = 60.0) -> Any:
    """The first row of ``query`` once it has a true first column (polled every 2 ms)."""
    end = time.monotonic() + timeout
    while True:
        cur.execute(query, params)
        row = cur.fetchone()
        if row is not None and row[0]:
            return row
        if time.monotonic() > end:
            raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL_SECONDS)


def handover_round(conn: Any, db_path: str, jobs: int, seconds: float) -> dict[str, float]:
    """One hand-over (see the module docstring): seconds per phase."""
    from balsam.core import schema

    job, session, event = schema.JOB_TABLE, schema.SESSION_TABLE, schema.EVENT_TABLE
    cur = conn.cursor()
    fill(cur, jobs, seconds)
    a = Launcher(db_path)
    b: Optional[Launcher] = None
    try:
        sid_a = a.session()
        poll(cur, "A to hold every job, one running", f"SELECT count(*) = %s AND "
             f"count(*) FILTER (WHERE state = 'RUNNING') = 1 FROM {job} WHERE session_id = %s",
             [jobs, sid_a])
        b = Launcher(db_path)
        sid_b = b.session()
        (born,) = poll(cur, "B's session", f"SELECT extract(epoch FROM started_at) FROM "
                       f"{session} WHERE id = %s", [sid_b])
        poll(cur, "B to publish its idle slot", f"SELECT idle_slots > 0 FROM {session} "
             "WHERE id = %s", [sid_b])
        published = time.time()
        poll(cur, "A to give a job back", f"SELECT count(*) > 0 FROM {job} WHERE state = "
             "'PREPROCESSED' AND (session_id IS NULL OR session_id = %s)", [sid_b])
        released = time.time()
        (running,) = poll(cur, "the given job to run on B", f"SELECT extract(epoch FROM "
                          f"min(e.timestamp)) FROM {event} e JOIN {job} j USING (job_id) "
                          "WHERE j.session_id = %s AND e.to_state = 'RUNNING'", [sid_b])
    finally:
        for launcher in (a, b):
            if launcher is not None:
                launcher.stop()
        cur.close()
    return {"publish": published - float(born), "give": released - published,
            "claim_run": float(running) - released, "total": float(running) - published}


def transactions(cur: Any) -> int:
    cur.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                "WHERE datname = current_database()")
    return int(cur.fetchone()[0])


def idle_load(conn: Any, db_path: str, jobs: int, window: float) -> float:
    """Transactions per second on the DB while launcher B idles and another session holds
    work queued (claimed, not started)."""
    from balsam.core import leases, schema

    cur = conn.cursor()
    fill(cur, jobs, 1.0)
    holder = leases.open_session(cur, hostname="bench", pid=1, job_mode="serial", num_nodes=1,
                                 lease_seconds=600)
    leases.claim(cur, holder, jobs, serial=True, max_nodes=1)
    b = Launcher(db_path)
    try:
        sid = b.session()
        poll(cur, "B to publish its idle slot", f"SELECT idle_slots > 0 FROM "
             f"{schema.SESSION_TABLE} WHERE id = %s", [sid])
        time.sleep(1.5)  # its start-up statements are behind it
        cur.execute("SELECT pg_stat_clear_snapshot()")
        before, t0 = transactions(cur), time.monotonic()
        time.sleep(window)
        cur.execute("SELECT pg_stat_clear_snapshot()")
        after, t1 = transactions(cur), time.monotonic()
        alive = b.proc.poll() is None
    finally:
        b.stop()
        cur.close()
    if not alive:
        print("# (launcher B exited during the idle window)")
    return (after - before - 2) / (t1 - t0)  # (the snapshot clear and the first read)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=4, help="jobs per round (default 4)")
    parser.add_argument("--seconds", type=float, default=3.0, help="each job's sleep")
    parser.add_argument("--idle-window", type=float, default=5.0)
    parser.add_argument("--compare-with", metavar="SRC", default="")
    args = parser.parse_args()
    if args.compare_with:
        rerun_with_source(args.compare_with, __file__)
    print(machine_line())
    from balsam.db.connect import connect

    with throwaway_db() as db_path:
        settings(db_path)
        conn = connect(db_path, autocommit=True)
        try:
            rounds = []
            for r in range(1, args.rounds + 1):
                rounds.append(handover_round(conn, db_path, args.jobs, args.seconds))
                m = rounds[-1]
                print(f"round {r}: B's session to its idle slot published {m['publish']:.3f} s, "
                      f"publish to release {m['give']:.3f} s, release to RUNNING on B "
                      f"{m['claim_run']:.3f} s; publish to RUNNING {m['total']:.3f} s",
                      flush=True)
            med = {k: statistics.median(m[k] for m in rounds) for k in rounds[0]}
            print(f"median of {args.rounds}: session to publish {med['publish']:.3f} s, publish "
                  f"to release {med['give']:.3f} s, release to RUNNING {med['claim_run']:.3f} s, "
                  f"publish to RUNNING {med['total']:.3f} s")
            rate = idle_load(conn, db_path, args.jobs, args.idle_window)
            print(f"idle launcher, work queued in another session: {rate:.1f} transactions/s "
                  f"on the DB over {args.idle_window:g} s; load {os.getloadavg()[0]:.2f}")
        finally:
            conn.close()


if __name__ == "__main__":
    main()
