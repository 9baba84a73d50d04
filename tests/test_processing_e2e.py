"""Processing end to end: real launchers run jobs through stage-in, preprocess, run,
postprocess and stage-out, with error and timeout handlers, on the real database."""
from __future__ import annotations

import os
import shutil
import sys

import pytest
from conftest import make_public_tmpdir
from launcher_procs import launchers
from launcher_support import QUICK, add_jobs, events, job_row, settings, workdir

from balsam.core import schema

pytestmark = pytest.mark.slow

MPI = ("--consume-all", "--job-mode", "mpi")
PY = sys.executable


@pytest.fixture
def scripts():
    path = make_public_tmpdir("balsam-pe-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write(directory: str, name: str, text: str, mode: int = 0o755) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)
    return path


def add_app(cur, name: str, executable: str, preprocess: str = "", postprocess: str = "",
            envscript: str = "") -> None:
    cur.execute(f"INSERT INTO {schema.APP_TABLE} (name, description, executable, preprocess, "
                "envscript, postprocess) VALUES (%s, '', %s, %s, %s, %s)",
                [name, executable, preprocess, envscript, postprocess])


def to_states(cur, job_id: str) -> list[str]:
    return [e[2] for e in events(cur, job_id)]


def run_launcher(db: str, *extra: str, timeout: float = 90) -> None:
    with settings(db, launcher=QUICK), launchers() as start:
        launcher = start(*MPI, *extra)
        assert launcher.wait(timeout) == 0, launcher.output()


PREPROCESS = f"""#!{PY}
from balsam.launcher import dag
job = dag.current_job
with open("input.txt") as fh:
    job.args = fh.read().strip() + " --checked"
job.save()
print("preprocessed", job.name)
"""

POSTPROCESS = f"""#!{PY}
import os
from balsam.launcher import dag
with open(dag.current_job.name + ".out") as fh:
    text = fh.read()
with open("result.txt", "w") as fh:
    fh.write(text.upper())
print("postprocessed; error:", os.environ.get("BALSAM_JOB_ERROR"), "home set:", "HOME" in os.environ)
"""


def test_a_job_goes_through_stage_in_preprocess_run_postprocess_and_stage_out(db, cursor,
                                                                               scripts):
    source = os.path.join(scripts, "inbox")
    os.mkdir(source)
    write(source, "input.txt", "alpha beta\n", 0o644)
    outbox = os.path.join(scripts, "outbox")
    add_app(cursor, "echo", "/bin/echo", preprocess=write(scripts, "pre.py", PREPROCESS),
            postprocess=write(scripts, "post.py", POSTPROCESS))
    (job_id,) = add_jobs(cursor, [{"name": "full", "application": "echo",
                                   "stage_in_url": f"local:{source}/*",
                                   "stage_out_url": f"local:{outbox}",
                                   "stage_out_files": "result.txt full.out"}])
    run_launcher(db)
    assert to_states(cursor, job_id) == ["READY", "STAGED_IN", "PREPROCESSED", "RUNNING",
                                         "RUN_DONE", "POSTPROCESSED", "JOB_FINISHED"]
    assert job_row(cursor, job_id)["args"] == "alpha beta --checked"
    wd = workdir(db, cursor, job_id)
    with open(os.path.join(wd, "full.out")) as fh:
        assert fh.read() == "alpha beta --checked\n"
    with open(os.path.join(outbox, "result.txt")) as fh:
        assert fh.read() == "ALPHA BETA --CHECKED\n"
    assert sorted(os.listdir(outbox)) == ["full.out", "result.txt"]
    with open(os.path.join(wd, "preprocess.log")) as fh:
        log = fh.read()
    assert log.startswith(f"# Balsam Preprocessor: {scripts}/pre.py\n") and "preprocessed full\n" in log
    with open(os.path.join(wd, "postprocess.log")) as fh:
        assert "postprocessed; error: None home set: True\n" in fh.read()
    evs = events(cursor, job_id)
    assert evs[1][3] == f"staged in 1 item(s) from local:{source}/*"
    assert evs[-1][3] == f"staged out 2 file(s) to local:{outbox}"
