#!/bin/bash
{{ project_directive }}
#COBALT -q {{ queue }}
#COBALT -n {{ nodes }}
#COBALT -t {{ time_minutes }}
#COBALT --attrs ssds=required:ssd_size=128
{{ sched_flags }}
# Balsam launcher batch job (ALCF Theta; tasks start with aprun from this MOM node).
module unload trackdeps darshan xalt 2>/dev/null
export PMI_NO_FORK=1
