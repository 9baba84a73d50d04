# Written by hand: the claim indexes again, per workflow, and the claimable jobs' tags (issue 16,
# session 17).
#
# A launcher's workflow filter ("workflow contains WF") only dropped rows of the claim index's
# scan, so a launcher of a rare workflow -- or of one with no runnable job left -- read every
# claimable job of the others at each claim (~130 ms with 600,000 claimable jobs, generic or
# custom plan alike). With these, the claim lists the claimable workflows by a loose scan and
# reads each matching one in the claim order (balsam/core/claim_sql.py). Partial, as the claim
# indexes: only claimable row versions have entries (a job's insert, its release, a retry), so
# the claim, RUNNING and end updates of a task add none. A tag filter's claim (planned per call:
# the tag's frequency decides) reads a rare tag's jobs from `job_claim_tags`. Measured with
# benchmarks/bench_claim_plans.py (benchmarks/README.md, "Issue 16, session 17").

from django.contrib.postgres.indexes import GinIndex
from django.db import migrations, models

_CLAIMABLE = models.Q(("session__isnull", True), ("state__in", ["PREPROCESSED", "RESTART_READY"]))


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0019_job_state_wf_index"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="balsamjob",
            index=models.Index(condition=_CLAIMABLE,
                               fields=["workflow", "-priority", "-num_nodes",
                                       "-wall_time_minutes"],
                               name="job_claim_wf_mpi"),
        ),
        migrations.AddIndex(
            model_name="balsamjob",
            index=models.Index(condition=_CLAIMABLE & models.Q(("num_nodes", 1),
                                                               ("ranks_per_node", 1)),
                               fields=["workflow", "-priority", "node_packing_count",
                                       "-wall_time_minutes"],
                               name="job_claim_wf_serial"),
        ),
        migrations.AddIndex(
            model_name="balsamjob",
            index=GinIndex(condition=_CLAIMABLE, fields=["tags"], opclasses=["jsonb_path_ops"],
                           name="job_claim_tags"),
        ),
    ]
