#!/bin/bash
{{ project_directive }}
#PBS -q {{ queue }}
#PBS -l select={{ nodes }}:system=polaris
#PBS -l place=scatter
#PBS -l walltime={{ walltime }}
#PBS -l filesystems=home:eagle
{{ sched_flags }}
# Balsam launcher batch job (ALCF Polaris; tasks start with the PALS mpiexec).
