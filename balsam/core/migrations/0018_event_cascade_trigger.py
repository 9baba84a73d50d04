# Written by hand: a job's events are deleted with it by a statement trigger instead of a foreign
# key (issue 16: what a task costs the database server).
#
# Every run writes three event rows (RUNNING, its end, JOB_FINISHED), and the foreign key
# `core_jobevent_job_id_fk` (0001, ON DELETE CASCADE, deferred) checked each of them at commit
# with a query of its own: `SELECT 1 FROM core_balsamjob WHERE job_id = $1 FOR KEY SHARE`, three
# index descents and a row lock per task, ~11-14% of the server's CPU per task (the serial
# master's statements, 8,192 jobs in moves of 1,024: 96-98 -> 84-85 us per task). That check
# guarded nothing the writers do not already guarantee: every event is inserted by the statement
# that changes its job's row (balsam.core.lifecycle.transition, balsam.core.launcher_moves.move:
# the row is locked FOR UPDATE and updated in the same statement) or for a job inserted in the
# same transaction (lifecycle.record_created, joined to the job row), so the job exists and no
# concurrent DELETE can remove it before the event is committed (the DELETE waits for the row
# lock, then its trigger sees the committed events). What the key also did -- delete a job's
# history with it -- is the triggers' job now: one `DELETE ... USING old_rows` per statement
# (the key ran one DELETE per job row), and TRUNCATE of the job table empties the event table
# (a DELETE: a TRUNCATE trigger may not truncate a table its own statement truncates too, as
# `TRUNCATE core_jobevent, core_balsamjob` does; the table is then empty already).
# tests/test_event_cascade.py proves both, and that a move racing a delete leaves no event.

from django.db import migrations, models

_SQL = """
ALTER TABLE core_jobevent DROP CONSTRAINT IF EXISTS core_jobevent_job_id_fk;
CREATE FUNCTION balsam_delete_job_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM core_jobevent e USING old_rows o WHERE e.job_id = o.job_id;
  RETURN NULL;
END $$;
CREATE FUNCTION balsam_truncate_job_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM core_jobevent;
  RETURN NULL;
END $$;
CREATE TRIGGER job_events_deleted AFTER DELETE ON core_balsamjob
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION balsam_delete_job_events();
CREATE TRIGGER job_events_truncated AFTER TRUNCATE ON core_balsamjob
  FOR EACH STATEMENT EXECUTE FUNCTION balsam_truncate_job_events();
"""
_REVERSE_SQL = """
DROP TRIGGER IF EXISTS job_events_deleted ON core_balsamjob;
DROP TRIGGER IF EXISTS job_events_truncated ON core_balsamjob;
DROP FUNCTION IF EXISTS balsam_delete_job_events();
DROP FUNCTION IF EXISTS balsam_truncate_job_events();
DELETE FROM core_jobevent e WHERE NOT EXISTS (SELECT 1 FROM core_balsamjob j WHERE j.job_id = e.job_id);
ALTER TABLE core_jobevent ADD CONSTRAINT core_jobevent_job_id_fk FOREIGN KEY (job_id)
  REFERENCES core_balsamjob (job_id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0017_processing_notify"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(_SQL, _REVERSE_SQL)],
            state_operations=[
                migrations.AlterField(
                    model_name="jobevent", name="job",
                    field=models.ForeignKey(db_constraint=False, db_index=False,
                                            on_delete=models.deletion.CASCADE, related_name="+",
                                            to="core.balsamjob"),
                ),
            ],
        ),
    ]
