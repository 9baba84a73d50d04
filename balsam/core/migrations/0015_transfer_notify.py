# Written by hand: a notification channel of its own for the transfer worker
# (balsam.processing.transfers.step.TransferWorker). Every job change notifies `balsam_jobs`
# (0001), and a worker listening there woke, and cost the server a transaction, at every
# commit of every launcher. `balsam_transfers` is notified only by statements that leave a job
# in READY or POSTPROCESSED, the states whose transfer items are made and sent (one
# notification per transaction: PostgreSQL folds equal ones). The new-rows transition tables
# are those the backlog triggers (0012) already capture, so this costs one scan of them.
# Retries, asynchronous tasks and senders that died are found by the worker's own timer.

from django.db import migrations

_SQL = """
CREATE FUNCTION balsam_notify_transfers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM new_rows WHERE state IN ('READY', 'POSTPROCESSED')) THEN
    PERFORM pg_notify('balsam_transfers', '');
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER balsam_transfers_inserted AFTER INSERT ON core_balsamjob
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION balsam_notify_transfers();
CREATE TRIGGER balsam_transfers_updated AFTER UPDATE ON core_balsamjob
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION balsam_notify_transfers();
"""
_REVERSE_SQL = """
DROP TRIGGER IF EXISTS balsam_transfers_inserted ON core_balsamjob;
DROP TRIGGER IF EXISTS balsam_transfers_updated ON core_balsamjob;
DROP FUNCTION IF EXISTS balsam_notify_transfers();
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0014_transfer_slots"),
    ]

    operations = [migrations.RunSQL(_SQL, _REVERSE_SQL)]
