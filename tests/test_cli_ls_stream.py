"""``balsam ls --format json`` streams: the same JSON as a list dumped at once, in flat memory."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cli_support import add_edge, add_jobs

from balsam.cli import jobquery as jq
from balsam.core.reads import jobs as reads

# Peak RSS from VmHWM: getrusage's ru_maxrss would include the (large) pytest process it was
# forked from, which Linux carries over exec.
MEASURE = """
import sys
from balsam.cli.main import main
status = main(["ls", "--format", "json"])
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
sys.stderr.write(f"MAXRSS_KB {peak.split()[1]}\\n")
sys.exit(status)
"""


def test_json_output_is_exactly_the_dumped_list_with_parents_and_hidden_count(cursor) -> None:
    ids = add_jobs(cursor, 5, name="s", workflow="wf", data={"k": "line\nbreak"})
    add_edge(cursor, ids[0], ids[1])
    add_edge(cursor, ids[2], ids[1])
    rows, _ = reads.fetch_jobs(cursor, "", [], jq.LS_FIELDS, 4)
    expected = jq.dumps([jq.jsonable(r) for r in rows]) + "\n"
    proc = subprocess.run([sys.executable, "-m", "balsam", "ls", "--format", "json"],
                          capture_output=True, text=True, env=_env(BALSAM_LS_LIMIT="4"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected
    assert json.loads(proc.stdout)[1]["parents"] == [ids[0], ids[2]]
    assert proc.stderr == "(1 more BalsamJobs not shown...) raise BALSAM_LS_LIMIT to see them\n"


@pytest.mark.slow
def test_listing_40000_jobs_as_json_keeps_memory_flat(cursor) -> None:
    add_jobs(cursor, 40_000, name="m", workflow="mem", args="x" * 40)
    proc = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True,
                          env=_env(BALSAM_LS_LIMIT="1000000"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 40_000
    maxrss_mb = int(proc.stderr.decode().split("MAXRSS_KB ")[1]) / 1024
    # Holding every row (the old way) took ~350 MB here; streamed it is the interpreter's ~45 MB.
    assert maxrss_mb < 120, maxrss_mb


def _env(**extra: str) -> dict:
    return dict(os.environ, **extra)
