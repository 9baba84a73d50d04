# Written by hand: a notification channel of its own for the transition workers
# (balsam.processing.worker.TransitionWorker), as 0015 gave the transfer worker one. Every job
# change notifies `balsam_jobs` (0001), and each worker listening there woke, and ran an empty
# claim (~1.4 ms of server planning), at every commit of every launcher: RUNNING batches, run
# ends recorded as RUN_DONE -> JOB_FINISHED in one update. `balsam_processing` is notified only
# by statements that leave a job in a state a transition worker has a step for (one notification
# per transaction: PostgreSQL folds equal ones). `balsam_jobs` is unchanged: its other listeners
# (launchers' idle waits, `balsam wait`, the service, the dashboard, api futures, job_source)
# keep every wake-up. Jobs made claimable without a job-row change (an app's script added, a
# stage-in item done) are found by the worker's timer (idle_wait_seconds), as before.
#
# The state list is balsam.core.routing.WORKER_STATES when this migration was written (frozen
# history: a later routing change needs a new migration; tests/test_processing_notify.py
# compares the installed trigger with the routing table).

from django.db import migrations

_SQL = """
CREATE FUNCTION balsam_notify_processing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM new_rows
             WHERE state IN ('READY', 'STAGED_IN', 'RUN_DONE', 'RUN_TIMEOUT', 'RUN_ERROR')) THEN
    PERFORM pg_notify('balsam_processing', '');
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER balsam_processing_inserted AFTER INSERT ON core_balsamjob
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION balsam_notify_processing();
CREATE TRIGGER balsam_processing_updated AFTER UPDATE ON core_balsamjob
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION balsam_notify_processing();
"""
_REVERSE_SQL = """
DROP TRIGGER IF EXISTS balsam_processing_inserted ON core_balsamjob;
DROP TRIGGER IF EXISTS balsam_processing_updated ON core_balsamjob;
DROP FUNCTION IF EXISTS balsam_notify_processing();
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0016_job_index_diet"),
    ]

    operations = [migrations.RunSQL(_SQL, _REVERSE_SQL)]
