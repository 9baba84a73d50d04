# Written by hand (checked by `makemigrations --check`): what the service records about a batch
# job. Scheduler ids are text (PBS: "1234.pbs01"); the rest tracks submission and the end.

from django.db import migrations, models

# Plain-SQL writers (CLI, planner, tests) may leave these out: give the columns database defaults.
_DEFAULTS_SQL = """
ALTER TABLE core_queuedlaunch ALTER COLUMN scheduler_id SET DEFAULT '';
ALTER TABLE core_queuedlaunch ALTER COLUMN raw_state SET DEFAULT '';
ALTER TABLE core_queuedlaunch ALTER COLUMN message SET DEFAULT '';
ALTER TABLE core_queuedlaunch ALTER COLUMN attempts SET DEFAULT 0;
ALTER TABLE core_queuedlaunch ALTER COLUMN created_at SET DEFAULT now();
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0002_jobwake"),
    ]

    operations = [
        migrations.AlterField(
            model_name="queuedlaunch",
            name="scheduler_id",
            field=models.TextField(blank=True, db_index=True, default=""),
        ),
        migrations.AddField(
            model_name="queuedlaunch",
            name="raw_state",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.AddField(
            model_name="queuedlaunch",
            name="message",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.AddField(
            model_name="queuedlaunch",
            name="attempts",
            field=models.IntegerField(default=0),
        ),
        migrations.AddField(
            model_name="queuedlaunch",
            name="minutes_left",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="queuedlaunch",
            name="created_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="queuedlaunch",
            name="submitted_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="queuedlaunch",
            name="ended_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunSQL(_DEFAULTS_SQL, migrations.RunSQL.noop),
    ]
