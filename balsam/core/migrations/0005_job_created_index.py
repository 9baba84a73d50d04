# Written by hand: newest-first job listings (the web dashboard's jobs table) page through this
# index instead of sorting every job.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0004_state_entry_times"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="balsamjob",
            index=models.Index(fields=["created_at", "job_id"], name="job_created"),
        ),
    ]
