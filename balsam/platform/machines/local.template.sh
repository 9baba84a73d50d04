#!/bin/bash
# Balsam launcher job for the local scheduler: a plain bash script that runs on this machine.
# Requested: queue {{ queue }}, project {{ project }}, {{ nodes }} node(s), {{ time_minutes }} minutes.
{{ sched_flags }}
