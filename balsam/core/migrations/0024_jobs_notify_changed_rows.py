# Written by hand (issue 16, session 20, s20-idlecost): `balsam_jobs` is notified only by a
# statement that inserted or changed at least one job row.
#
# The statement-level triggers of 0001 notified every UPDATE of core_balsamjob, also one that
# matched no row: an idle transition worker's empty claim (a CTE whose UPDATE found nothing), an
# idle launcher's empty claim. Each such notification woke every idle launcher, which claimed
# at once -- itself an empty UPDATE, which woke the others: two idle serial launchers on one DB
# claimed ~1,900 times a second between them (benchmarks/bench_idle.py). A statement that
# changed nothing has nothing to tell its listeners (launchers' idle waits, `balsam wait`, the
# service, the dashboard, api futures). The transition table costs nothing new: the processing
# (0017) and transfer (0015) triggers of the same statements already capture it.
#
# The payload also says whether the statement left a job claimable by any launcher (a claimable
# state, held by no session): `INSERT runnable` / `UPDATE runnable`, else `INSERT` / `UPDATE`.
# An idle launcher claims at once only for those (balsam.db.database.Database.runnable); every
# other change (a busy neighbour's RUNNING batches and ends, its claims) still wakes its
# processing pass and kill check, at their own pace. The state list is
# balsam.core.routing.CLAIMABLE_STATES (tests/test_idle_cost.py compares them).

from django.db import migrations

_SQL = """
CREATE OR REPLACE FUNCTION balsam_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM new_rows) THEN
    PERFORM pg_notify('balsam_jobs', TG_OP || CASE WHEN EXISTS (
      SELECT 1 FROM new_rows WHERE session_id IS NULL AND state IN ('PREPROCESSED', 'RESTART_READY')
    ) THEN ' runnable' ELSE '' END);
  END IF;
  RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS balsam_jobs_inserted ON core_balsamjob;
DROP TRIGGER IF EXISTS balsam_jobs_updated ON core_balsamjob;
CREATE TRIGGER balsam_jobs_inserted AFTER INSERT ON core_balsamjob
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION balsam_notify_jobs();
CREATE TRIGGER balsam_jobs_updated AFTER UPDATE ON core_balsamjob
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION balsam_notify_jobs();
"""
_REVERSE_SQL = """
DROP TRIGGER IF EXISTS balsam_jobs_inserted ON core_balsamjob;
DROP TRIGGER IF EXISTS balsam_jobs_updated ON core_balsamjob;
CREATE OR REPLACE FUNCTION balsam_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('balsam_jobs', TG_OP);
  RETURN NULL;
END $$;
CREATE TRIGGER balsam_jobs_inserted AFTER INSERT ON core_balsamjob
  FOR EACH STATEMENT EXECUTE FUNCTION balsam_notify_jobs();
CREATE TRIGGER balsam_jobs_updated AFTER UPDATE ON core_balsamjob
  FOR EACH STATEMENT EXECUTE FUNCTION balsam_notify_jobs();
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0023_session_idle_slots"),
    ]

    operations = [migrations.RunSQL(_SQL, _REVERSE_SQL)]
