"""The environment a launcher gives the programs it starts when it runs inside another launch
(:mod:`balsam.platform.outer_launch`), on the environments measured on the test Slurm and
under the mpich wheel's Hydra (tests/test_launcher_nested*.py run the real launches)."""
from __future__ import annotations

from balsam.platform.outer_launch import inner_environ, outer_tasks, slurm_step

BATCH = {"SLURM_JOB_ID": "16", "SLURM_JOBID": "16", "SLURM_JOB_NODELIST": "n[1-2]",
         "SLURM_NODELIST": "n[1-2]", "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2",
         "SLURM_TASKS_PER_NODE": "1(x2)", "SLURM_JOB_CPUS_PER_NODE": "1(x2)",
         "SLURM_CONF": "/etc/slurm/slurm.conf", "PATH": "/bin", "PMIX_MCA_gds": "hash"}
"""``env`` in ``salloc -N 2`` on the test Slurm (22.05), abridged, plus a user's PMIx setting."""

STEP = {**BATCH, "SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_NNODES": "1",
        "SLURM_NTASKS": "1", "SLURM_NPROCS": "1", "SLURM_PROCID": "0",
        "SLURM_DISTRIBUTION": "cyclic", "SLURM_STEP_NODELIST": "n1",
        "SLURM_STEP_NUM_TASKS": "1", "SLURM_TASKS_PER_NODE": "1", "SLURM_CPUS_ON_NODE": "1"}
"""The same inside ``srun -n 1`` (what differs, as measured)."""


def test_a_batch_script_environment_passes_through_unchanged():
    assert slurm_step(BATCH) is None
    assert inner_environ(BATCH) == BATCH


def test_inside_a_slurm_step_the_steps_variables_go_and_inner_steps_may_overlap():
    assert slurm_step(STEP) == "16.0"
    env = inner_environ(STEP)
    assert env == {**{k: v for k, v in BATCH.items() if k not in ("SLURM_NNODES",
                                                                   "SLURM_TASKS_PER_NODE")},
                   "SLURM_OVERLAP": "1"}


def test_an_outer_mpi_launchs_per_process_variables_go_and_user_settings_stay():
    outer = {"PMI_RANK": "0", "PMI_SIZE": "1", "PMI_FD": "9", "HYDI_CONTROL_FD": "7",
             "MPI_LOCALRANKID": "0", "PMIX_RANK": "0", "PMIX_NAMESPACE": "x",
             "PMIX_SERVER_URI41": "s", "OMPI_COMM_WORLD_RANK": "0", "PALS_RANKID": "0",
             "ALPS_APP_PE": "0"}
    assert inner_environ({**BATCH, **outer}) == BATCH


def test_a_launcher_sharing_its_launch_with_others_is_named_with_the_variable_saying_so():
    assert outer_tasks(STEP) is None
    assert outer_tasks({**STEP, "SLURM_STEP_NUM_TASKS": "4"}) == (4, "SLURM_STEP_NUM_TASKS")
    assert outer_tasks({"PMI_SIZE": "2"}) == (2, "PMI_SIZE")
    # Hydra's proxies, a step of one task per node, started one launcher
    assert outer_tasks({**STEP, "SLURM_STEP_NUM_TASKS": "2", "PMI_SIZE": "1"}) is None
    assert outer_tasks({"SLURM_STEP_NUM_TASKS": "4"}) is None  # no job: not a step
    assert outer_tasks(BATCH) is None
