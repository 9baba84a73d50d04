"""Benchmark: N no-op tasks through Balsam, Parsl and HyperQueue, each beside a baseline.

Two campaigns, each a table:

* ``shell``: N (``--tasks``, 2,000) ``true`` tasks; baseline ``xargs -P <cores>``. Goal
  (issue 16): Balsam's ratio to xargs >= 3 x the best peer's ratio.
* ``function``: N (``--fn-tasks``, 1,000 as in ``bench_pyfunc.py``: HyperQueue starts an
  interpreter per call, a few per second on this machine) calls of a no-op Python function
  ``noop(i)``; baseline ``multiprocessing.Pool(<cores>).map``. Goal (issue 14): Balsam's rate
  >= 1.5 x Parsl HTEX's.

Printed, not asserted. Systems (``--only`` picks some; the baseline is measured in every round):

* ``balsam``: shell: the jobs are inserted runnable into a throwaway DB and a real ``balsam
  launcher --consume-all --job-mode serial`` runs them, every state change recorded (the rounds
  of ``bench_launcher_serial.py``); function: N jobs of a site app ``def run(self, i): return
  i`` created with ``balsam.api.Job.objects.bulk_create`` and run by the same launcher with its
  warm workers, every state and return value recorded and every result read back and checked
  (the rounds of ``bench_pyfunc.py``). Both call those scripts' helpers;
* ``parsl``: Parsl's HighThroughputExecutor on a LocalProvider (``cores`` workers): a
  ``bash_app`` running ``true``, or a ``python_app`` calling ``noop(i)`` (results checked);
  ``parsl-monitoring`` (shell only): the same with its MonitoringHub recording every task's
  states in an SQLite database (resource sampling off);
* ``hyperqueue``: HyperQueue's server and worker from its PyPI wheel (``LocalCluster``, worker
  with ``cores`` cores) and its ``Client``: one job of N program tasks, or of N ``Job.function``
  tasks (each a new interpreter; no return value kept). Its client polls about once a second,
  so its row is followed by its best case (less one measured one-task round trip; end to end,
  less two), which the goal line uses.

Peers are optional (``pip install '.[peers]'``): one that cannot be imported is named in its
table. Each run is a process in a session of its own (``_peers.py``, ``_procs.py``): on a
time-out (``--timeout``), failure or interrupt all it started is ended, the system marked FAILED.

Rates: ``run`` = N / (last task done - start with the system already up: Balsam's first RUNNING
event; a peer's submission of the first of the N tasks, after one warm-up task has run so its
workers are connected; the map alone on a started Pool); ``end-to-end`` = N / (last task done -
start from nothing: Balsam's insert or ``bulk_create`` of the N jobs plus launcher start-up; a
peer's interpreter start, import, start of its executor or cluster and warm-up task; the Pool's
start). xargs runs ``seq N | xargs -P <cores> -n 1 true`` (one rate for both). In each round
every system runs next to a baseline run, in alternating order from round to round; a ratio is
the median over rounds of the system's rate divided by the baseline's same rate in that round
(the load of a shared machine drifts: neighbours in time share it best).

Run: ``python benchmarks/bench_peers.py [--tasks 2000] [--fn-tasks 1000] [--rounds 3]
[--campaign shell,function] [--only balsam,parsl,...] [--timeout 1800]``
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_launcher_serial as shell_bench  # noqa: E402
import bench_pyfunc as function_bench  # noqa: E402
from _procs import RunTimeout, run_in_session  # noqa: E402
from _throwaway import machine_line, throwaway_db  # noqa: E402

SYSTEMS = ("balsam", "parsl", "parsl-monitoring", "hyperqueue")
BASELINES = ("xargs", "pool")
# What a peer needs importable (parsl's monitoring needs sqlalchemy: parsl[monitoring]).
PEER_IMPORTS = {"parsl": ("parsl.executors",), "parsl-monitoring": ("parsl.monitoring.db_manager",),
                "hyperqueue": ("hyperqueue.cluster",)}
PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_peers.py")
Rates = dict[str, float]


@dataclass(frozen=True)
class Campaign:
    """One table: its tasks, its baseline and its systems' labels (the keys are its systems)."""

    name: str
    what: str
    baseline: str
    labels: dict[str, str]
    peer_suffix: str  # _peers.py's runner is system + suffix
    goal: str


