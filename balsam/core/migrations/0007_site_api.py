# Written by hand: the columns the newer (0.6-style) API needs on the same tables.
# A job's ``parameters`` (the values its site app's command template was rendered from) and
# ``tags`` (filterable labels); an app's declared ``parameters`` (JSON text) and the hash of the
# source file its class was loaded from (empty for classic apps).

from django.db import migrations, models

# Plain-SQL writers (the CLI, COPY, the planner) name only the columns they know: the database
# itself supplies these defaults (Django drops the ones AddField sets).
_DEFAULTS_SQL = """
ALTER TABLE core_balsamjob ALTER COLUMN parameters SET DEFAULT '{}'::jsonb;
ALTER TABLE core_balsamjob ALTER COLUMN tags SET DEFAULT '{}'::jsonb;
ALTER TABLE core_applicationdefinition ALTER COLUMN parameters SET DEFAULT '';
ALTER TABLE core_applicationdefinition ALTER COLUMN source_hash SET DEFAULT '';
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0006_explicit_table_names"),
    ]

    operations = [
        migrations.AddField(
            model_name="balsamjob",
            name="parameters",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="balsamjob",
            name="tags",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="applicationdefinition",
            name="parameters",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.AddField(
            model_name="applicationdefinition",
            name="source_hash",
            field=models.TextField(blank=True, default=""),
        ),
        migrations.RunSQL(_DEFAULTS_SQL, migrations.RunSQL.noop),
    ]
