"""On the real test Slurm: the serial ensemble's ``srun`` command (Slurm without the mpich
wheel) tells each task its rank before MPI starts, exactly as
:func:`balsam.platform.mpi.ensemble.rank_evidence` expects -- ``SLURM_PROCID`` and
``SLURM_NTASKS`` set by ``srun`` for this step, read only with this launch's id -- even when the
allocation's environment holds a stale ``SLURM_PROCID=0`` and a matching ``SLURM_NTASKS``.
(The ranks here are a probe, not MPI programs: this Slurm has no PMI plug-in for the wheel's
MPICH; tests/test_early_rank.py runs real ensembles under fakes.)"""
from __future__ import annotations

import json
import sys

import pytest
from conftest import make_public_tmpdir
from slurm_support import slurm_command, slurm_fixture, write_script  # noqa: F401 - `slurm`

pytestmark = pytest.mark.slow

PROBE = """
import json, os, socket, sys
from balsam.platform.early_rank import rank_announced
print(json.dumps([rank_announced(os.environ, json.loads(sys.argv[1]), 3),
                  os.environ.get("SLURMD_NODENAME", "")]))
"""

DRIVER = """
import json, os, shutil, subprocess, sys
from balsam.platform.early_rank import ensemble_environ
from balsam.platform.mpi.choice import LauncherChoice
from balsam.platform.mpi.ensemble import ensemble_command, rank_evidence
hosts = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                       capture_output=True, text=True, check=True, timeout=30).stdout.split()[:2]
task = LauncherChoice("srun", shutil.which("srun"), "the site's srun")
evidence = rank_evidence("slurm", task, None, os.environ["PATH"])
argv, _ = ensemble_command("slurm", hosts, [sys.executable, "-c", sys.argv[1],
                                            json.dumps(evidence)], task, None, os.environ["PATH"])
env = ensemble_environ({**os.environ, "SLURM_PROCID": "0", "SLURM_NTASKS": "3"}, evidence)
done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
print(json.dumps({"hosts": hosts, "status": done.returncode, "lines": done.stdout.splitlines(),
                  "stderr": done.stderr}))
"""


def test_srun_tells_each_task_its_own_rank_before_mpi_despite_a_stale_procid(slurm):
    tmp = make_public_tmpdir("balsam-early-rank-")
    driver = write_script(tmp, "driver.py", DRIVER)
    proc = slurm_command("salloc", "-N", "2", "-t", "5", sys.executable, driver, PROBE,
                         timeout=300)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == 0, result["stderr"]
    ranks = sorted(tuple(json.loads(line)) for line in result["lines"])
    first, second = result["hosts"]
    # 1 master + 2 workers: master and worker 1 on the first node (srun -m arbitrary)
    assert ranks == [(0, first), (1, first), (2, second)], result

