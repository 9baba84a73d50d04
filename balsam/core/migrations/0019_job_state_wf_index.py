# Written by hand: one index on (state, workflow) instead of `job_state` (state) and
# `job_wf_state` (workflow, state) (issue 16: what a task costs the database server).
#
# A launcher updates a job row three times per run (claim, RUNNING, the run's end) and none of
# these updates is HOT, so each writes an entry in every index the new row version is in: with
# both state indexes, 14 job-index entries per task. One index whose leading column is `state`
# answers everything either did: `state = s` (and `state IN (...)`) as `job_state` did, `state =
# s AND workflow = w` as `job_wf_state` did, and `workflow = w` alone by a skip scan over the
# few states (PostgreSQL 18 B-tree skip scan: one descent per state present), index-only counts
# by (workflow, state) and by state; 11 entries per task instead of 14. Measured with
# benchmarks/bench_task_sql.py (benchmarks/README.md, "Issue 16, session 15").

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0018_event_cascade_trigger"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="balsamjob",
            index=models.Index(fields=["state", "workflow"], name="job_state_wf"),
        ),
        migrations.RemoveIndex(model_name="balsamjob", name="job_wf_state"),
        migrations.RemoveIndex(model_name="balsamjob", name="job_state"),
    ]
