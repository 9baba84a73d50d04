# Written by hand: a batch job's tag filter (``BatchJob(filter_tags={...})`` of the newer API):
# its launcher claims only jobs whose ``tags`` hold every key and value ({}: any job); a job's
# ``gpus_per_rank`` (``Job(gpus_per_rank=...)``; 0 for classic jobs).

from django.db import migrations, models

# Plain-SQL writers (the planner, `balsam submit-launch`) name only the columns they know: the
# database itself supplies the default (Django drops the one AddField sets).
_DEFAULTS_SQL = """
ALTER TABLE core_queuedlaunch ALTER COLUMN filter_tags SET DEFAULT '{}'::jsonb;
ALTER TABLE core_balsamjob ALTER COLUMN gpus_per_rank SET DEFAULT 0;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0009_reset_events"),
    ]

    operations = [
        migrations.AddField(
            model_name="queuedlaunch",
            name="filter_tags",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="balsamjob",
            name="gpus_per_rank",
            field=models.IntegerField(default=0),
        ),
        migrations.RunSQL(_DEFAULTS_SQL, migrations.RunSQL.noop),
    ]