CAMPAIGNS = {
    "shell": Campaign("shell", "x true", "xargs",
                      {"xargs": "xargs -P {cores}", "balsam": "Balsam serial launcher",
                       "parsl": "Parsl HTEX bash_app", "parsl-monitoring": "Parsl HTEX + monitoring DB",
                       "hyperqueue": "HyperQueue LocalCluster"}, "", "goal >= 3, issue 16"),
    "function": Campaign("function", "no-op Python-function calls", "pool",
                         {"pool": "multiprocessing.Pool({cores})", "balsam": "Balsam function tasks",
                          "parsl": "Parsl HTEX python_app",
                          "hyperqueue": "HyperQueue Job.function"}, "-fn",
                         "issue 14: >= 1.5 x Parsl HTEX"),
}


class PeerFailed(Exception):
    """A system's run did not finish all its tasks."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP: unwind (ending child sessions, removing the DB), then exit."""


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


def peer_round(peer: str, count: int, cores: int, timeout: float) -> Rates:
    """One run of ``peer`` (a ``_peers.py`` runner) in its own process; its rates (see the
    module docstring)."""
    workdir = tempfile.mkdtemp(prefix="balsam-bench-peer-", dir="/tmp")
    env = dict(os.environ, TQDM_DISABLE="1")
    started = time.time()
    try:
        proc = run_in_session([sys.executable, PEER_SCRIPT, peer, str(count), str(cores),
                               workdir], what=peer, timeout=timeout, env=env)
    except RunTimeout as exc:
        raise PeerFailed(f"{exc} (--timeout)") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not lines[-1].startswith("{"):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PeerFailed(f"{peer} exited {proc.returncode}: {tail}")
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


def balsam_shell_round(db_path: str, count: int, cores: int) -> Rates:
    """Insert ``count`` runnable ``true`` jobs and run them with the serial launcher."""
    t0 = time.perf_counter()
    shell_bench.fill(db_path, count, cores)
    insert = time.perf_counter() - t0
    rates = shell_bench.launcher_round(db_path, count)
    return {"run": rates["run"], "e2e": count / (insert + count / rates["e2e"])}


def balsam_function_round(db_path: str, count: int, cores: int) -> Rates:
    """``bulk_create`` ``count`` function jobs and run them with the serial launcher (warm
    workers); every result is read back and checked."""
    t0 = time.perf_counter()
    jobs = function_bench.fill(db_path, count, cores)
    create = time.perf_counter() - t0
    rates = function_bench.launcher_round(db_path, jobs)
    return {"run": rates["run"], "e2e": count / (create + count / rates["e2e"])}


def baseline_round(campaign: Campaign, count: int, cores: int) -> Rates:
    if campaign.baseline == "xargs":
        rate = shell_bench.xargs_round(count, cores)[0]
        return {"run": rate, "e2e": rate}
    return function_bench.pool_round(count, cores)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per run (default 2000)")
    parser.add_argument("--fn-tasks", type=int, default=1000,
                        help="tasks per run of the function campaign (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--campaign", default="shell,function",
                        help="comma-separated campaigns among shell, function (default both)")
    choices = SYSTEMS + BASELINES
    parser.add_argument("--only", default=",".join(SYSTEMS),
                        help="comma-separated systems among " + ", ".join(choices)
                        + " (baselines are always measured; naming only baselines measures "
                        "only them)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds one peer run may take before it is ended and its system "
                             "marked FAILED (default 1800; a Balsam launcher run: 600, as in "
                             "bench_launcher_serial.py and bench_pyfunc.py)")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        parser.error(f"--only: unknown system {', '.join(unknown) or '(none given)'}; "
                     f"choose among {', '.join(choices)}")
    campaigns = [c.strip() for c in args.campaign.split(",") if c.strip()]
    wrong = [c for c in campaigns if c not in CAMPAIGNS]
    if wrong or not campaigns:
        parser.error(f"--campaign: unknown campaign {', '.join(wrong) or '(none given)'}; "
                     f"choose among {', '.join(CAMPAIGNS)}")
    if min(args.tasks, args.fn_tasks, args.rounds) < 1 or args.timeout <= 0:
        parser.error("--tasks, --fn-tasks and --rounds must be at least 1, --timeout positive")
    args.campaigns = [CAMPAIGNS[c] for c in CAMPAIGNS if c in campaigns]
    args.systems = [s for s in SYSTEMS if s in names]
    return args


