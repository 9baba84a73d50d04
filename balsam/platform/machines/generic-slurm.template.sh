#!/bin/bash
{{ project_directive }}
#SBATCH --partition={{ queue }}
#SBATCH --nodes={{ nodes }}
#SBATCH --exclusive
#SBATCH --time={{ time_minutes }}
{{ sched_flags }}
# Balsam launcher batch job (generic Slurm; whole nodes: tasks start with srun, several ranks
# per node, and serial-mode workers pack tasks on every core).
