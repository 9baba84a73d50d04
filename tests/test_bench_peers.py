"""benchmarks/bench_peers.py: a peer that cannot be imported is named and skipped; bad --only is
one line. Runs only xargs (no database, no peers needed): well under a second."""
from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                      "bench_peers.py")


def run_bench(*args: str, hide: str = "") -> subprocess.CompletedProcess:
    # sys.modules[name] = None makes `import name` fail, as on a machine without the peer.
    code = ("import sys, runpy; " + (f"sys.modules[{hide!r}] = None; " if hide else "")
            + f"sys.argv = [{SCRIPT!r}, *{list(args)!r}]; runpy.run_path({SCRIPT!r}, "
              "run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_a_peer_that_cannot_be_imported_is_named_and_skipped() -> None:
    proc = run_bench("--tasks", "5", "--rounds", "1", "--only", "hyperqueue,xargs",
                     hide="hyperqueue")
    assert proc.returncode == 0, proc.stderr
    assert "# hyperqueue: skipped (cannot import hyperqueue.cluster" in proc.stdout
    assert "round 1 xargs:" in proc.stdout
    assert "HyperQueue" not in proc.stdout.split("\nsystem")[-1]


def test_an_unknown_system_is_one_line_and_exit_2() -> None:
    proc = run_bench("--only", "balsam,condor")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "--only: unknown system condor; choose among balsam, parsl, parsl-monitoring, "
        "hyperqueue, xargs")
    assert "Traceback" not in proc.stderr
