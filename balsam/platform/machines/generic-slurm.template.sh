#!/bin/bash
{{ project_directive }}
#SBATCH --partition={{ queue }}
#SBATCH --nodes={{ nodes }}
#SBATCH --time={{ time_minutes }}
{{ sched_flags }}
# Balsam launcher batch job (generic Slurm).