def system_round(campaign: Campaign, system: str, db_path: str, count: int, cores: int,
                 timeout: float) -> Rates:
    """One run of ``system`` in ``campaign``; PeerFailed names what went wrong."""
    if system != "balsam":
        return peer_round(system + campaign.peer_suffix, count, cores, timeout)
    run: Callable[[str, int, int], Rates] = (balsam_shell_round if campaign.name == "shell"
                                             else balsam_function_round)
    try:
        return run(db_path, count, cores)
    except SystemExit as exc:  # the launcher failed or timed out: its message, one line
        raise PeerFailed(str(exc).strip().splitlines()[0] if str(exc).strip() else
                         f"exit {exc.code}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. results not read back in time: say so
        raise PeerFailed(f"{type(exc).__name__}: {exc}".splitlines()[0]) from None


def measure(campaign: Campaign, systems: list[str], db_path: str, args: argparse.Namespace,
            cores: int) -> tuple[dict[str, list[Rates]], dict[str, list[Rates]], dict[str, str]]:
    """The campaign's rounds: per system its rates, the baseline rates measured beside them,
    and why a system stopped (FAILED)."""
    count = args.tasks if campaign.name == "shell" else args.fn_tasks
    base = campaign.baseline
    results: dict[str, list[Rates]] = {s: [] for s in systems}
    beside: dict[str, list[Rates]] = {s: [] for s in systems}
    beside[base] = []
    failed: dict[str, str] = {}
    live = list(systems)
    for r in range(1, args.rounds + 1):
        load = os.getloadavg()[0]
        if not systems:
            beside[base].append(baseline_round(campaign, count, cores))
            print(f"{campaign.name} round {r} {base}: {beside[base][-1]['run']:7.0f} run/s, "
                  f"{beside[base][-1]['e2e']:7.0f} e2e/s (load {load:.1f})", flush=True)
        for i, system in enumerate(list(live)):
            for step in ((base, system) if (r + i) % 2 else (system, base)):
                if step == base:
                    beside[system].append(baseline_round(campaign, count, cores))
                    print(f"{campaign.name} round {r} {base} beside {system}: "
                          f"{beside[system][-1]['run']:7.0f} run/s, "
                          f"{beside[system][-1]['e2e']:7.0f} e2e/s", flush=True)
                    continue
                try:
                    rates = system_round(campaign, system, db_path, count, cores, args.timeout)
                except PeerFailed as exc:
                    failed[system] = f"FAILED in round {r}: {exc}"
                    print(f"{campaign.name} round {r} {system}: {failed[system]}; skipped from "
                          "now on", flush=True)
                    live.remove(system)
                    beside[system] = beside[system][:len(results[system])]
                    break
                results[system].append(rates)
                print(f"{campaign.name} round {r} {system}: {rates['run']:7.0f} tasks/s run, "
                      f"{rates['e2e']:7.0f} tasks/s end-to-end (load {load:.1f})", flush=True)
    return results, beside, failed


def row(label: str, rate: Rates, ratio: Rates, note: str = "") -> None:
    # Three significant digits: against the Pool, function tasks are hundredths or less.
    print(f"{label:34} {rate['run']:7.0f} {ratio['run']:8.3g} {rate['e2e']:7.0f} "
          f"{ratio['e2e']:8.3g}  {note}".rstrip())


def report(campaign: Campaign, count: int, cores: int, results: dict[str, list[Rates]],
           beside: dict[str, list[Rates]], missing: dict[str, str]) -> None:
    """The campaign's table (rates and ratios are medians over rounds) and its goal lines."""
    labels = {k: v.format(cores=cores) for k, v in campaign.labels.items()}
    print(f"\n== {campaign.name}: {count} {campaign.what}, {cores} workers/slots each; "
          f"baseline {labels[campaign.baseline]} beside every system in every round")
    print(f"{'system':34} {'run/s':>7} {'x base':>8} {'e2e/s':>7} {'x base':>8}  "
          "(baseline beside: median run/s, e2e/s)")
    runs = [x for xs in beside.values() for x in xs]
    if runs:
        row(labels[campaign.baseline] + " (all runs)",
            {k: statistics.median(x[k] for x in runs) for k in ("run", "e2e")},
            {"run": 1.0, "e2e": 1.0})
    ratios: dict[str, Rates] = {}
    rates: dict[str, Rates] = {}
    for system, label in labels.items():
        if system == campaign.baseline:
            continue
        got = results.get(system, [])
        if not got:
            print(f"{label:34} not measured: {missing.get(system, 'not selected (--only)')}")
            continue
        base = beside[system]
        med = rates[system] = {k: statistics.median(m[k] for m in got) for k in ("run", "e2e")}
        ratios[system] = {k: statistics.median(m[k] / x[k] for m, x in zip(got, base))
                          for k in med}
        row(label, med, ratios[system], f"({statistics.median(x['run'] for x in base):.0f}/"
            f"{statistics.median(x['e2e'] for x in base):.0f})"
            + (f"; {missing[system]}" if system in missing else ""))
        if "poll" not in got[0]:
            continue
        if not all("poll" in m for m in got):
            print("  (no best case: a run took less than two client polls)")
            continue
        best = {k: statistics.median(m[f"best_{k}"] / x[k] for m, x in zip(got, base))
                for k in ("run", "e2e")}
        poll = statistics.median(m["poll"] for m in got)
        rates[system] = {k: statistics.median(m[f"best_{k}"] for m in got) for k in ("run", "e2e")}
        row(f"  best case (-{poll:.2f} s poll)", rates[system], best)
        ratios[system] = best
    goal_lines(campaign, ratios, rates, labels)


def goal_lines(campaign: Campaign, ratios: dict[str, Rates], rates: dict[str, Rates],
               labels: dict[str, str]) -> None:
    """Balsam's ratio over the best peer's; for the function campaign also Balsam's median rate
    over Parsl's (issue 14's goal is a rate: next to the Pool's large swings, a ratio of two
    ratios, each over its own Pool run, is the noisier figure)."""
    peers = {s: r for s, r in ratios.items() if s != "balsam"}
    if "balsam" not in ratios or not peers:
        print("(no Balsam / peer ratio: Balsam or every peer missing)")
        return
    for key, name in (("run", "run"), ("e2e", "end-to-end")):
        leader = max(peers, key=lambda s: peers[s][key])
        goal = campaign.goal if campaign.name == "shell" else "no goal"
        print(f"Balsam ratio / best peer's ratio ({name}): "
              f"{ratios['balsam'][key] / peers[leader][key]:.2f}  (best peer: "
              f"{labels[leader]}{' best case' if leader == 'hyperqueue' else ''}; {goal})")
    if campaign.name == "function" and "parsl" in peers:
        for key, name in (("run", "run"), ("e2e", "end-to-end")):
            print(f"Balsam rate / Parsl HTEX's rate ({name}, medians): "
                  f"{rates['balsam'][key] / rates['parsl'][key]:.2f}  ({campaign.goal})")


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


def _default_signals() -> None:
    # A forked Pool worker must die of Pool.terminate()'s SIGTERM as the kernel does it: a
    # Python handler can miss it (a signal just before a blocking sem_wait is never seen
    # again), and the pool's join then waits for ever (seen once in a full run).
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def main() -> None:
    args = parse_args()
    cores = os.cpu_count() or 1
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    os.register_at_fork(after_in_child=_default_signals)
    # The launcher's mpiexec and Parsl's interchange.py are scripts beside this interpreter.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    missing: dict[str, str] = {}
    for system in list(args.systems):
        reason = unavailable(system)
        if reason:
            missing[system] = f"skipped ({reason}; pip install '.[peers]')"
            print(f"# {system}: {missing[system]}")
            args.systems.remove(system)
    print(machine_line())
    print(f"# {args.tasks} shell / {args.fn_tasks} function tasks, {args.rounds} round(s), "
          f"{cores} workers/slots each; parsl {version('parsl')}, hyperqueue "
          f"{version('hyperqueue')}", flush=True)
    tables = []
    try:
        with ExitStack() as stack:
            db_path = ""
            if "balsam" in args.systems:
                db_path = stack.enter_context(throwaway_db())
            for campaign in args.campaigns:
                systems = [s for s in args.systems if s in campaign.labels]
                if "balsam" in systems:
                    (shell_bench.settings(db_path, 1) if campaign.name == "shell"
                     else function_bench.settings(db_path))
                results, beside, failed = measure(campaign, systems, db_path, args, cores)
                tables.append((campaign, results, beside, {**missing, **failed}))
    except Terminated as exc:
        raise SystemExit(f"bench_peers: stopped by {exc}; child processes ended, DB removed")
    print(f"# load at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for campaign, results, beside, notes in tables:
        report(campaign, args.tasks if campaign.name == "shell" else args.fn_tasks, cores,
               results, beside, notes)


if __name__ == "__main__":
    main()
