# Written by hand (issue 16, session 21, s21-idlewake): a change of an application's scripts
# wakes the loops whose work depends on them.
#
# What a processing pass does with a job (STAGED_IN -> PREPROCESSED when its app has no
# preprocess script, RUN_DONE -> JOB_FINISHED when it has no postprocess script, a handler or
# not, an unknown application) and what a transition worker claims (a script to run) are read
# from the job's application row, joined by name. Until now only job rows notified, so an idle
# launcher found a job that an app change let move (a preprocess script removed while the job
# waited for a busy worker, an app registered or renamed) at its backed-off own look, up to
# `idle_poll_max_seconds` later (session 20). A statement that inserted or deleted app rows, or
# changed a row's name, preprocess or postprocess, now notifies `balsam_jobs` (payload `APP`:
# it leaves no job claimable by itself -- claimability depends on the job row alone --, so an
# idle launcher brings its processing pass forward without claiming:
# balsam.db.database._NOT_RUNNABLE) and `balsam_processing` (the transition workers claim).
# Other changes (a description, a site app's refresh of an unchanged class: registry.register
# rewrites every column) notify no one. App changes are rare: no cost while idle.

from django.db import migrations

_SQL = """
CREATE FUNCTION balsam_notify_apps() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  changed boolean;
BEGIN
  IF TG_OP = 'INSERT' THEN
    changed := EXISTS (SELECT 1 FROM new_rows);
  ELSIF TG_OP = 'DELETE' THEN
    changed := EXISTS (SELECT 1 FROM old_rows);
  ELSE
    changed := EXISTS (
      SELECT 1 FROM new_rows n JOIN old_rows o ON o.id = n.id
      WHERE n.name IS DISTINCT FROM o.name OR n.preprocess IS DISTINCT FROM o.preprocess
         OR n.postprocess IS DISTINCT FROM o.postprocess);
  END IF;
  IF changed THEN
    PERFORM pg_notify('balsam_jobs', 'APP');
    PERFORM pg_notify('balsam_processing', '');
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER balsam_apps_inserted AFTER INSERT ON core_applicationdefinition
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION balsam_notify_apps();
CREATE TRIGGER balsam_apps_updated AFTER UPDATE ON core_applicationdefinition
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION balsam_notify_apps();
CREATE TRIGGER balsam_apps_deleted AFTER DELETE ON core_applicationdefinition
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION balsam_notify_apps();
"""
_REVERSE_SQL = """
DROP TRIGGER IF EXISTS balsam_apps_inserted ON core_applicationdefinition;
DROP TRIGGER IF EXISTS balsam_apps_updated ON core_applicationdefinition;
DROP TRIGGER IF EXISTS balsam_apps_deleted ON core_applicationdefinition;
DROP FUNCTION IF EXISTS balsam_notify_apps();
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0024_jobs_notify_changed_rows"),
    ]

    operations = [migrations.RunSQL(_SQL, _REVERSE_SQL)]
