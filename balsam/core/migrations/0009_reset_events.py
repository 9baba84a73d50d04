# Written by hand: a job's retry count starts after its newest event leaving a final state (a
# user's reset, balsam.core.retries.RESET_SQL). This partial index holds only those few events,
# so finding a job's last reset is one probe of a tiny index, usually finding nothing.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0008_retries_priority"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="jobevent",
            index=models.Index(fields=["job", "id"], name="event_reset",
                               condition=models.Q(("from_state__in",
                                                   ["JOB_FINISHED", "FAILED", "USER_KILLED"]))),
        ),
    ]
