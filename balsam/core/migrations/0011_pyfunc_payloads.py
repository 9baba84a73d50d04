# Written by hand: the side table of Python-function tasks (balsam.site.pyfunc).
# One row per function job: its run() arguments (cloudpickle), written with the job, and the
# outcome of its last run (the return value or the exception, its traceback text, which process
# ran it). Not a Django model: only balsam.site.pyfunc reads and writes it, in plain SQL, and the
# job table (and its COPY path) stay as they are. Deleted with its job (ON DELETE CASCADE), also
# when the CLI deletes jobs in plain SQL.

from django.db import migrations

_CREATE = """
CREATE TABLE core_jobpayload (
    job_id uuid PRIMARY KEY REFERENCES core_balsamjob (job_id) ON DELETE CASCADE,
    args bytea NOT NULL,
    result bytea,
    failed boolean NOT NULL DEFAULT false,
    traceback text NOT NULL DEFAULT '',
    worker text NOT NULL DEFAULT '',
    finished_at timestamptz
);
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0010_tags_gpus"),
    ]

    operations = [
        migrations.RunSQL(_CREATE, "DROP TABLE core_jobpayload;"),
    ]
