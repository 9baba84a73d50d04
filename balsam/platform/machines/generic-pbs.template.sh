#!/bin/bash
{{ project_directive }}
#PBS -q {{ queue }}
#PBS -l select={{ nodes }}
#PBS -l place=scatter
#PBS -l walltime={{ walltime }}
{{ sched_flags }}
# Balsam launcher batch job (generic PBS Pro / OpenPBS).
