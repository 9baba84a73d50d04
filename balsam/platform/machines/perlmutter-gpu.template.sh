#!/bin/bash
{{ project_directive }}
#SBATCH --qos={{ queue }}
#SBATCH --constraint=gpu
#SBATCH --nodes={{ nodes }}
#SBATCH --time={{ time_minutes }}
#SBATCH --gpus-per-node={{ gpus_per_node }}
{{ sched_flags }}
# Balsam launcher batch job (NERSC Perlmutter GPU nodes; tasks start with srun).
