# Written by hand: a launcher session's idle slots (issue 16, session 19, s19-fairshare).
#
# Several serial-mode launchers on one campaign split its jobs by their first claims (each holds
# up to `serial_prefetch_per_slot` per slot); near the end a launcher whose own work ran out
# idled while another held work queued behind its running tasks. A master whose claims find
# nothing and whose slots idle now says so here (`balsam.core.idle_slots.publish`); a master
# holding queued work beyond its slots reads it (`idle_slots.wanted`) and gives that surplus
# back (balsam/launcher/serial_share.py). The database default lets inserts that do not name
# the column (tests, the analytics benchmark) keep working.
from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0022_claimworkflow_keys"),
    ]

    operations = [
        migrations.AddField(
            model_name="launchersession",
            name="idle_slots",
            field=models.IntegerField(default=0, db_default=0),
        ),
    ]
