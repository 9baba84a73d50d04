"""benchmarks/bench_peers.py: a peer that cannot be imported is named and skipped; bad --only is
one line; a tiny run of both campaigns with every peer hidden (as in CI, where Parsl and
HyperQueue are not installed) measures Balsam and the baselines and leaves nothing behind."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                      "bench_peers.py")


def run_bench(*args: str, hide: tuple[str, ...] = (), timeout: float = 60
              ) -> subprocess.CompletedProcess:
    # sys.modules[name] = None makes `import name` fail, as on a machine without the peer.
    code = ("import sys, runpy; " + "".join(f"sys.modules[{name!r}] = None; " for name in hide)
            + f"sys.argv = [{SCRIPT!r}, *{list(args)!r}]; runpy.run_path({SCRIPT!r}, "
              "run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout)


def test_a_peer_that_cannot_be_imported_is_named_and_skipped() -> None:
    proc = run_bench("--tasks", "5", "--rounds", "1", "--campaign", "shell", "--only",
                     "hyperqueue,xargs", hide=("hyperqueue",))
    assert proc.returncode == 0, proc.stderr
    assert "# hyperqueue: skipped (cannot import hyperqueue.cluster" in proc.stdout
    assert "shell round 1 xargs:" in proc.stdout
    table = proc.stdout.split("\n== shell: ")[1]
    assert re.search(r"^HyperQueue LocalCluster +not measured: skipped \(cannot import "
                     r"hyperqueue\.cluster", table, re.M), table
    assert re.search(r"^Balsam serial launcher +not measured: not selected", table, re.M)


def test_an_unknown_system_is_one_line_and_exit_2() -> None:
    proc = run_bench("--only", "balsam,condor")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "--only: unknown system condor; choose among balsam, parsl, parsl-monitoring, "
        "hyperqueue, xargs, pool")
    assert "Traceback" not in proc.stderr


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


@pytest.mark.slow  # a throwaway DB and two launcher runs: ~15-40 s
def test_a_tiny_run_without_the_peers_measures_balsam_names_the_peers_and_cleans_up() -> None:
    proc = run_bench("--tasks", "20", "--fn-tasks", "20", "--rounds", "1",
                     hide=("parsl", "hyperqueue"),
                     timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for peer, module in (("parsl", "parsl.executors"),
                         ("parsl-monitoring", "parsl.monitoring.db_manager"),
                         ("hyperqueue", "hyperqueue.cluster")):
        assert f"# {peer}: skipped (cannot import {module}" in out
    shell, function = out.split("\n== shell: ")[1].split("\n== function: ")
    number = r"\s+\d+\s+[\d.e+-]+\s+\d+\s+[\d.e+-]+"
    assert re.search(r"^xargs -P \d+ \(all runs\)" + number, shell, re.M), shell
    assert re.search(r"^Balsam serial launcher" + number, shell, re.M), out
    assert re.search(r"^Balsam function tasks" + number, function, re.M), out
    assert re.search(r"^multiprocessing\.Pool\(\d+\) \(all runs\)" + number, function, re.M)
    for table, peers in ((shell, ("Parsl HTEX bash_app", "Parsl HTEX + monitoring DB",
                                  "HyperQueue LocalCluster")),
                         (function, ("Parsl HTEX python_app", "HyperQueue Job.function"))):
        for label in peers:
            assert re.search(rf"^{re.escape(label)} +not measured: skipped \(cannot import",
                             table, re.M), table
    db_path = re.search(r"# throwaway DB (\S+) created", out).group(1)
    assert not os.path.exists(os.path.dirname(db_path))
    assert processes_mentioning(db_path) == []  # its PostgreSQL server was stopped
