# Written by hand: a job's retry limit (max_retries, -1 = the DB's launcher.max_retries) and its
# priority; the claim indexes lead with the priority so that launchers claim higher priorities
# first straight from them.

from django.db import migrations, models

_CLAIMABLE = models.Q(("session__isnull", True), ("state__in", ["PREPROCESSED", "RESTART_READY"]))

# Plain-SQL writers (the CLI, COPY, the planner) name only the columns they know: the database
# itself supplies these defaults (Django drops the ones AddField sets).
_DEFAULTS_SQL = """
ALTER TABLE core_balsamjob ALTER COLUMN max_retries SET DEFAULT -1;
ALTER TABLE core_balsamjob ALTER COLUMN priority SET DEFAULT 0;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0007_site_api"),
    ]

    operations = [
        migrations.AddField(
            model_name="balsamjob",
            name="max_retries",
            field=models.IntegerField(default=-1),
        ),
        migrations.AddField(
            model_name="balsamjob",
            name="priority",
            field=models.IntegerField(default=0),
        ),
        migrations.RunSQL(_DEFAULTS_SQL, migrations.RunSQL.noop),
        migrations.RemoveIndex(model_name="balsamjob", name="job_claim_mpi"),
        migrations.RemoveIndex(model_name="balsamjob", name="job_claim_serial"),
        migrations.AddIndex(
            model_name="balsamjob",
            index=models.Index(condition=_CLAIMABLE, fields=["-priority", "-num_nodes",
                                                             "-wall_time_minutes"],
                               name="job_claim_mpi_pri"),
        ),
        migrations.AddIndex(
            model_name="balsamjob",
            index=models.Index(condition=_CLAIMABLE & models.Q(("num_nodes", 1),
                                                               ("ranks_per_node", 1)),
                               fields=["-priority", "node_packing_count", "-wall_time_minutes"],
                               name="job_claim_serial_pri"),
        ),
    ]
