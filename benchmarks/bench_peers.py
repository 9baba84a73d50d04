"""Benchmark: N no-op tasks through Balsam's serial launcher, Parsl and HyperQueue, vs xargs.

The same campaign (N `true` tasks) through each system, each beside `xargs -P <cores>` measured
in the same run.

Goal (issue 16): Balsam's ratio to xargs >= 3 x the best peer's ratio. Printed, not asserted.

Systems (``--only`` picks some; xargs is measured beside every one of them):

* ``balsam``: the jobs are inserted runnable into a throwaway DB and a real ``balsam launcher
  --consume-all --job-mode serial`` runs them, every state change recorded (the rounds of
  ``bench_launcher_serial.py``, whose helpers this script calls);
* ``parsl``: Parsl's HighThroughputExecutor on a LocalProvider (``cores`` workers), a
  ``bash_app`` running ``true``; ``parsl-monitoring``: the same with its MonitoringHub recording
  every task's states in an SQLite database (resource sampling off);
* ``hyperqueue``: HyperQueue's server and worker from its PyPI wheel
  (``hyperqueue.cluster.LocalCluster``, worker with ``cores`` cores) and ``hyperqueue.Client``,
  one job of N program tasks. Its client's ``wait_for_jobs`` polls (a one-task job takes ~1 s), so
  its last task ended up to one poll before the client saw it: its row is followed by its
  best case (time less one measured one-task round trip; end to end, less two: the warm-up
  job's wait too), and the best case is what the goal line compares with.

Peers are optional (``pip install '.[peers]'``): one that cannot be imported is named and
skipped. Each peer run is a process of its own (``_peers.py``).

Rates: ``run`` = N / (last task done - start of the run with the system already up: Balsam's
first RUNNING event; a peer's submission of the first of the N tasks, after one warm-up task
has run so its workers are connected); ``end-to-end`` = N / (last task done - start from
nothing: Balsam's insert of the N jobs plus launcher start-up; a peer's interpreter start,
import, start of its executor or cluster and warm-up task). xargs runs ``seq N | xargs -P
<cores> -n 1 true``. For each system, each round runs xargs and the system one after the other,
in alternating order from round to round; a ratio is the median over rounds of the system's
rate divided by the rate of the xargs run beside it in that round (the load of a shared machine
drifts: neighbours in time share it best).

Run: ``python benchmarks/bench_peers.py [--tasks 2000] [--rounds 3] [--only balsam,parsl,...]``
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _throwaway import machine_line, throwaway_db  # noqa: E402
from bench_launcher_serial import fill, launcher_round, settings, xargs_round  # noqa: E402

SYSTEMS = ("balsam", "parsl", "parsl-monitoring", "hyperqueue")
LABELS = {"xargs": "xargs -P {cores}", "balsam": "Balsam serial launcher",
          "parsl": "Parsl HTEX bash_app", "parsl-monitoring": "Parsl HTEX + monitoring DB",
          "hyperqueue": "HyperQueue LocalCluster"}
# What a peer needs importable (parsl's monitoring needs sqlalchemy: parsl[monitoring]).
PEER_IMPORTS = {"parsl": ("parsl.executors",), "parsl-monitoring": ("parsl.monitoring.db_manager",),
                "hyperqueue": ("hyperqueue.cluster",)}
PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_peers.py")


class PeerFailed(Exception):
    """A peer's run did not finish all its tasks."""


def unavailable(system: str) -> str | None:
    """Why ``system`` cannot run here, or None."""
    for module in PEER_IMPORTS.get(system, ()):
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure means skip the peer
            return f"cannot import {module}: {type(exc).__name__}: {exc}".splitlines()[0]
    return None


def version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def peer_round(system: str, count: int, cores: int) -> dict[str, float]:
    """One run of ``system`` in its own process; its rates (see the module docstring)."""
    workdir = tempfile.mkdtemp(prefix="balsam-bench-peer-", dir="/tmp")
    env = dict(os.environ, TQDM_DISABLE="1")
    started = time.time()
    try:
        proc = subprocess.run([sys.executable, PEER_SCRIPT, system, str(count), str(cores),
                               workdir], capture_output=True, text=True, timeout=900, env=env)
    except subprocess.TimeoutExpired as exc:
        raise PeerFailed(f"{system} did not finish in {exc.timeout:.0f} s") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("{"):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PeerFailed(f"{system} exited {proc.returncode}: {tail}")
    times = json.loads(lines[-1])
    rates = {"run": count / (times["done"] - times["ready"]),
             "e2e": count / (times["done"] - started)}
    # Best case: the last task ended one client poll before the client saw it, and (end to
    # end) the warm-up job's wait was one poll of nothing. Only for runs of several polls: a
    # run within one or two polls bounds nothing.
    if "poll" in times and times["done"] - times["ready"] > 2 * times["poll"]:
        rates["best_run"] = count / (times["done"] - times["ready"] - times["poll"])
        rates["best_e2e"] = count / (times["done"] - started - 2 * times["poll"])
        rates["poll"] = times["poll"]
    return rates


