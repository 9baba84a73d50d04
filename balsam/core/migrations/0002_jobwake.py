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


# Lookups of one job's children or parents must use the edge indexes whatever the graph's shape.
# With one parent of 20,000 children in the table, PostgreSQL's generic estimate for "the
# children of some parent" became 20,000 rows and it chose a sequential scan of all edges per
# finished job. Telling it that a parent or child id repeats about twice on average keeps
# index lookups (which cost what they return, even for a real 20,000-child fan-out).
_EDGE_STATS_SQL = """
ALTER TABLE core_jobdependency ALTER COLUMN parent_id SET (n_distinct = -0.5);
ALTER TABLE core_jobdependency ALTER COLUMN child_id SET (n_distinct = -0.5);
"""
_EDGE_STATS_REVERSE_SQL = """
ALTER TABLE core_jobdependency ALTER COLUMN parent_id RESET (n_distinct);
ALTER TABLE core_jobdependency ALTER COLUMN child_id RESET (n_distinct);
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
        migrations.RunSQL(_EDGE_STATS_SQL, _EDGE_STATS_REVERSE_SQL),
    ]
