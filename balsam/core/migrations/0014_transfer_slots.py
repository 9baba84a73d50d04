# Written by hand: the site API's transfer slots (balsam.processing.transfers.slots).
# core_jobtransferslot holds a job's filled `transfers` slots, one row per slot, written with the
# job by balsam.api and read by the transfer step when the job reaches READY (in) or
# POSTPROCESSED (out). Not a Django model (like core_jobpayload): only plain SQL reads and
# writes it, and the job table and its COPY path stay as they are. Deleted with its job (ON
# DELETE CASCADE), also when the CLI deletes jobs in plain SQL. A transfer item records the slot
# it fills (`slot`, "" for the classic URLs): its workdir side is then an exact path.

from django.db import migrations, models

_CREATE = """
CREATE TABLE core_jobtransferslot (
    job_id uuid NOT NULL REFERENCES core_balsamjob (job_id) ON DELETE CASCADE,
    slot text NOT NULL,
    direction text NOT NULL CHECK (direction IN ('in', 'out')),
    given text NOT NULL,
    url text NOT NULL,
    local_path text NOT NULL,
    recursive boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job_id, slot)
);
ALTER TABLE core_transferitem ALTER COLUMN slot SET DEFAULT '';
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0013_transfers"),
    ]

    operations = [
        migrations.AddField(
            model_name="transferitem",
            name="slot",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.RunSQL(_CREATE, "DROP TABLE core_jobtransferslot;"),
    ]