def balsam_round(db_path: str, count: int, cores: int) -> dict[str, float]:
    """Insert ``count`` runnable jobs and run them with the serial launcher."""
    t0 = time.perf_counter()
    fill(db_path, count, cores)
    insert = time.perf_counter() - t0
    rates = launcher_round(db_path, count)
    return {"run": rates["run"], "e2e": count / (insert + count / rates["e2e"])}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per run (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--only", default=",".join(SYSTEMS),
                        help="comma-separated systems among " + ", ".join(SYSTEMS)
                        + " (xargs is always measured; naming it alone measures only xargs)")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SYSTEMS + ("xargs",)]
    if unknown or not names:
        parser.error(f"--only: unknown system {', '.join(unknown) or '(none given)'}; "
                     f"choose among {', '.join(SYSTEMS + ('xargs',))}")
    if args.tasks < 1 or args.rounds < 1:
        parser.error("--tasks and --rounds must be at least 1")
    args.systems = [s for s in SYSTEMS if s in names]
    return args


def measure(args: argparse.Namespace, cores: int) -> tuple[dict[str, list], dict[str, list]]:
    """Run the rounds; per system its rates and the xargs rates measured beside it."""
    results: dict[str, list] = {s: [] for s in args.systems}
    beside: dict[str, list] = {s: [] for s in args.systems}
    beside["xargs"] = []
    with ExitStack() as stack:
        if "balsam" in args.systems:
            db_path = stack.enter_context(throwaway_db())
            settings(db_path, 1)
        for r in range(1, args.rounds + 1):
            if not args.systems:
                beside["xargs"].append(xargs_round(args.tasks, cores)[0])
                print(f"round {r} xargs: {beside['xargs'][-1]:7.0f} processes/s", flush=True)
            for i, system in enumerate(list(args.systems)):
                for step in (("xargs", system) if (r + i) % 2 else (system, "xargs")):
                    if step == "xargs":
                        beside[system].append(xargs_round(args.tasks, cores)[0])
                        print(f"round {r} xargs beside {system}: {beside[system][-1]:7.0f} "
                              "processes/s", flush=True)
                        continue
                    try:
                        rates = (balsam_round(db_path, args.tasks, cores) if system == "balsam"
                                 else peer_round(system, args.tasks, cores))
                    except PeerFailed as exc:
                        print(f"round {r} {system}: FAILED ({exc}); skipped from now on",
                              flush=True)
                        args.systems.remove(system)
                        break
                    results[system].append(rates)
                    print(f"round {r} {system}: {rates['run']:7.0f} tasks/s run, "
                          f"{rates['e2e']:7.0f} tasks/s end-to-end", flush=True)
    return results, beside


def report(results: dict[str, list], beside: dict[str, list], cores: int) -> None:
    all_xargs = [x for xs in beside.values() for x in xs]
    print(f"\n{'system':28} {'run/s':>7} {'x xargs':>8} {'e2e/s':>7} {'x xargs':>8}  "
          "(xargs beside, median)")
    if all_xargs:
        print(f"{LABELS['xargs'].format(cores=cores):28} {statistics.median(all_xargs):7.0f} "
              f"{1:8.2f} {statistics.median(all_xargs):7.0f} {1:8.2f}  (all xargs runs)")
    ratios: dict[str, dict[str, float]] = {}
    for system, runs in results.items():
        if not runs:
            continue
        base = statistics.median(beside[system])
        med = {k: statistics.median(m[k] for m in runs) for k in ("run", "e2e")}
        ratios[system] = {k: statistics.median(m[k] / x for m, x in zip(runs, beside[system]))
                          for k in med}
        print(f"{LABELS[system]:28} {med['run']:7.0f} {ratios[system]['run']:8.2f} "
              f"{med['e2e']:7.0f} {ratios[system]['e2e']:8.2f}  ({base:.0f}/s)")
        if system == "hyperqueue" and not all("poll" in m for m in runs):
            print("  (no best case: a run took less than two client polls)")
        elif system == "hyperqueue":
            best = {k: statistics.median(m[f"best_{k}"] / x for m, x in zip(runs, beside[system]))
                    for k in ("run", "e2e")}
            rate = {k: statistics.median(m[f"best_{k}"] for m in runs) for k in ("run", "e2e")}
            poll = statistics.median(m["poll"] for m in runs)
            print(f"{'  best case (-' + format(poll, '.2f') + ' s poll)':28} {rate['run']:7.0f} "
                  f"{best['run']:8.2f} {rate['e2e']:7.0f} {best['e2e']:8.2f}")
            ratios[system] = best
    peers = {s: r for s, r in ratios.items() if s != "balsam"}
    if "balsam" in ratios and peers:
        for key, name in (("run", "run"), ("e2e", "end-to-end")):
            leader = max(peers, key=lambda s: peers[s][key])
            print(f"Balsam ratio / best peer's ratio ({name}): "
                  f"{ratios['balsam'][key] / peers[leader][key]:.2f}  (best peer: "
                  f"{LABELS[leader]}; goal >= 3)")


def main() -> None:
    args = parse_args()
    cores = os.cpu_count() or 1
    # The launcher's mpiexec and Parsl's interchange.py are scripts beside this interpreter.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    for system in list(args.systems):
        reason = unavailable(system)
        if reason:
            print(f"# {system}: skipped ({reason}; pip install '.[peers]')")
            args.systems.remove(system)
    print(machine_line())
    print(f"# {args.tasks} x true, {args.rounds} round(s), {cores} workers/slots each; "
          f"parsl {version('parsl')}, hyperqueue {version('hyperqueue')}", flush=True)
    results, beside = measure(args, cores)
    report(results, beside, cores)


if __name__ == "__main__":
    main()
