"""The serial ensemble's own MPI settings (session 19): a local ensemble of the mpich wheel
starts its ranks with ``MPIR_CVAR_CH4_NETMOD=ofi`` (MPICH's OFI network module: a cheaper
start and end than its default UCX one), but no task of a rank sees it, and a user's own
setting is left as it is, for the ranks and the tasks alike. Real launcher, real MPICH."""
from __future__ import annotations

import os
from typing import Optional

import pytest
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, settings, states, workdir, write_script

pytestmark = pytest.mark.slow

SERIAL = ("--consume-all", "--job-mode", "serial")
NETMOD = "MPIR_CVAR_CH4_NETMOD"
# The task prints its own setting and its parent's: a worker rank (or the launcher, for the
# first tasks it starts itself, its warm start).
REPORT = f"""#!/bin/sh
echo "task=${{{NETMOD}-unset}}"
echo "parent=$(tr '\\0' '\\n' < /proc/$PPID/environ | sed -n 's/^{NETMOD}=//p')"
echo "parentcmd=$(tr '\\0' ' ' < /proc/$PPID/cmdline)"
"""


def run_and_read(db, cursor, scripts, env: Optional[dict[str, str]]) -> list[dict[str, str]]:
    add_app(cursor, "report", write_script(scripts, "report.sh", REPORT))
    ids = add_jobs(cursor, [{"name": f"r{i}", "application": "report", "node_packing_count": 2}
                            for i in range(8)])
    with settings(db, local_nodes=1, launcher=QUICK), launchers() as start:
        launcher = start(*SERIAL, env=env)
        assert launcher.wait(90) == 0, launcher.output()
    assert set(states(cursor).values()) == {"JOB_FINISHED"}
    found = []
    for i, job_id in enumerate(ids):
        with open(os.path.join(workdir(db, cursor, job_id), f"r{i}.out")) as fh:
            found.append(dict(line.split("=", 1) for line in fh.read().splitlines()))
    by_ranks = [f for f in found if "serial_ranks" in f["parentcmd"]]
    assert by_ranks, f"no task was started by a worker rank: {found}"
    return by_ranks


@pytest.mark.skipif(NETMOD in os.environ, reason=f"{NETMOD} is set here: the user's choice")
def test_the_local_ensemble_runs_with_ofi_and_its_tasks_never_see_it(db, cursor, scripts):
    for found in run_and_read(db, cursor, scripts, None):
        assert (found["task"], found["parent"]) == ("unset", "ofi")


def test_a_users_own_network_module_is_kept_for_the_ranks_and_the_tasks(db, cursor, scripts):
    for found in run_and_read(db, cursor, scripts, dict(os.environ, **{NETMOD: "ucx"})):
        assert (found["task"], found["parent"]) == ("ucx", "ucx")
