"""A campaign from the shell, end to end: 51 writer jobs from `balsam job --array`, a reducer
depending on all of them whose input links keep globbable names, a real launcher, and
`balsam wait` telling how it went."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import make_public_tmpdir, run_balsam
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, settings, workdir
from test_processing_e2e import MPI, write

from balsam.core import bulk

pytestmark = pytest.mark.slow

PY = sys.executable
WRITER = f"""#!{PY}
import os
with open("result.json", "w") as fh:
    fh.write('{{"i": %s}}' % os.environ["BALSAM_ARRAY_INDEX"])
"""
REDUCER = f"""#!{PY}
import glob, json
files = glob.glob("*_result.json")
print(len(files), sum(json.load(open(f))["i"] for f in files))
"""


@pytest.fixture
def scripts():
    path = make_public_tmpdir("balsam-camp-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_51_parent_reduce_globs_every_parent_result_and_wait_reports_success(db, cursor, scripts):
    add_app(cursor, "writer", write(scripts, "writer.py", WRITER))
    add_app(cursor, "reducer", write(scripts, "reducer.py", REDUCER))
    proc = run_balsam("job", "--name", "w{i}", "--workflow", "camp", "--application", "writer",
                      "--array", "51", "--quiet", "--yes")
    assert proc.returncode == 0, proc.stderr
    writers = proc.stdout.split()
    assert len(writers) == 51
    (reducer,) = add_jobs(cursor, [{"name": "reduce", "workflow": "camp",
                                    "application": "reducer", "input_files": "result.json"}])
    bulk.insert_edges(cursor, [(w, reducer) for w in writers])
    with settings(db, launcher=QUICK), launchers() as start:
        launcher = start(*MPI)
        waited = run_balsam("wait", "--wf", "camp", "--timeout", "240", timeout=300)
        assert launcher.wait(60) == 0, launcher.output()
    assert (waited.returncode, waited.stdout) == (0, "all 52 jobs finished\n"), waited.stderr
    wd = workdir(db, cursor, reducer)
    assert sorted(n for n in os.listdir(wd) if n.endswith("_result.json")) == \
        sorted(f"{w[:8]}_result.json" for w in writers)
    with open(os.path.join(wd, "reduce.out")) as fh:
        assert fh.read().split() == ["51", str(sum(range(51)))]


def test_wait_exits_1_when_a_campaign_job_fails(db, cursor, scripts):
    add_app(cursor, "flaky", write(scripts, "flaky.sh", '#!/bin/sh\nexit "$BALSAM_ARRAY_INDEX"\n'))
    proc = run_balsam("job", "--name", "f{i}", "--workflow", "camp", "--application", "flaky",
                      "--array", "0-2", "--yes")
    assert proc.returncode == 0, proc.stderr
    with settings(db, launcher=QUICK), launchers() as start:
        launcher = start(*MPI)
        waited = subprocess.run([PY, "-m", "balsam", "wait", "--wf", "camp", "--timeout", "120"],
                                capture_output=True, text=True, timeout=180)
        assert launcher.wait(60) == 0, launcher.output()
    assert (waited.returncode, waited.stdout) == (1, "2 of 3 jobs did not finish: 2 FAILED\n"), \
        waited.stderr
