"""Benchmark: stage-in of N small files for N jobs over SSH to localhost (issue 15).

A throwaway sshd on localhost (tests/sshd_support.py: fresh host and user keys, its own port)
serves a "remote" directory of N files of 100 bytes. In one run, alternating rounds:

A. **batched**: N jobs whose ``stage_in_url`` is ``rsync:HOST:/remote/fI``, advanced to READY,
   then transfer passes (``balsam.processing.transfers.step.TransferStep``) until every job is
   staged in (PREPROCESSED): item creation, the batch claim, one ``rsync --files-from`` per
   ``batch_items`` items, placing each file in its job's working directory, recording items and
   batches and moving the jobs -- everything the service does, database included;
B. **one transfer per job**: the classic path's copy, ``transfer.stage_in(url, workdir)`` (one
   rsync over its own SSH connection) per job, database writes NOT included (a lower bound of
   the old per-job cost);
C. **hand-written**: one ``rsync -a -r --files-from=LIST HOST:/ DEST/`` of the same files into
   one directory.

Printed: wall times, SSH connections (sshd's log) and the ratios B/A (goal >= 10) and A/C (goal
<= 2). Run: ``python benchmarks/bench_transfers.py [-n 1000] [--rounds 3]``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import sshd_support  # noqa: E402
from _throwaway import machine_line, throwaway_db  # noqa: E402

HOST = sshd_support.HOST


def _connect(db: str):
    from balsam.db import connect

    return connect.connect(db, "balsam-bench")


def _reset(conn, n: int, remote: str) -> list[str]:
    from balsam.core import bulk, schema
    from balsam.processing import transitions

    with conn.cursor() as cur:
        cur.execute(f"TRUNCATE {schema.JOB_TABLE}, {schema.EVENT_TABLE}, {schema.APP_TABLE}, "
                    f"{schema.TRANSFER_BATCH_TABLE} CASCADE")
        cur.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, preprocess, "
                    "envscript, postprocess) VALUES ('app', '', 'true', '', '', '')")
        rows = [schema.new_job_row({"workflow": "bench", "name": f"j{i}", "application": "app",
                                    "stage_in_url": f"rsync:{HOST}:{remote}/f{i}"})
                for i in range(n)]
        bulk.copy_jobs(cur, rows)
        transitions.advance(cur)
    conn.commit()
    shutil.rmtree(os.path.join(os.environ["BALSAM_DB_PATH"], "data"), ignore_errors=True)
    return [str(r["job_id"]) for r in rows]


def _ready(conn) -> int:
    from balsam.core import schema

    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {schema.JOB_TABLE} WHERE state = 'READY'")
        (n,) = cur.fetchone()
    conn.commit()
    return int(n)


def batched(db: str, conn, n: int, remote: str) -> float:
    from balsam.db import dbsettings
    from balsam.db.database import Database
    from balsam.processing.transfers.step import TransferStep

    _reset(conn, n, remote)
    session = Database(db, "balsam-bench-transfers")
    step = TransferStep(db, dbsettings.load(db))
    t0 = time.perf_counter()
    while _ready(conn) or step.busy():
        step.run_pass(session)
        step.wait(1.0)  # as the worker thread does: returns when a batch ends
    took = time.perf_counter() - t0
    step.close()
    session.close()
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM core_balsamjob WHERE state = 'PREPROCESSED'")
        (staged,) = cur.fetchone()
    conn.commit()
    if staged != n:
        sys.exit(f"batched: only {staged} of {n} jobs staged in")
    return took


def per_job(db: str, n: int, remote: str, config: str) -> float:
    from balsam.processing import transfer

    env = dict(os.environ, RSYNC_RSH=f"ssh -F {shlex.quote(config)}")
    base = tempfile.mkdtemp(prefix="per-job-", dir=db)
    t0 = time.perf_counter()
    for i in range(n):
        transfer.stage_in(f"rsync:{HOST}:{remote}/f{i}", os.path.join(base, f"j{i}"),
                          timeout=60, env=env)
    took = time.perf_counter() - t0
    shutil.rmtree(base)
    return took


def hand_written(db: str, n: int, remote: str, config: str) -> float:
    base = tempfile.mkdtemp(prefix="hand-", dir=db)
    listing = os.path.join(base, "list")
    with open(listing, "w") as fh:
        fh.write("".join(f"{remote.lstrip('/')}/f{i}\n" for i in range(n)))
    t0 = time.perf_counter()
    subprocess.run(["rsync", "-a", "-r", "-e", f"ssh -F {config}", f"--files-from={listing}",
                    f"{HOST}:/", os.path.join(base, "dest") + "/"], check=True, timeout=600)
    took = time.perf_counter() - t0
    shutil.rmtree(base)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="jobs, one file each (default 1000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-job", type=int, default=None, metavar="K",
                        help="time the per-job baseline on the first K jobs only and scale "
                             "it to n (default: all n; it makes one SSH connection per file)")
    args = parser.parse_args()
    print(machine_line())
    work = tempfile.mkdtemp(prefix="balsam-bench-ssh-", dir="/tmp")
    os.chmod(work, 0o755)
    try:
        server = sshd_support.start(os.path.join(work, "keys"))
    except sshd_support.Unavailable as exc:
        sys.exit(f"cannot run: {exc}")
    remote = os.path.join(work, "remote")
    os.mkdir(remote)
    for i in range(args.n):
        with open(os.path.join(remote, f"f{i}"), "w") as fh:
            fh.write(f"{i:>99}\n")
    try:
        with throwaway_db() as db:
            import yaml

            path = os.path.join(db, "settings.yml")
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
            data["transfers"] = {**(data.get("transfers") or {}),
                                 "ssh_config_file": server.config, "batch_items": 1000}
            with open(path, "w") as fh:
                yaml.safe_dump(data, fh)
            conn = _connect(db)
            k = min(args.per_job or args.n, args.n)
            times: dict[str, list[float]] = {"batched": [], "per-job": [], "hand": []}
            conns: dict[str, int] = {}
            for r in range(args.rounds):
                for name, fn in (("batched", lambda: batched(db, conn, args.n, remote)),
                                 ("hand", lambda: hand_written(db, args.n, remote, server.config)),
                                 ("per-job", lambda: per_job(db, k, remote, server.config) * args.n / k)):
                    if name == "per-job" and r > 0:
                        continue  # one round: it takes a connection per file
                    before = server.connections()
                    times[name].append(fn())
                    conns[name] = server.connections() - before
                    print(f"# round {r + 1} {name:<8} {times[name][-1]:8.2f} s "
                          f"{conns[name]:>5} SSH connection(s)", flush=True)
            conn.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"stage-in of {args.n} files for {args.n} jobs over SSH to localhost (medians)")
    print(f"  A batched (TransferStep, DB included)       {med['batched']:8.2f} s  "
          f"{args.n / med['batched']:8.0f} files/s  {conns['batched']} connection(s)")
    if k != args.n:
        print(f"  (B timed on {k} jobs, scaled to {args.n})")
    print(f"  B one rsync per job (no DB writes)          {med['per-job']:8.2f} s  "
          f"{args.n / med['per-job']:8.0f} files/s  {conns['per-job']} connection(s)")
    print(f"  C one hand-written rsync --files-from      {med['hand']:8.2f} s  "
          f"{args.n / med['hand']:8.0f} files/s  {conns['hand']} connection(s)")
    print(f"  B / A = {med['per-job'] / med['batched']:.1f}x faster batched (goal >= 10x)")
    print(f"  A / C = {med['batched'] / med['hand']:.2f}x the hand-written rsync (goal <= 2x)")
    print(machine_line())


if __name__ == "__main__":
    main()
