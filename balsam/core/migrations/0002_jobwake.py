# Written by hand: the waiting jobs whose parents changed (see models.JobWake).

import django.db.models.deletion
from django.db import migrations, models

# As in 0001: the database itself cascades, because the CLI and lifecycle delete in plain SQL.
_FK_SQL = """
DO $$
DECLARE c text;
BEGIN
  FOR c IN SELECT con.conname FROM pg_constraint con
           WHERE con.contype = 'f' AND con.conrelid = 'core_jobwake'::regclass
  LOOP
    EXECUTE 'ALTER TABLE core_jobwake DROP CONSTRAINT ' || quote_ident(c);
  END LOOP;
END $$;
ALTER TABLE core_jobwake ADD CONSTRAINT core_jobwake_job_id_fk FOREIGN KEY (job_id)
  REFERENCES core_balsamjob (job_id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED;
"""


def _replace_foreign_key(apps, schema_editor):
    schema_editor.deferred_sql.append(_FK_SQL)


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="JobWake",
            fields=[
                ("job", models.OneToOneField(on_delete=django.db.models.deletion.CASCADE,
                                             primary_key=True, related_name="+", serialize=False,
                                             to="core.balsamjob")),
            ],
        ),
        migrations.RunPython(_replace_foreign_key, migrations.RunPython.noop),
    ]
