# Written by hand: transfer items and batches (balsam.core.transfer_models,
# balsam.processing.transfers).

import django.db.models.deletion
from django.db import migrations, models

# As in 0001/0002: the database itself cascades (the CLI and lifecycle delete jobs in plain SQL);
# an item's batch is only a record, so deleting batches leaves the items.
_FK_SQL = """
DO $$
DECLARE c text;
BEGIN
  FOR c IN SELECT con.conname FROM pg_constraint con
           WHERE con.contype = 'f' AND con.conrelid = 'core_transferitem'::regclass
  LOOP
    EXECUTE 'ALTER TABLE core_transferitem DROP CONSTRAINT ' || quote_ident(c);
  END LOOP;
END $$;
ALTER TABLE core_transferitem ADD CONSTRAINT core_transferitem_job_id_fk FOREIGN KEY (job_id)
  REFERENCES core_balsamjob (job_id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE core_transferitem ADD CONSTRAINT core_transferitem_batch_id_fk FOREIGN KEY (batch_id)
  REFERENCES core_transferbatch (id) ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED;
"""

# Plain-SQL writers name only the columns they set: the database supplies the rest.
_DEFAULTS_SQL = """
ALTER TABLE core_transferitem ALTER COLUMN endpoint SET DEFAULT '';
ALTER TABLE core_transferitem ALTER COLUMN state SET DEFAULT 'pending';
ALTER TABLE core_transferitem ALTER COLUMN attempts SET DEFAULT 0;
ALTER TABLE core_transferitem ALTER COLUMN error SET DEFAULT '';
ALTER TABLE core_transferitem ALTER COLUMN files SET DEFAULT 0;
ALTER TABLE core_transferitem ALTER COLUMN created_at SET DEFAULT now();
ALTER TABLE core_transferbatch ALTER COLUMN endpoint SET DEFAULT '';
ALTER TABLE core_transferbatch ALTER COLUMN state SET DEFAULT 'active';
ALTER TABLE core_transferbatch ALTER COLUMN task_id SET DEFAULT '';
ALTER TABLE core_transferbatch ALTER COLUMN owner SET DEFAULT '';
ALTER TABLE core_transferbatch ALTER COLUMN started_at SET DEFAULT now();
ALTER TABLE core_transferbatch ALTER COLUMN item_count SET DEFAULT 0;
ALTER TABLE core_transferbatch ALTER COLUMN bytes SET DEFAULT 0;
ALTER TABLE core_transferbatch ALTER COLUMN message SET DEFAULT '';
"""


def _replace_foreign_keys(apps, schema_editor):
    schema_editor.deferred_sql.append(_FK_SQL)


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0012_backlog_shapes"),
    ]

    operations = [
        migrations.CreateModel(
            name="TransferBatch",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                        verbose_name="ID")),
                ("protocol", models.TextField()),
                ("endpoint", models.TextField(blank=True, default="")),
                ("direction", models.TextField()),
                ("state", models.TextField(default="active")),
                ("task_id", models.TextField(blank=True, default="")),
                ("owner", models.TextField(blank=True, default="")),
                ("lease_until", models.DateTimeField(blank=True, null=True)),
                ("started_at", models.DateTimeField()),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                ("item_count", models.IntegerField(default=0)),
                ("bytes", models.BigIntegerField(default=0)),
                ("message", models.TextField(blank=True, default="")),
            ],
            options={"db_table": "core_transferbatch"},
        ),
        migrations.CreateModel(
            name="TransferItem",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                        verbose_name="ID")),
                ("direction", models.TextField()),
                ("source", models.TextField()),
                ("destination", models.TextField()),
                ("protocol", models.TextField()),
                ("endpoint", models.TextField(blank=True, default="")),
                ("size", models.BigIntegerField(blank=True, null=True)),
                ("state", models.TextField(default="pending")),
                ("attempts", models.IntegerField(default=0)),
                ("error", models.TextField(blank=True, default="")),
                ("not_before", models.DateTimeField(blank=True, null=True)),
                ("files", models.IntegerField(default=0)),
                ("created_at", models.DateTimeField()),
                ("finished_at", models.DateTimeField(blank=True, null=True)),
                ("batch", models.ForeignKey(blank=True, db_index=False, null=True,
                                            on_delete=django.db.models.deletion.SET_NULL,
                                            related_name="+", to="core.transferbatch")),
                ("job", models.ForeignKey(db_index=False,
                                          on_delete=django.db.models.deletion.CASCADE,
                                          related_name="+", to="core.balsamjob")),
            ],
            options={"db_table": "core_transferitem"},
        ),
        migrations.AddIndex(
            model_name="transferbatch",
            index=models.Index(condition=models.Q(("state", "active")), fields=["started_at"],
                               name="tbatch_active"),
        ),
        migrations.AddIndex(
            model_name="transferitem",
            index=models.Index(fields=["job", "direction"], name="titem_job"),
        ),
        migrations.AddIndex(
            model_name="transferitem",
            index=models.Index(condition=models.Q(("state", "pending")),
                               fields=["protocol", "endpoint", "direction", "id"],
                               name="titem_pending"),
        ),
        migrations.AddIndex(
            model_name="transferitem",
            index=models.Index(condition=models.Q(("state", "active")), fields=["batch"],
                               name="titem_batch"),
        ),
        migrations.RunPython(_replace_foreign_keys, migrations.RunPython.noop),
        migrations.RunSQL(_DEFAULTS_SQL, migrations.RunSQL.noop),
    ]
