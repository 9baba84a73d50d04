#!/bin/bash
{{ project_directive }}
#BSUB -q {{ queue }}
#BSUB -nnodes {{ nodes }}
#BSUB -W {{ time_minutes }}
{{ sched_flags }}
# Balsam launcher batch job (OLCF Summit; runs on the launch node, tasks start with jsrun).
