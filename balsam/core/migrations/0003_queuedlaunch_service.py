# Written by hand (checked by `makemigrations --check`): what the service records about a batch
# job. Scheduler ids are text (PBS: "1234.pbs01"); the rest tracks submission and the end.

from django.db import migrations, models


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
    ]
